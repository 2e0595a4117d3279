"""CPU threads: the training step's speed at 1 and 2 torch threads and at the default
choice (`training.distributed.choose_cpu_threads`), on the machine as it is and with one
more busy process beside it.

    python -m benchmarks.cpu_threads                # bert_tiny (length 128) and the small TRM

Each figure is the median of interleaved worker runs of `benchmarks.bert_train` and
`benchmarks.trm_train` (this project's contender only). "loaded" starts one extra process
that spins on a core for the whole measurement, as another job on a shared machine would.
The 1-minute load average at the start of each condition is recorded beside it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from benchmarks import bert_train, common
from core.cli import argument_parser
from core.errors import run_cli

CHOICES = ("1", "2", "default")


@contextlib.contextmanager
def busy_process(enabled: bool) -> Iterator[None]:
    """One process spinning on a core while the block runs (when `enabled`)."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def worker_threads(choice: str) -> list[str]:
    """`--threads N` for a fixed count; for the default, what `choose_cpu_threads` picks now."""
    if choice != "default":
        return ["--threads", choice]
    from training.distributed import choose_cpu_threads

    environment = dict(os.environ)
    os.environ.pop("OMP_NUM_THREADS", None)
    try:
        threads, _ = choose_cpu_threads(None)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    return ["--threads", str(threads)]


def measure(rounds: int, data) -> dict[str, dict[str, float]]:
    """Median rates per model and thread choice, in the current condition."""
    bert = {f"bert {choice}": ["--worker", "ours", "--data", str(data), "--steps", "8", "--warmup", "1",
                               *worker_threads(choice)] for choice in CHOICES}
    trm = {f"trm {choice}": ["--worker", "ours", "--size", "small", "--steps", "3", "--warmup", "1",
                             *worker_threads(choice)] for choice in CHOICES}
    rates = {}
    for name, runs in common.interleaved(bert, "benchmarks.bert_train", rounds).items():
        rates[name] = {"rate": common.median_of(runs, "tokens_per_s"), "threads": bert[name][-1]}
    for name, runs in common.interleaved(trm, "benchmarks.trm_train", rounds).items():
        rates[name] = {"rate": common.median_of(runs, "examples_per_s"), "threads": trm[name][-1]}
    return rates


def main(argv: list[str] | None = None) -> None:
    """Measure both conditions and record the table."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    common.add_no_record_option(parser)
    args = parser.parse_args(argv)
    data = bert_train.prepare_dataset(128)
    rows, notes = [], []
    for condition, loaded in (("as is", False), ("loaded (+1 busy process)", True)):
        with busy_process(loaded):
            load = os.getloadavg()[0]
            rates = measure(args.rounds, data)
        notes.append(f"{condition}: 1-minute load average {load:.2f} at the start")
        for model, unit in (("bert", "tokens/s"), ("trm", "examples/s")):
            one = rates[f"{model} 1"]["rate"]
            cells = [f"{rates[f'{model} {c}']['rate']:,.0f} ({rates[f'{model} {c}']['rate'] / one:.2f}x)"
                     for c in CHOICES]
            rows.append([condition, f"{model} {unit}", *cells, rates[f"{model} default"]["threads"]])
    table = common.format_table(["condition", "model", "1 thread", "2 threads", "default choice",
                                 "threads the default chose"], rows)
    notes.append("bert: bert_tiny, length 128, batch 16, 8 timed steps; trm: the `small` size of "
                 "benchmarks.trm_train, 3 timed steps; ratios are to 1 thread in the same condition")
    common.print_or_record(args, "cpu_threads: the default thread count, idle and loaded", table, notes)


if __name__ == "__main__":
    run_cli(main)
