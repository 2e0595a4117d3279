"""Held-out MLM loss at an equal number of steps, LAMB against AdamW, at a large batch.

    python -m benchmarks.lamb_large_batch --threads 1     # 21 min on a 2-core CPU at load 10
    python -m benchmarks.lamb_large_batch --batches 256 1024 --steps 200 --layers 4 --hidden 256 --device cuda

WikiText-2 validation is cut as in `mlm_packing` (the first 90% of its lines to train,
the rest held out); a WordPiece vocabulary of `--vocab-size` is trained on the training
part, and both parts are built at length `--seq-len` with it. For each batch size in
`--batches` and each optimiser, `pretrain.py arch=bert_tiny` (`--layers`, `--hidden`,
`--heads`) trains `--steps` steps of that many sequences (`micro_batch_size` pieces of
`--micro-batch` at most), with 10% linear warm-up then a constant rate (so that the
schedule does not depend on the epoch length), at every learning rate of the optimiser's
grid with the first seed; the best rate by held-out MLM loss is then run with the other
seeds. The loss is the run's own evaluation on the held-out part (fixed masks) after its
last step. AdamW and LAMB use the BERT preset's betas (0.9, 0.999), weight decay 0.01
off biases and LayerNorms, and gradient clipping at 1.0. Datasets are built once into
benchmarks/.cache and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from benchmarks import common
from benchmarks.mlm_packing import _pretrain, build, split_corpus
from core.errors import UserError, run_cli

OPTIMIZERS = ("adamw", "lamb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256], help="global batch sizes to compare at")
    parser.add_argument("--micro-batch", type=int, default=128, help="largest micro_batch_size")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--adamw-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--lamb-lrs", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the training runs")
    common.add_no_record_option(parser)
    args = parser.parse_args(argv)
    if min(args.steps, args.micro_batch, args.layers, args.hidden, args.heads, *args.batches) <= 0:
        raise UserError("--steps, --micro-batch, --batches, --layers, --hidden and --heads must be positive")
    return args


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict]:
    """The training and the held-out dataset folders, and the training set's metadata."""
    folder = common.CACHE_DIR / f"lamb-{args.vocab_size}-{args.seq_len}"
    train, held_out = split_corpus(folder)
    shape = ["--max-seq-length", str(args.seq_len)]
    metadata = build(train, folder / "train", [*shape, "--vocab-size", str(args.vocab_size)])
    build(held_out, folder / "held-out", [*shape, "--tokenizer", str(folder / "train" / "tokenizer")], held_out=True)
    return folder / "train", folder / "held-out", metadata


def held_out_loss(args: argparse.Namespace, data: tuple[Path, Path], batch: int, optimizer: str, lr: float,
                  seed: int) -> float:
    """Train one run; its held-out MLM loss after the last step (inf when it diverged)."""
    run_dir = common.CACHE_DIR / "lamb-runs" / f"{optimizer}-b{batch}-lr{lr:g}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    sized = argparse.Namespace(**{**vars(args), "batch": batch})
    try:
        _pretrain(sized, [
            f"data_paths=[{data[0]}]", f"data_paths_test=[{data[1]}]", f"optimizer={optimizer}", f"lr={lr}",
            f"micro_batch_size={min(batch, args.micro_batch)}", f"lr_warmup_steps={max(1, args.steps // 10)}",
            "lr_min_ratio=1.0", "epochs=100000", f"max_steps={args.steps}", "eval_interval=null", f"seed={seed}",
            f"log_interval={args.steps}", f"+checkpoint_path={run_dir}",
        ])  # fmt: skip
    except RuntimeError as error:
        if "not finite" not in str(error):
            raise
        return float("inf")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = float([record for record in records if "all/mlm_loss" in record][-1]["all/mlm_loss"])  # "nan" is a string
    return loss if math.isfinite(loss) else float("inf")


def compare(args: argparse.Namespace, data: tuple[Path, Path], batch: int, optimizer: str) -> dict:
    """The optimiser's learning-rate sweep (first seed) and the best rate's loss for every seed."""
    grid = args.adamw_lrs if optimizer == "adamw" else args.lamb_lrs
    sweep = {lr: held_out_loss(args, data, batch, optimizer, lr, args.seeds[0]) for lr in grid}
    best = min(sweep, key=sweep.get)
    losses = [sweep[best]] + [held_out_loss(args, data, batch, optimizer, best, seed) for seed in args.seeds[1:]]
    print(f"  batch {batch} {optimizer}: sweep {sweep}, best lr {best:g}, losses {losses}", flush=True)
    return {"sweep": sweep, "best": best, "losses": losses}


def main(argv: list[str] | None = None) -> None:
    """Build the datasets, run every batch size and optimiser, record the table."""
    args = parse_args(argv)
    train, held_out, metadata = prepare(args)
    results = {(batch, name): compare(args, (train, held_out), batch, name) for batch in args.batches
               for name in OPTIMIZERS}
    rows = []
    for (batch, name), result in results.items():
        losses = result["losses"]
        rows.append([str(batch), name, f"{result['best']:g}", ", ".join(f"{loss:.3f}" for loss in losses),
                     f"{sum(losses) / len(losses):.3f}",
                     "; ".join(f"{lr:g}: {loss:.3f}" for lr, loss in result["sweep"].items())])
    table = common.format_table(["global batch", "optimizer", "best lr", "held-out MLM loss per seed",
                                 "mean", f"lr sweep (seed {args.seeds[0]})"], rows)
    notes = [
        f"model: bert_tiny with {args.layers} layers, hidden {args.hidden}, {args.heads} heads; WordPiece vocabulary "
        f"{metadata['vocab_size']} trained on the training part; length {args.seq_len}; "
        f"{metadata['num_sequences']['train']:,} training sequences; {args.steps} steps, micro-batches of at most "
        f"{args.micro_batch}, {max(1, args.steps // 10)} warm-up steps then constant lr; device {args.device}; "
        f"seeds {args.seeds}",
        "held-out: the last 10% of WikiText-2 validation (cut at an article heading), fixed masks, the same for all runs",
        "the machine was shared with other jobs (see the load average): the losses do not depend on it, only the time",
    ]
    common.print_or_record(args, "lamb_large_batch: held-out MLM loss at equal steps, LAMB vs AdamW", table, notes)


if __name__ == "__main__":
    run_cli(main)
