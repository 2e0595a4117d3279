"""CPU threads: what the default thread count (`training.distributed.choose_cpu_threads`)
picks, and what that choice trains at, in three conditions, for the rule before issue 18
(free cores = cores - the 1-minute load average) and the rule now (free cores = cores -
the cores busy in a 0.15 s sample of /proc/stat):

    python -m benchmarks.cpu_threads                # bert_tiny (length 128) and the small TRM

- "as is": the machine as it is;
- "loaded": one extra process spinning on a core for the whole measurement, as another
  job on a shared machine would;
- "build then train": dataset builds for `--build-seconds` (the MLM builder on the
  workspace's wikitext-2 text, a fresh vocabulary each time) and training right after, as `scripts/demo.sh` and the
  README's pipeline do; the load average still counts the finished build.

Each rate is the median of interleaved worker runs of `benchmarks.bert_train` and
`benchmarks.trm_train` (this project's contender only) at 1 and at 2 threads; a rule's
rate is the rate at the thread count it chose at the start of the condition.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from benchmarks import bert_train, common
from core.cli import argument_parser
from core.errors import run_cli
from training.distributed import busy_cores_now, threads_for

COUNTS = ("1", "2")
CONDITIONS = ("as is", "build then train", "loaded (+1 busy process)")


@contextlib.contextmanager
def busy_process(enabled: bool) -> Iterator[None]:
    """One process spinning on a core while the block runs (when `enabled`)."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let it start spinning before anything is sampled
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def build_datasets(seconds: float) -> tuple[int, float]:
    """Build an MLM dataset from scratch (tokenizer training included) in a throwaway folder, again
    and again until `seconds` have passed, as a longer build would; (builds, seconds taken)."""
    start, builds = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as folder:
        while builds == 0 or time.perf_counter() - start < seconds:
            subprocess.run([sys.executable, "dataset/build_text_mlm_dataset.py", "--input-files",
                            str(common.corpus_path("wikitext2-valid.txt")), "--output-dir", f"{folder}/mlm",
                            "--vocab-size", "8000", "--max-seq-length", "128", "--overwrite"],
                           cwd=common.REPO, check=True, capture_output=True)
            builds += 1
    return builds, time.perf_counter() - start


def rule_choices() -> dict[str, float | int]:
    """The 1-minute load average, the busy cores now, and the threads each rule picks from them."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    load = os.getloadavg()[0]
    busy, _ = busy_cores_now(cpus)
    return {"load": load, "busy": busy, "old": threads_for(len(cpus), load, 1), "new": threads_for(len(cpus), busy, 1)}


def measure(rounds: int, data) -> dict[str, float]:
    """Median rates per model and thread count, in the current condition."""
    bert = {f"bert {n}": ["--worker", "ours", "--data", str(data), "--steps", "8", "--warmup", "1", "--threads", n]
            for n in COUNTS}
    trm = {f"trm {n}": ["--worker", "ours", "--size", "small", "--steps", "3", "--warmup", "1", "--threads", n]
           for n in COUNTS}
    rates = {}
    for name, runs in common.interleaved(bert, "benchmarks.bert_train", rounds).items():
        rates[name] = common.median_of(runs, "tokens_per_s")
    for name, runs in common.interleaved(trm, "benchmarks.trm_train", rounds).items():
        rates[name] = common.median_of(runs, "examples_per_s")
    return rates


def condition_rows(condition: str, choice: dict, rates: dict[str, float]) -> list[list[str]]:
    """One table row per model: the rates at 1 and 2 threads and at each rule's choice."""
    rows = []
    for model, unit in (("bert", "tokens/s"), ("trm", "examples/s")):
        old, new = rates[f"{model} {choice['old']}"], rates[f"{model} {choice['new']}"]
        rows.append([condition, f"{choice['load']:.2f}", f"{choice['busy']:.2f}", f"{model} {unit}",
                     f"{rates[f'{model} 1']:,.0f}", f"{rates[f'{model} 2']:,.0f}",
                     f"{choice['old']}: {old:,.0f}", f"{choice['new']}: {new:,.0f}", f"{new / old:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> None:
    """Measure the three conditions and record the table."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--build-seconds", type=float, default=30.0,
                        help="how long the build before 'build then train' lasts (builds are repeated)")
    common.add_no_record_option(parser)
    args = parser.parse_args(argv)
    data = bert_train.prepare_dataset(128)
    rows, notes = [], []
    for condition in CONDITIONS:
        if condition == "build then train":
            builds, seconds = build_datasets(args.build_seconds)
            notes.append(f"build then train: {builds} builds in {seconds:.0f} s, the rules chose right after them")
        with busy_process(condition.startswith("loaded")):
            choice = rule_choices()
            rates = measure(args.rounds, data)
        rows += condition_rows(condition, choice, rates)
    table = common.format_table(["condition", "1-min load at start", "busy cores at start (0.15 s)", "model",
                                 "1 thread", "2 threads", "old rule (load average): threads: rate",
                                 "new rule (busy now): threads: rate", "new / old"], rows)
    notes.append("bert: bert_tiny, length 128, batch 16, 8 timed steps; trm: the `small` size of "
                 "benchmarks.trm_train, 3 timed steps; each rule's rate is the measured rate at the count it chose")
    common.print_or_record(args, "cpu_threads: the default thread count, old rule vs new, idle, loaded, build then train",
                           table, notes)


if __name__ == "__main__":
    run_cli(main)
