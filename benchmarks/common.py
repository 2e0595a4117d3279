"""What every benchmark shares: the machine description, worker subprocesses that report
their own peak memory, interleaved rounds with medians, and the results file.

Each contender runs in a fresh subprocess (`python -m benchmarks.<name> --worker ...`)
that prints one JSON line; the parent alternates the contenders round by round (A B, B A,
A B, ...) so that a slow patch of the machine hurts both, and reports medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO / "benchmarks" / "RESULTS.md"
SHARED_CORPORA = REPO.parent / "shared" / "corpora"
"""Corpora of the workspace (`../shared/corpora`); benchmarks use them when present."""
CACHE_DIR = REPO / "benchmarks" / ".cache"
"""Datasets the benchmarks build once and reuse (ignored by git)."""
WORKER_RESULT_PREFIX = "BENCHMARK_RESULT "


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's guess elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_description() -> dict[str, str]:
    """CPU model, usable cores, torch version, GPU name (if any) and the load average."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "torch": torch.__version__,
        "gpu": gpu,
        "load average (1/5/15 min)": " / ".join(f"{value:.2f}" for value in load),
    }


def corpus_path(name: str) -> Path:
    """A corpus of ../shared/corpora; a clear error when the workspace does not have it."""
    path = SHARED_CORPORA / name
    if not path.is_file():
        from core.errors import UserError

        raise UserError(f"corpus {path} not found; the benchmarks need the workspace's ../shared/corpora")
    return path


def run_worker(module: str, args: list[str], timeout: float = 900) -> dict:
    """Run `python -m <module> --worker ...` in a fresh process; its JSON result.

    The worker's own `ru_maxrss` is its peak resident memory: a fresh process per
    contender keeps one contender's allocations out of the other's figure.
    """
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    for line in done.stdout.splitlines():
        if line.startswith(WORKER_RESULT_PREFIX):
            return json.loads(line[len(WORKER_RESULT_PREFIX) :])
    raise RuntimeError(f"worker {' '.join(command)} printed no result:\n{done.stdout[-2000:]}")


def options_or_worker(parse_args, argv: list[str] | None, workers: dict):
    """The benchmark's parsed options, or None in a worker process (`--worker NAME`), after
    it ran `workers[NAME]` and reported the result."""
    args = parse_args(argv)
    return None if run_worker_if_asked(args, workers) else args


def add_device_options(parser) -> None:
    """`--device` (cpu, cuda) and `--compile` (pretrain.py's setting) of the timed runs."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                        help="pretrain.py's `compile` setting for this project (auto: on CUDA only)")


def add_worker_options(parser, workers: tuple[str, ...]) -> None:
    """`--threads` (torch CPU threads of each worker) and the hidden `--worker NAME` that
    `run_worker` passes to the worker processes."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads in each worker (default: torch's choice, all cores)")
    parser.add_argument("--worker", choices=workers, default=None, help=argparse.SUPPRESS)


def run_worker_if_asked(args, workers: dict) -> bool:
    """In a worker process (`--worker NAME`): set its torch threads (`--threads`), run
    `workers[NAME](args)` and report the result; returns whether it did."""
    if args.worker is None:
        return False
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)
    report_worker_result(workers[args.worker](args))
    return True


def report_worker_result(result: dict) -> None:
    """Print a worker's result for `run_worker`, adding the process's peak RSS in MB."""
    import resource

    result = dict(result)
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    print(WORKER_RESULT_PREFIX + json.dumps(result), flush=True)


def interleaved(contenders: dict[str, list[str]], module: str, rounds: int) -> dict[str, list[dict]]:
    """Run every contender once per round, alternating the order; results per contender."""
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(run_worker(module, contenders[name]))
            print(f"  round {round_index + 1}/{rounds} {name}: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in results[name][-1].items() if isinstance(v, (int, float))),
                  flush=True)
    return results


def compare(args, module: str, contenders: dict[str, list[str]], summarise, title: str, keys: tuple[str, ...]) -> None:
    """Run `contenders` in interleaved rounds, `summarise(args, results)` them into a table and
    notes, and `record` it with the medians of `keys` per contender."""
    results = interleaved(contenders, module, args.rounds)
    table, notes = summarise(args, results)
    medians = {name: {key: median_of(runs, key) for key in keys} for name, runs in results.items()}
    record(args, title, table, notes, medians)


