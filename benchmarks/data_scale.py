"""The read side at scale (issue 19): what rank 0 pays per row of its own at 1 to 256
processes, and what the epoch order costs at 10^8 and 10^9 rows, before and after.

    python -m benchmarks.data_scale                  # before = /work/main's code, 3 rounds
    python -m benchmarks.data_scale --before PATH    # another checkout as "before"

Rank 0 of a world of W processes is simulated in one process: `MLMTrainStream(global
batch 256 W, rank 0, world W)` at length 128 with dynamic masking and trimming to a
multiple of 8, timed over `--batches` batches after two warm-up batches (1 thread). The
dataset is 2^20 rows (16 shards of 65,536, 256 MB), the rows of wikitext-2 validation
packed by the builder (bert-base-uncased vocabulary) repeated: "packed" keeps them (every
row full, as the builder packs), "short" cuts each to 16-120 tokens (no row full: the
trimmed width is then below the full length), with the builder's `.lengths.npy` next to
each shard. A worker reports its median batch. Since the widths are agreed by the
training loop (`training.prefetch.widened_to_every_rank`: one all-reduce of one number
per step, and on the ranks whose rows are shorter than the widest a copy of their batch
into the wider one on the device), neither is in these figures; "before" decided the
width inside the stream, from the lengths of the whole global batch. "before" runs the checkout given by `--before` in a
fresh process (PYTHONPATH pointing at it), "after" this one, interleaved round by round.

The order: a fresh process builds `EpochOrder(seed, n)` and asks for 256 rows at a time:
the first call (the epoch start), the median and slowest of 200 calls, and one call that
crosses into the next epoch (after one warm-up order of 2^17 rows, so that numpy's
first-use costs are not counted); peak memory is the largest traced allocation (tracemalloc,
numpy's arrays included) and the growth of the resident set. A "before" that materialises
its permutations (a checkout older than the Feistel order) is not run at 10^9: its two
permutations (an epoch's and the next's, 8 GB each) do not fit this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from core.errors import UserError, run_cli

NUM_ROWS = 1 << 20
SHARD_ROWS = 1 << 16
LOCAL_BATCH = 256
WORLD_SIZES = (1, 8, 64, 256)
ORDER_SIZES = (10**8, 10**9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its workers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, default=Path("/work/main"), help="checkout whose code is 'before'")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per worker")
    common.add_output_options(parser)
    common.add_worker_options(parser, ("rank0", "order"))
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds <= 0 or args.batches <= 0:
        raise UserError("--rounds and --batches must be positive")
    if args.worker is None and not (args.before / "dataset" / "text" / "loader.py").is_file():
        raise UserError(f"--before {args.before} is not a checkout of this project (no dataset/text/loader.py)")
    return args


# ------------------------------------------------------------------------------ data


def prepare_scaled(kind: str) -> Path:
    """The 2^20-row dataset ("packed" or "short"), written once into benchmarks/.cache."""
    import numpy as np

    from benchmarks.bert_train import prepare_dataset

    base = prepare_dataset(128)
    folder = common.CACHE_DIR / f"data-scale-{kind}-{NUM_ROWS}"
    if (folder / "dataset.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("train"))
    rows = np.load(base / "train" / "shard_00000.npy")  # (n, 128) real rows
    metadata = json.loads((base / "dataset.json").read_text())
    rng = np.random.default_rng(0)
    (folder / "train").mkdir()
    for shard in range(NUM_ROWS // SHARD_ROWS):
        ids = rows[rng.integers(0, len(rows), SHARD_ROWS)].copy()  # (S, 128)
        if kind == "short":
            lengths = rng.integers(16, 121, SHARD_ROWS)  # (S,)
            columns = np.arange(ids.shape[1])[None, :]
            ids[columns == lengths[:, None] - 1] = metadata["sep_id"]
            ids[columns >= lengths[:, None]] = metadata["pad_id"]
        np.save(folder / "train" / f"shard_{shard:05d}.npy", ids)
        np.save(folder / "train" / f"shard_{shard:05d}.lengths.npy",
                (ids != metadata["pad_id"]).sum(axis=1).astype(np.uint16))
    metadata["num_sequences"]["train"] = NUM_ROWS
    metadata["shards"]["train"] = [f"shard_{shard:05d}.npy" for shard in range(NUM_ROWS // SHARD_ROWS)]
    if metadata.get("shard_rows"):  # builds since issue 19 store the rows of each shard
        metadata["shard_rows"]["train"] = [SHARD_ROWS] * (NUM_ROWS // SHARD_ROWS)
    (folder / "dataset.json").write_text(json.dumps(metadata, indent=2))
    return folder


# --------------------------------------------------------------------------- workers


def rank0_worker(args: argparse.Namespace) -> dict:
    """Rank 0 of `--world` processes: microseconds per row of its own, and the slowest batch."""
    from dataset.text.loader import MLMTrainStream
    from dataset.text.masking import MaskingConfig

    stream = MLMTrainStream([args.data], 0, LOCAL_BATCH * args.world, 0, args.world, MaskingConfig(),
                            trim_to_multiple=8)
    for _ in range(2):
        stream.next_batch()
    seconds = []
    for _ in range(args.batches):
        start = time.perf_counter()
        stream.next_batch()
        seconds.append(time.perf_counter() - start)
    # The median batch: the machine is shared, and a stall of another job is not the stream's.
    return {"us_per_row": sorted(seconds)[len(seconds) // 2] / LOCAL_BATCH * 1e6, "max_ms": max(seconds) * 1e3}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def order_worker(args: argparse.Namespace) -> dict:
    """The epoch order of `--rows` rows, 256 positions at a time."""
    import tracemalloc

    import numpy as np

    from dataset.stream import EpochOrder

    EpochOrder(1, 1 << 17).rows(0, LOCAL_BATCH)  # numpy's first-use costs, outside the figures
    rss_before = _rss_mb()
    tracemalloc.start()
    order = EpochOrder(0, args.rows)
    start = time.perf_counter()
    order.rows(0, LOCAL_BATCH)
    epoch_start = time.perf_counter() - start
    seconds = []
    for index in range(1, 201):
        start = time.perf_counter()
        order.rows(index * 7919 * LOCAL_BATCH % (args.rows - LOCAL_BATCH), LOCAL_BATCH)
        seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    order.rows(args.rows - LOCAL_BATCH // 2, LOCAL_BATCH)  # half in this epoch, half in the next
    boundary = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"epoch_start_ms": epoch_start * 1e3, "median_ms": float(np.median(seconds)) * 1e3,
            "max_ms": max(seconds) * 1e3, "boundary_ms": boundary * 1e3, "peak_traced_mb": peak / 2**20,
            "rss_growth_mb": _rss_mb() - rss_before}


WORKERS = {"rank0": rank0_worker, "order": order_worker}


def run_in(checkout: Path, worker_args: list[str]) -> dict:
    """A worker of this file run with `checkout`'s code (PYTHONPATH) in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), *worker_args]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"worker {' '.join(worker_args)} ({checkout}) failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith(common.WORKER_RESULT_PREFIX))
    return json.loads(line[len(common.WORKER_RESULT_PREFIX):])


