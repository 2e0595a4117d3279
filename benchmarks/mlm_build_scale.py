"""The MLM builder on a generated corpus of 0.2-1 GB: its speed at 1 and 2 workers vs raw
`tokenizers` at 1 and 2 threads, the main process's ceiling, and peak memory.

    python -m benchmarks.mlm_build_scale         # every contender at 200 MB and 1 GB (~40 minutes on 2 cores)
    python -m benchmarks.mlm_build_scale --sizes-mb 200 --full-sizes-mb 200

The corpus is generated into benchmarks/.cache (git-ignored) from the shared corpora
(wikitext-2 validation and tiny Shakespeare): copy k of their text starts every line with
the word `copy<k>`, so every document is distinct and de-duplication keeps them all.
Contenders, each in a fresh process, with the bert-base-uncased WordPiece tokenizer at length 128:
- "builder, N workers": `build_mlm_dataset` end to end with `num_workers=N` (N=1: one
  process whose tokenizer's own threads use every core);
- "tokenizers, N threads": the corpus read in ~1 MB chunks of lines, each given to
  `encode_batch_fast` with N threads (`RAYON_NUM_THREADS`), the ids discarded;
- "one worker on one core": the builder with `num_workers=1` and the tokenizer's own
  threads off (`RAYON_NUM_THREADS=1`); its MB/s is the corpus over the seconds spent in
  `process_unit` (reading, keying, tokenising, packing a unit: a worker's whole job), i.e.
  what each added core brings;
- "main process ceiling": the builder with `num_workers=1` and tokenising replaced by a
  stand-in that costs next to nothing (one token per 5 characters); its MB/s is the corpus
  over the seconds spent outside `process_unit` (planning the units, de-duplication,
  splitting, report counts, shard writes, commits, metadata): the most a build can go
  however many workers it has.
Peak memory: the worker's peak RSS plus its largest child's (the tokenising processes).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.bert_train import tokenizer_dir
from core.cli import argument_parser
from core.errors import UserError, run_cli

SOURCES = ("wikitext2-valid.txt", "tinyshakespeare.txt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[200, 1000], help="generated corpus sizes")
    parser.add_argument("--full-sizes-mb", type=int, nargs="+", default=[200, 1000],
                        help="sizes at which every contender runs (at the others: the main process ceiling only, "
                             "whose memory is what could grow with the corpus)")
    common.add_no_record_option(parser)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.sizes_mb) <= 0:
        raise UserError("--sizes-mb must be positive")
    return args


def generated_corpus(size_mb: int) -> Path:
    """About `size_mb` MB of distinct documents (written once into benchmarks/.cache)."""
    target = common.CACHE_DIR / f"mlm-scale-{size_mb}mb.txt"
    if target.is_file():
        return target
    lines = [line for name in SOURCES for line in common.corpus_path(name).read_text(encoding="utf-8").splitlines()]
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".tmp")
    written, copy = 0, 0
    with open(temporary, "w", encoding="utf-8") as handle:
        while written < size_mb * 1e6:
            text = "".join(f"copy{copy} {line}\n" if line.strip() else "\n" for line in lines)
            handle.write(text)
            written += len(text.encode("utf-8"))
            copy += 1
    temporary.rename(target)
    return target


def builder_worker(corpus: Path, num_workers: int, kind: str) -> dict:
    """Time the builder end to end; for `kind` "ceiling" (a stand-in tokeniser) or "core"
    (one thread), time the work outside or inside `process_unit` instead."""
    import numpy as np

    from dataset.text import builder
    from dataset.text import corpus as text_corpus

    if kind == "ceiling":
        def stand_in(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
            lengths = np.fromiter((len(line) // 5 + 1 for line in lines), dtype=np.int64, count=len(lines))
            return np.full(int(lengths.sum()), 1000, dtype=np.int32), lengths

        text_corpus.encode_lines = stand_in
    inside, process_unit = [0.0], builder.process_unit

    def timed(unit):
        started = time.perf_counter()
        result = process_unit(unit)
        inside[0] += time.perf_counter() - started
        return result

    if kind != "builder":  # one worker, in this process (a pool could not pickle the wrapper)
        builder.process_unit = timed
    with tempfile.TemporaryDirectory(dir=common.CACHE_DIR) as folder:
        start = time.perf_counter()
        builder.build_mlm_dataset(builder.MLMBuildOptions(
            input_files=[str(corpus)], output_dir=str(Path(folder) / "out"), max_seq_length=128,
            tokenizer=str(tokenizer_dir() / "tokenizer.json"), num_workers=num_workers,
        ))  # fmt: skip
        seconds = time.perf_counter() - start
    measured = {"ceiling": seconds - inside[0], "core": inside[0]}.get(kind, seconds)
    return {"seconds": measured, "mb_per_s": corpus.stat().st_size / 1e6 / measured}


def raw_worker(corpus: Path, threads: int) -> dict:
    os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = str(threads)
    if threads == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from benchmarks.mlm_build import raw_worker as encode_in_chunks

    return encode_in_chunks(corpus, "encode_batch_fast")


def run_worker(name: str, corpus: Path) -> dict:
    kind, _, number = name.partition(":")
    if kind == "raw":
        result = raw_worker(corpus, int(number))
    else:
        if kind == "core":
            os.environ["RAYON_NUM_THREADS"] = os.environ["RAYON_RS_NUM_CPUS"] = "1"
        result = builder_worker(corpus, int(number or 1), kind)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {**result, "children_max_rss_mb": children}


CONTENDERS = {
    "builder, 1 worker": "builder:1", "builder, 2 workers": "builder:2",
    "tokenizers, 1 thread": "raw:1", "tokenizers, 2 threads": "raw:2", "one worker on one core": "core",
    "main process ceiling": "ceiling",
}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        common.report_worker_result(run_worker(args.worker, Path(args.corpus)))
        return
    rows, notes = [], []
    for size in args.sizes_mb:
        corpus = generated_corpus(size)
        names = CONTENDERS if size in args.full_sizes_mb else {"main process ceiling": "ceiling"}
        runs = {name: ["--worker", worker, "--corpus", str(corpus)] for name, worker in names.items()}
        results = common.interleaved(runs, "benchmarks.mlm_build_scale", 1)
        raw = results.get("tokenizers, 2 threads")
        for name, (result,) in results.items():
            ratio = f"{result['mb_per_s'] / raw[0]['mb_per_s']:.2f}x" if raw else "-"
            peak = result["max_rss_mb"] + result["children_max_rss_mb"]
            rows.append([f"{corpus.stat().st_size / 1e6:,.0f} MB", name, f"{result['mb_per_s']:.2f}",
                         ratio, f"{result['seconds']:,.0f}", f"{peak:,.0f}"])  # fmt: skip
    table = common.format_table(
        ["corpus", "contender", "MB/s", "vs tokenizers 2 threads", "seconds", "peak RSS, worker + largest child (MB)"],
        rows,
    )
    common.print_or_record(args, "mlm_build_scale", table, notes)


if __name__ == "__main__":
    run_cli(main)