def median_of(results: list[dict], key: str) -> float:
    """Median of one figure over the rounds (nan when a worker did not report it)."""
    values = [result[key] for result in results if result.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def per_round(results: dict[str, list[dict]], key: str, show) -> str:
    """One figure of every round, per contender: `name: a, b, c; other: d, e, f` (`show` formats a value)."""
    return "; ".join(f"{name}: " + ", ".join(show(r[key]) for r in runs) for name, runs in results.items())


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def add_no_record_option(parser) -> None:
    """`--no-record`: print the table instead of appending it to benchmarks/RESULTS.md."""
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")


def add_output_options(parser) -> None:
    """`--no-record`, `--results-file` and `--json`: where a benchmark's results go."""
    add_no_record_option(parser)
    parser.add_argument("--results-file", type=Path, default=None,
                        help="append the results section to this file instead of benchmarks/RESULTS.md")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the medians to this JSON file (benchmarks/gpu_check.sh reads it)")


def record(args, title: str, table: str, notes: list[str], medians: dict | None = None) -> None:
    """Print the table, append its section (unless `--no-record`) and write `--json`."""
    if args.json is not None:  # {title: {contender: {figure: median}}}, one title per table of the run
        tables = json.loads(args.json.read_text()) if args.json.is_file() else {}
        tables[title] = medians or {}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(tables, indent=1) + "\n")
    print_or_record(args, title, table, notes, print_notes=True, results_file=args.results_file)


def print_or_record(args, title: str, table: str, notes: list[str], print_notes: bool = False,
                    results_file: Path | None = None) -> None:
    """With `--no-record`, print the table (and the notes when `print_notes`); otherwise
    append a dated section with the command line, the machine, the table and the notes."""
    if args.no_record:
        print("\n".join([table, *notes]) if print_notes else table)
        return
    append_results(title, command_line(), table, notes, results_file)


def append_results(title: str, command: str, table: str, notes: list[str], results_file: Path | None = None) -> None:
    """Print the table and append a dated section to benchmarks/RESULTS.md (or `results_file`)."""
    results_file = results_file or RESULTS_FILE
    machine = machine_description()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### {title} ({stamp})", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += ["", table, ""]
    lines += [f"- {note}" for note in notes]
    section = "\n".join(lines).rstrip() + "\n\n"
    print("\n" + section)
    if results_file == RESULTS_FILE and not RESULTS_FILE.exists():
        RESULTS_FILE.write_text("# Benchmark results\n\nAppended by `python -m benchmarks.<name>`.\n\n")
    with open(results_file, "a", encoding="utf-8") as handle:
        handle.write(section)


def command_line() -> str:
    """How this benchmark was invoked, for the record."""
    return "python -m " + " ".join([_module_name()] + sys.argv[1:])


def _module_name() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


class Timer:
    """Wall-clock seconds of a block, synchronising CUDA at both ends when asked."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._start


def setup_step(config, device):
    """(run context, `step()`, the last host batch, close) for a run that
    `training.build.setup` builds from `config` (writing nothing), fed the way `fit` feeds it."""
    from training.build import setup
    from training.distributed import DistContext
    from training.prefetch import device_batches
    from training.schedule import LRSchedule

    state, ctx, _ = setup(config, DistContext(0, 1, 0, device))
    state.total_steps = 10**6
    ctx.schedule = LRSchedule.of(config.schedule_settings, state.total_steps)
    step_on = _stepper(state, ctx)
    batches, host = device_batches(state.stream, device), {}

    def step() -> None:
        item = next(batches)
        state.stream_state, host["batch"] = item.stream_state, item.host
        step_on(item.device)

    return ctx, step, lambda: host["batch"], batches.close


def engine_step(arch_name: str, arch, metadata, config, stream, device):
    """(state, `step(batch)`) running the engine's `train_step` on a fresh model, as `fit` would.

    Uses `training.build`'s pieces (model, train state with the plugin's optimisers, wrapped
    forward) without a run folder, data kind or checkpoint.
    """
    from core.batching import BatchLayout
    from dataset.kinds import get_data_kind
    from models.registry import get_arch
    from training.build import build_model, new_train_state, wrap_forward
    from training.distributed import DistContext
    from training.schedule import LRSchedule
    from training.state import RunContext

    plugin, dist = get_arch(arch_name), DistContext(0, 1, 0, device)
    arch, model = build_model(config, plugin, arch, metadata, dist)
    state = new_train_state(config, plugin, model, stream, total_steps=10**6, steps_per_epoch=1.0)
    wrap_forward(state, config, dist)
    data_kind = get_data_kind(plugin.data_kind)
    ctx = RunContext(config=config, arch_config=arch, plugin=plugin, data_kind=data_kind,
                     data_options=data_kind.options_class(), dist=dist,
                     layout=BatchLayout.of(config.global_batch_size, micro_batch_size=config.micro_batch_size),
                     schedule=LRSchedule.of(config.schedule_settings, state.total_steps),
                     run_dir=REPO / "benchmarks" / ".cache", project_name="bench", run_name="bench",
                     metadata=metadata, eval_paths=[])
    return state, _stepper(state, ctx)


def _stepper(state, ctx):
    """`step(device_batch)`: one `train_step` of `state` with a fresh stop request and metrics."""
    from training.loop import train_step
    from training.metrics import MetricAccumulator
    from training.signals import StopRequest

    stop, accumulator = StopRequest(), MetricAccumulator()
    return lambda batch: train_step(state, ctx, batch, stop, accumulator)
