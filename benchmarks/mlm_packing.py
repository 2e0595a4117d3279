"""Held-out MLM accuracy of a small BERT at an equal number of steps with each `--packing`.

    python -m benchmarks.mlm_packing                     # 2 x 128 BERT, 400 steps of 32, CPU
    python -m benchmarks.mlm_packing --steps 2000 --layers 4 --hidden 256 --device cuda

WikiText-2 validation is cut at an article heading into a training part (the first 90%
of its lines) and a held-out part (the rest). A WordPiece vocabulary of `--vocab-size`
is trained once on the training part; the training part is built with `--packing full`
and with `--packing documents` (length 128, that vocabulary, `--test-split 0`), and the
held-out part with each packing too, each stored as the test split of a folder of its
own, so that both models are scored on the same sequences with the same fixed masks.
Each packing then trains `pretrain.py arch=bert_tiny` at the given size for `--steps`
steps of `--batch` sequences (AdamW, lr 1e-3 after 10% warmup, then constant, so the
schedules do not depend on the epoch length), seeds `--seeds`, and is evaluated
(`eval_only=true`) on both held-out forms; the table gives the held-out masked-token
accuracy and loss, and the real tokens seen. Datasets are built once into
benchmarks/.cache and reused (a WordPiece training is not bit-reproducible, and
`--reuse` evaluates the runs already there without training again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks import common
from core.errors import UserError, run_cli
from dataset.text.packing import PACKINGS

HELD_OUT_SHARE = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the training runs")
    common.add_no_record_option(parser)
    parser.add_argument("--reuse", action="store_true", help="evaluate the finished runs in the cache, no training")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch, args.layers, args.hidden, args.heads) <= 0:
        raise UserError("--steps, --batch, --layers, --hidden and --heads must be positive")
    return args


def split_corpus(folder: Path) -> tuple[Path, Path]:
    """WikiText-2 validation cut at the article heading nearest 90% of its lines."""
    lines = common.corpus_path("wikitext2-valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    headings = [i for i, line in enumerate(lines) if line.startswith(" = ") and not line.startswith(" = = ")]
    cut = min(headings, key=lambda i: abs(i - (1 - HELD_OUT_SHARE) * len(lines)))
    folder.mkdir(parents=True, exist_ok=True)
    train, held_out = folder / "train.txt", folder / "held-out.txt"
    train.write_text("".join(lines[:cut]), encoding="utf-8")
    held_out.write_text("".join(lines[cut:]), encoding="utf-8")
    return train, held_out


def build(inputs: Path, output: Path, options: dict, held_out: bool = False) -> dict:
    """Run the builder once with `options` (`MLMBuildOptions` fields; a held-out folder gets
    its split relabelled as test); the dataset.json."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    if not (output / "dataset.json").is_file():
        build_mlm_dataset(MLMBuildOptions(input_files=[str(inputs)], output_dir=str(output), overwrite=True,
                                          test_split=0.0, **options))  # fmt: skip
        if held_out:
            as_test_split(output)
    return json.loads((output / "dataset.json").read_text())


def as_test_split(folder: Path) -> None:
    """Relabel a dataset's only split (train) as its test split: pretrain evaluates test splits."""
    metadata_file = folder / "dataset.json"
    metadata = json.loads(metadata_file.read_text())
    shutil.rmtree(folder / "test")
    (folder / "train").rename(folder / "test")
    (folder / "train").mkdir()
    for key in ("num_documents", "num_sequences", "num_tokens", "shards"):
        metadata[key] = {"train": [] if key == "shards" else 0, "test": metadata[key]["train"]}
    metadata_file.write_text(json.dumps(metadata, indent=2))


def prepare(args: argparse.Namespace) -> tuple[dict[str, Path], dict[str, Path], dict[str, dict]]:
    """The training and the held-out folder of each packing, and their metadata."""
    folder = common.CACHE_DIR / f"packing-{args.vocab_size}-{args.seq_len}"
    train, held_out = split_corpus(folder)
    datasets, metadata = {}, {}
    datasets["documents"] = folder / "train-documents"
    metadata["documents"] = build(train, datasets["documents"], {"max_seq_length": args.seq_len,
                                                                 "packing": "documents", "vocab_size": args.vocab_size})
    reused = {"max_seq_length": args.seq_len, "tokenizer": str(datasets["documents"] / "tokenizer")}
    datasets["full"] = folder / "train-full"
    metadata["full"] = build(train, datasets["full"], {**reused, "packing": "full"})
    held_out_folders = {"documents": folder / "held-out", "full": folder / "held-out-full"}
    for packing, held_out_folder in held_out_folders.items():
        metadata[f"held-out {packing}"] = build(held_out, held_out_folder, {**reused, "packing": packing},
                                                held_out=True)  # fmt: skip
    return datasets, held_out_folders, metadata


