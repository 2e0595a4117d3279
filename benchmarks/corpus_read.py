"""What the input format and `--num-workers` cost the MLM builder, and what de-duplication's
hash set costs in memory.

    python -m benchmarks.corpus_read                 # wikitext-2 validation x3, 3 rounds

The same documents (wikitext-2 validation, repeated `--scale` times with a copy number
in each document so that nothing is a duplicate) are written as plain text, as
WikiExtractor `<doc>` blocks (with the title line) and as parquet (`text` and `title`
columns). Contenders, each a fresh process running the builder end to end (bert-base-uncased
WordPiece tokenizer, length 128, default options otherwise):
- plain text, WikiExtractor and parquet at `--num-workers 2` (the reading overhead);
- plain text at `--num-workers 1` (the tokenizer's own threads) next to 2 worker processes.
A last worker fills a `Deduplicator` with a million distinct documents and reports the
growth of its resident memory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.bert_train import tokenizer_dir
from core.errors import UserError, run_cli

DEDUP_DOCUMENTS = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its workers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=3, help="copies of wikitext-2 validation")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    common.add_no_record_option(parser)
    parser.add_argument("--worker", choices=("build", "dedup"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--num-workers", default="2", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds <= 0 or args.scale <= 0:
        raise UserError("--rounds and --scale must be positive")
    return args


def corpus_documents(scale: int) -> list[list[str]]:
    """The documents of wikitext-2 validation (blank-line separated), `scale` times, each copy marked."""
    text = common.corpus_path("wikitext2-valid.txt").read_text(encoding="utf-8")
    documents, current = [], []
    for line in text.splitlines():
        line = " ".join(line.split())
        if line:
            current.append(line)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return [[f"copy {copy} {lines[0]}", *lines[1:]] for copy in range(scale) for lines in documents]


def write_formats(scale: int) -> dict[str, Path]:
    """The corpus as plain text, WikiExtractor output and parquet (written once into the cache)."""
    folder = common.CACHE_DIR / f"formats-x{scale}"
    paths = {"text": folder / "corpus.txt", "wikiextractor": folder / "wiki" / "AA" / "wiki_00",
             "parquet": folder / "corpus.parquet"}  # fmt: skip
    if all(path.is_file() for path in paths.values()):
        return paths
    import pyarrow
    import pyarrow.parquet

    documents = corpus_documents(scale)
    paths["wikiextractor"].parent.mkdir(parents=True, exist_ok=True)
    paths["text"].write_text("".join("\n".join(lines) + "\n\n" for lines in documents), encoding="utf-8")
    blocks = (f'<doc id="{n}" url="https://x.org/wiki?curid={n}" title="Article {n}">\nArticle {n}\n\n'
              + "\n".join(lines) + "\n\n</doc>\n" for n, lines in enumerate(documents))  # fmt: skip
    paths["wikiextractor"].write_text("".join(blocks), encoding="utf-8")
    table = pyarrow.table({"title": [f"Article {n}" for n in range(len(documents))],
                           "text": ["\n".join(lines) for lines in documents]})  # fmt: skip
    pyarrow.parquet.write_table(table, paths["parquet"])
    return paths


def build_worker(path: Path, num_workers: str) -> dict:
    """Time the builder end to end into a temporary folder."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        build_mlm_dataset(MLMBuildOptions(
            input_files=[str(path)], output_dir=str(Path(folder) / "out"), max_seq_length=128,
            tokenizer=str(tokenizer_dir() / "tokenizer.json"), num_workers=int(num_workers),
        ))
        seconds = time.perf_counter() - start
    return {"seconds": seconds}


def dedup_worker() -> dict:
    """Resident memory added by a Deduplicator holding a million distinct documents."""
    from dataset.text.corpus import Deduplicator

    def resident_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 2**20

    documents = ([f"document number {number}"] for number in range(DEDUP_DOCUMENTS))
    deduplicator = Deduplicator("documents")
    before = resident_mb()
    kept = sum(1 for _ in deduplicator.filter(documents))
    return {"mb_per_million": (resident_mb() - before) * 1e6 / DEDUP_DOCUMENTS, "kept": kept}


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, or one worker when `--worker` is given."""
    args = parse_args(argv)
    if args.worker == "build":
        common.report_worker_result(build_worker(Path(args.input), args.num_workers))
        return
    if args.worker == "dedup":
        common.report_worker_result(dedup_worker())
        return
    paths = write_formats(args.scale)
    runs = {
        "plain text, 2 workers": ["--worker", "build", "--input", str(paths["text"]), "--num-workers", "2"],
        "WikiExtractor, 2 workers": ["--worker", "build", "--input", str(paths["wikiextractor"]), "--num-workers", "2"],
        "parquet, 2 workers": ["--worker", "build", "--input", str(paths["parquet"]), "--num-workers", "2"],
        "plain text, 1 worker": ["--worker", "build", "--input", str(paths["text"]), "--num-workers", "1"],
    }
    results = common.interleaved(runs, "benchmarks.corpus_read", args.rounds)
    reference = common.median_of(results["plain text, 2 workers"], "seconds")
    size = paths["text"].stat().st_size / 1e6
    rows = [[name, f"{common.median_of(r, 'seconds'):.2f}", f"{size / common.median_of(r, 'seconds'):.2f}",
             f"{common.median_of(r, 'seconds') / reference:.2f}x", f"{common.median_of(r, 'max_rss_mb'):,.0f}"]
            for name, r in results.items()]  # fmt: skip
    table = common.format_table(["contender", "seconds (median)", "MB/s of the plain text", "time vs plain text, 2 workers",
                                 "peak RSS (MB)"], rows)  # fmt: skip
    dedup = common.run_worker("benchmarks.corpus_read", ["--worker", "dedup"])
    notes = [
        f"corpus: wikitext-2 validation x{args.scale} ({size:.1f} MB as plain text; WikiExtractor "
        f"{paths['wikiextractor'].stat().st_size / 1e6:.1f} MB, parquet {paths['parquet'].stat().st_size / 1e6:.1f} MB "
        "on disk), the same documents in each",
        "per-round seconds: " + common.per_round(results, "seconds", "{:.2f}".format),
        f"de-duplication hash set: {dedup['mb_per_million']:.0f} MB of resident memory per million distinct "
        "documents (or paragraphs with --dedup paragraphs)",
    ]
    common.print_or_record(args, "corpus_read: input formats, workers, de-duplication memory", table, notes,
                        print_notes=True)


if __name__ == "__main__":
    run_cli(main)
