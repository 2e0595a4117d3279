"""MLM dataset builder speed and memory vs the raw speed of the `tokenizers` library.

    python -m benchmarks.mlm_build            # wikitext-2 validation at 1x and 10x

Contenders, each in a fresh process, on the same text with the same tokenizer (the
bert-base-uncased WordPiece `tokenizer.json`), at length 128:
- "builder": `dataset.text.builder` (`build_text_mlm_dataset.py`) end to end (read, split, tokenise,
  pack, write shards; default options, so one process whose tokenizer uses every core);
- "tokenizers encode_batch": the file read in chunks of about 1 MB of lines, each chunk
  given to `Tokenizer.encode_batch` (no special tokens), the ids discarded;
- "tokenizers encode_batch_fast": the same with `encode_batch_fast` (no offsets), which
  is what the builder calls.
MB/s = input bytes / seconds inside the worker (imports excluded). Peak memory is the
worker's `ru_maxrss`; the 10x corpus is wikitext-2 validation ten times, each copy after
the first made distinct (so de-duplication, on by default, keeps it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.bert_train import tokenizer_dir
from core.cli import argument_parser
from core.errors import UserError, run_cli
from dataset.text.builder import CHUNK_CHARACTERS  # text per raw `encode_batch` call, as the builder's chunks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options of the benchmark and of its workers."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="corpus repetitions to time")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    common.add_no_record_option(parser)
    parser.add_argument("--worker", choices=("builder", "encode_batch", "encode_batch_fast"), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds <= 0 or min(args.scales) <= 0:
        raise UserError("--rounds and --scales must be positive")
    return args


def scaled_corpus(scale: int) -> Path:
    """wikitext-2 validation `scale` times (written once into benchmarks/.cache). Copy k > 0
    starts every line with the number k, so the builder's de-duplication (on by default)
    keeps all the copies and the 10x corpus is 10x the work."""
    source = common.corpus_path("wikitext2-valid.txt")
    if scale == 1:
        return source
    target = common.CACHE_DIR / f"wikitext2-valid-x{scale}-distinct.txt"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        with open(target, "w", encoding="utf-8") as handle:
            for copy in range(scale):
                handle.writelines(f"{copy} {line}" if copy and line.strip() else line for line in lines)
    return target


def builder_worker(corpus: Path) -> dict:
    """Time the builder end to end into a temporary folder."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        build_mlm_dataset(MLMBuildOptions(
            input_files=[str(corpus)], output_dir=str(Path(folder) / "out"), max_seq_length=128,
            tokenizer=str(tokenizer_dir() / "tokenizer.json"),
        ))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": corpus.stat().st_size / 1e6 / seconds}


def raw_worker(corpus: Path, method: str) -> dict:
    """Time reading the corpus and `Tokenizer.<method>` over chunks of its lines."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir() / "tokenizer.json"))
    encode = getattr(tokenizer, method)
    start, tokens = time.perf_counter(), 0
    with open(corpus, encoding="utf-8") as handle:
        chunk, size = [], 0
        for line in handle:
            line = line.strip()
            if line:
                chunk.append(line)
                size += len(line)
            if size >= CHUNK_CHARACTERS:
                tokens += sum(len(encoding.ids) for encoding in encode(chunk, add_special_tokens=False))
                chunk, size = [], 0
        if chunk:
            tokens += sum(len(encoding.ids) for encoding in encode(chunk, add_special_tokens=False))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": corpus.stat().st_size / 1e6 / seconds, "tokens": tokens}


def run_scale(args: argparse.Namespace, scale: int) -> tuple[list[list[str]], dict[str, float], str]:
    """Interleaved rounds at one corpus size: table rows, builder peak RSS, per-round note."""
    corpus = scaled_corpus(scale)
    runs = {name: ["--worker", worker, "--corpus", str(corpus)] for name, worker in (
        ("builder", "builder"), ("tokenizers encode_batch", "encode_batch"),
        ("tokenizers encode_batch_fast", "encode_batch_fast"))}
    results = common.interleaved(runs, "benchmarks.mlm_build", args.rounds)
    reference = common.median_of(results["tokenizers encode_batch"], "mb_per_s")
    rows = [[f"{scale}x ({corpus.stat().st_size / 1e6:.1f} MB)", name, f"{common.median_of(r, 'mb_per_s'):.2f}",
             f"{common.median_of(r, 'mb_per_s') / reference:.2f}x", f"{common.median_of(r, 'max_rss_mb'):,.0f}"]
            for name, r in results.items()]
    peaks = {name: common.median_of(r, "max_rss_mb") for name, r in results.items()}
    note = f"{scale}x per-round MB/s: " + common.per_round(results, "mb_per_s", "{:.2f}".format)
    return rows, peaks, note


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, or one worker when `--worker` is given."""
    args = parse_args(argv)
    if args.worker is not None:
        corpus = Path(args.corpus)
        result = builder_worker(corpus) if args.worker == "builder" else raw_worker(corpus, args.worker)
        common.report_worker_result(result)
        return
    rows, notes, builder_peaks = [], [], {}
    for scale in args.scales:
        scale_rows, peaks, note = run_scale(args, scale)
        rows += scale_rows
        notes.append(note)
        builder_peaks[scale] = peaks["builder"]
    if len(builder_peaks) > 1:
        smallest, largest = min(builder_peaks), max(builder_peaks)
        notes.insert(0, f"builder peak RSS at {largest}x / at {smallest}x: "
                        f"{builder_peaks[largest] / builder_peaks[smallest]:.2f}")
    table = common.format_table(["corpus", "contender", "MB/s (median)", "vs encode_batch", "peak RSS (MB)"], rows)
    common.print_or_record(args, "mlm_build", table, notes)


if __name__ == "__main__":
    run_cli(main)