def _pretrain(args: argparse.Namespace, overrides: list[str]) -> None:
    import os

    command = [sys.executable, "pretrain.py", "arch=bert_tiny", f"arch.num_layers={args.layers}",
               f"arch.hidden_size={args.hidden}", f"arch.num_heads={args.heads}", f"global_batch_size={args.batch}",
               "wandb=disabled", f"device={args.device}", *overrides]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads is not None else None
    done = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, env=env, timeout=6 * 3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def train(args: argparse.Namespace, data: Path, held_out: dict[str, Path], seed: int, run_dir: Path) -> dict:
    """One pretrain.py run (unless --reuse) and an evaluation on each held-out form."""
    if not args.reuse:
        shutil.rmtree(run_dir, ignore_errors=True)
        warmup = max(1, args.steps // 10)
        _pretrain(args, [
            f"data_paths=[{data}]", f"data_paths_test=[{held_out['documents']}]", "lr=1e-3",
            f"lr_warmup_steps={warmup}", "lr_min_ratio=1.0", "epochs=1000", f"max_steps={args.steps}",
            "eval_interval=null", f"seed={seed}", "log_interval=10", f"+checkpoint_path={run_dir}",
        ])  # fmt: skip
    result = {}
    for packing, folder in held_out.items():
        _pretrain(args, [f"data_paths=[{data}]", f"data_paths_test=[{folder}]", "eval_only=true",
                         f"+load_checkpoint={run_dir}"])  # fmt: skip
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        evaluation = [record for record in records if "all/accuracy" in record][-1]
        result[packing] = (evaluation["all/accuracy"], evaluation["all/mlm_loss"])
    return result


def main(argv: list[str] | None = None) -> None:
    """Build the datasets, train each packing, record the table."""
    args = parse_args(argv)
    datasets, held_out, metadata = prepare(args)
    results = {packing: [] for packing in PACKINGS}
    for seed in args.seeds:
        for packing in PACKINGS:
            run_dir = common.CACHE_DIR / "packing-runs" / f"{packing}-{seed}"
            results[packing].append(train(args, datasets[packing], held_out, seed, run_dir))
            print(f"  seed {seed} {packing}: {results[packing][-1]}", flush=True)
    rows = []
    for packing in PACKINGS:
        meta = metadata[packing]
        sequences, tokens = meta["num_sequences"]["train"], meta["num_tokens"]["train"]
        fill = tokens / (sequences * args.seq_len)
        figures = []
        for form in PACKINGS:
            accuracy = ", ".join(f"{r[form][0]:.4f}" for r in results[packing])
            loss = ", ".join(f"{r[form][1]:.3f}" for r in results[packing])
            figures.append(f"{accuracy} (loss {loss})")
        rows.append([packing, f"{sequences:,}", f"{fill:.1%}", f"{args.steps * args.batch * fill * args.seq_len:,.0f}",
                     *figures])  # fmt: skip
    table = common.format_table(["trained with --packing", "training sequences", "fill", "real tokens seen (about)",
                                 "accuracy on held-out full rows, per seed", "on held-out documents rows"], rows)
    held = {form: metadata[f"held-out {form}"]["num_sequences"]["test"] for form in PACKINGS}
    notes = [
        f"model: bert_tiny with {args.layers} layers, hidden {args.hidden}, {args.heads} heads; vocabulary "
        f"{metadata['documents']['vocab_size']} (WordPiece trained on the training part); length {args.seq_len}; "
        f"{args.steps} steps of {args.batch} sequences, lr 1e-3, {max(1, args.steps // 10)} warmup steps then "
        f"constant; device {args.device}; seeds {args.seeds}",
        f"held-out part: the last {HELD_OUT_SHARE:.0%} of WikiText-2 validation (cut at an article heading), "
        f"built with each packing ({held['full']} full rows, {held['documents']} documents rows), the same sequences "
        "and fixed masks for both models",
    ]
    common.print_or_record(args, "mlm_packing: held-out accuracy at equal steps", table, notes)


if __name__ == "__main__":
    run_cli(main)