# ----------------------------------------------------------------------------- main


def measure_ranks(args: argparse.Namespace) -> dict[tuple[str, int, str], list[dict]]:
    """(data, world, code) -> one rank-0 result per round, before and after interleaved."""
    code = {"before": args.before, "after": common.REPO}
    results: dict[tuple[str, int, str], list[dict]] = {}
    for round_index in range(args.rounds):
        for kind in ("packed", "short"):
            data = prepare_scaled(kind)
            for world in WORLD_SIZES:
                order = ("before", "after") if round_index % 2 == 0 else ("after", "before")
                for name in order:
                    batches = max(3, args.batches * 8 // max(world, 8))
                    result = run_in(code[name], ["--worker", "rank0", "--data", str(data), "--world", str(world),
                                                 "--batches", str(batches)])
                    results.setdefault((kind, world, name), []).append(result)
                    print(f"  round {round_index + 1} {kind} world {world} {name}: {result['us_per_row']:.1f} us/row",
                          flush=True)
    return results


def materialises_order(checkout: Path) -> bool:
    """Whether `checkout`'s epoch order is a permutation held in memory at every size."""
    return "class FeistelPermutation" not in (checkout / "dataset" / "stream.py").read_text(encoding="utf-8")


def measure_order(args: argparse.Namespace) -> dict[tuple[int, str], dict]:
    """(rows, code) -> the order worker's result (one run each: it is not noisy at this scale)."""
    results = {}
    for rows in ORDER_SIZES:
        for name, checkout in (("before", args.before), ("after", common.REPO)):
            if name == "before" and rows > 10**8 and materialises_order(checkout):
                continue
            results[(rows, name)] = run_in(checkout, ["--worker", "order", "--rows", str(rows)])
            print(f"  order {rows:.0e} {name}: {results[(rows, name)]}", flush=True)
    return results


def rank_table(results: dict[tuple[str, int, str], list[dict]]) -> tuple[str, dict]:
    """The per-row table: before, after, and each against one process at batch 256."""
    rows, medians = [], {}
    for (kind, world, name), runs in results.items():
        medians.setdefault(f"{kind} world {world}", {})[name] = common.median_of(runs, "us_per_row")
    for kind in ("packed", "short"):
        single = medians[f"{kind} world 1"]
        for world in WORLD_SIZES:
            figures = medians[f"{kind} world {world}"]
            rows.append([kind, str(world), f"{LOCAL_BATCH * world:,}", f"{figures['before']:.1f}",
                         f"{figures['after']:.1f}", f"{figures['before'] / single['before']:.2f}x",
                         f"{figures['after'] / single['after']:.2f}x", f"{figures['before'] / figures['after']:.1f}x"])
    header = ["rows", "processes", "global batch", "before us/row", "after us/row", "before vs 1 process",
              "after vs 1 process", "after speed-up"]
    return common.format_table(header, rows), medians


def order_table(results: dict[tuple[int, str], dict]) -> str:
    """The order's time and memory, per size and code ("before" at 10^9 not run: see the module docstring)."""
    rows = [[f"{size:.0e}", name, f"{r['epoch_start_ms']:.1f}", f"{r['median_ms']:.3f}", f"{r['max_ms']:.2f}",
             f"{r['boundary_ms']:.1f}", f"{r['peak_traced_mb']:.2f}", f"{r['rss_growth_mb']:.0f}"]
            for (size, name), r in results.items()]
    if (10**9, "before") not in results:
        rows += [["1e+09", "before", "not run", "", "", "", "8,000 a permutation", ""]]
    header = ["rows", "code", "epoch start ms", "median ms / 256 rows", "slowest ms", "epoch boundary ms",
              "peak traced MB", "RSS growth MB"]
    return common.format_table(header, rows)


def main(argv: list[str] | None = None) -> None:
    """Run both measurements and record them as one section."""
    args = common.options_or_worker(parse_args, argv, WORKERS)
    if args is None:
        return
    ranks, medians = rank_table(measure_ranks(args))
    order = order_table(measure_order(args))
    before_commit = subprocess.run(["git", "-C", str(args.before), "log", "-1", "--format=%h (%s)"],
                                   capture_output=True, text=True).stdout.strip()
    notes = [f"before = {args.before} at {before_commit[:90]}; after = this checkout",
             f"medians of {args.rounds} interleaved rounds of each worker's median batch; us/row = seconds per batch / "
             f"{LOCAL_BATCH} rows of rank 0",
             "the machine was shared with other jobs (2 cores, ~6 other engineers): absolute figures are noisy, "
             "the ratios were taken in the same rounds"]
    common.record(args, "data_scale: rank 0's data cost per row at 1-256 processes, and the epoch order",
                  ranks + "\n\n" + order, notes, medians)


if __name__ == "__main__":
    run_cli(main)  # run as a file by `run_in`, the packages come from the checkout on PYTHONPATH
