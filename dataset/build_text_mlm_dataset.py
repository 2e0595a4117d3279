"""Build a masked-language-model dataset (BERT pretraining) from raw text.

    python dataset/build_text_mlm_dataset.py --input-files data/sample.txt \
        --output-dir data/sample-mlm --vocab-size 30000 --max-seq-length 512 --mask-prob 0.15

    # a demo corpus that exists on every machine (Python standard library docstrings):
    python -m dataset.demo_corpus --output data/stdlib-docs.txt
    python dataset/build_text_mlm_dataset.py --input-files data/stdlib-docs.txt \
        --output-dir data/stdlib-mlm --max-seq-length 128 --nsp

    # WikiExtractor output (folders AA/, AB/, ... of wiki_00, wiki_01, ...), read recursively:
    python dataset/build_text_mlm_dataset.py --input-files data/wiki --output-dir data/wiki-mlm \
        --max-seq-length 128 --num-workers 8

Inputs (`--input-files`: files, quoted globs with `**` recursive, or folders read
recursively with hidden files skipped). Each file's format is detected from its content
(`FORMATS` in `dataset/text/corpus.py`): plain text with one sentence or paragraph per line and blank
lines between documents; JSON lines with a `--text-field` per row (one document per row);
WikiExtractor's `<doc>` blocks (one document per block, title line and tags dropped);
parquet (`--text-field` column, one document per row; needs pyarrow). Each may be gzip,
bzip2 or zstd compressed (zstd needs zstandard; `pip install -e ".[corpora]"` adds both).
Exact repeats of documents (`--dedup documents`, the default) or paragraphs are removed
before the split, so no duplicate crosses it.

The tokenizer is a WordPiece vocabulary trained on the corpus (default; for a corpus larger
than `--tokenizer-sample-mb`, on about that much text: ~1 MB from each of a seeded choice
of files, chosen by size, `dataset/text/sample.py`), a word-level vocabulary of the most
frequent words (`--tokenizer whitespace`), or an existing `tokenizer.json` / `vocab.txt` /
folder.

Several lengths (`--max-seq-length 128 512`, BERT's two phases) build one dataset per
length, `OUTPUT_DIR/seq128/` and `OUTPUT_DIR/seq512/`, from one pass over the corpus (read
and tokenised once); each is the dataset a build of that length alone gives.

Packing (`--packing`): `full` concatenates the documents of a split with [SEP] between
them and cuts the stream into full sequences `[CLS] ... [SEP]` (RoBERTa's
FULL-SENTENCES); `documents` (the default) packs consecutive lines of one document into
`[CLS] A [SEP]` (or, with `--nsp`, `[CLS] A [SEP] B [SEP]`, B the real continuation or,
half the time, a segment of another document of the same split), a line that does not fit
starting the next sequence. Either way nothing is dropped: without `--nsp`, decoding every
sequence of both splits gives back the text. `documents` stays the default because, at an
equal number of steps, `full` did not give a better held-out accuracy while each of its
steps costs ~1.4x the compute (benchmarks/RESULTS.md, mlm_packing; BERT_TRAINING.md).

At the end the builder prints a corpus and vocabulary report (documents, sentences and
tokens per split, duplicates and dropped lines, [UNK] rate, word pieces per word, unknown
characters, fill rate), stores it in dataset.json and report.txt, and warns in one line
when the vocabulary does not fit the text.

The inputs are cut into units of about 4 MB (at blank lines, row or </doc> ends; a
compressed or parquet file is one unit) that `--num-workers` processes read, tokenise and
pack; this process drops repeats and writes the numpy shards, so memory does not grow with
the corpus (the library behind this command: `dataset/text/builder.py`,
`build_mlm_dataset(MLMBuildOptions(...))`). With --nsp or --dedup paragraphs the workers
only tokenise, and this process does the rest. Each document goes to the test
split by a seeded hash of its text (the first document always trains; with --num-parts, that
of part 0). The layout of the output folder is described in `dataset/text/format.py`.

Many machines: `--part I --num-parts N` builds only the documents of the I-th of N equal
byte ranges of the inputs (from the first safe cut at or after the range's start to the
one at or after its end), with a tokenizer given by `--tokenizer PATH`; train on
the folder of parts (`data_paths="[data/wiki-parts]"`) after removing repeats across them
with `dataset/exclude_duplicate_documents.py` (BERT_TRAINING.md, "Building on many machines"):

    python dataset/build_text_mlm_dataset.py --input-files data/corpus --tokenizer data/tokenizer \
        --num-parts 64 --part $SLURM_ARRAY_TASK_ID --output-dir data/wiki-parts/part_$(printf %05d $SLURM_ARRAY_TASK_ID)

Stopping and resuming: the build writes into a hidden `.<name>.partial` folder beside
`--output-dir`, renamed to `--output-dir` only when complete. SIGTERM or Ctrl-C stops it
at the next unit (about 4 MB of input) with one line; after that, or after a kill
(SIGKILL, a lost machine), the same command plus `--resume` finishes it, and the result is
byte for byte the one an uninterrupted build gives (`--num-workers` may change; the other
options may not). A resumed build reads the finished part of the corpus again without
tokenising it, and loses at most the work since the last shard was completed
(`dataset/text/resume.py`).

Reproducibility: with the same tokenizer and seed, a build is bit-identical, whatever
`--num-workers`. Training a WordPiece vocabulary is not: the `tokenizers` library
breaks ties between equally frequent merges in hash-map order (huggingface/tokenizers
issue #1794), so two trainings on the same text can differ in a few rare tokens. To
rebuild exactly, pass the first build's vocabulary back: `--tokenizer OLD/tokenizer`.
The word-level (`whitespace`) vocabulary is deterministic.
"""

from __future__ import annotations

import argparse

from core.cli import argument_parser
from core.errors import run_cli
from dataset.text.builder import DEFAULT_VOCAB_SIZE, MLMBuildOptions, build_mlm_dataset
from dataset.text.corpus import DEDUP_MODES, FORMATS
from dataset.text.packing import PACKINGS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see `--help`)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--input-files", nargs="+", required=True,
                        help=f"files, quoted globs or folders: {', '.join(FORMATS)}; .gz/.bz2/.zst")
    parser.add_argument("--output-dir", required=True, help="dataset folder to create")
    parser.add_argument("--vocab-size", type=int, default=None, help=f"trained vocabulary size ({DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--max-seq-length", type=int, nargs="+", default=[512],
                        help="tokens per sequence, specials included; several (128 512): one dataset each, "
                             "in OUTPUT_DIR/seq<length>/, from one pass")  # fmt: skip
    parser.add_argument("--mask-prob", type=float, default=0.15, help="masking rate recorded for dynamic masking")
    parser.add_argument("--test-split", type=float, default=0.05, help="fraction of documents in the test split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the tokenizer's sample, NSP pairs and static masks")
    parser.add_argument(
        "--tokenizer", default="wordpiece", help="'wordpiece' (train), 'whitespace' (word-level), or a PATH to reuse"
    )
    parser.add_argument("--tokenizer-sample-mb", type=float, default=100.0, help="text to train the vocabulary on")
    parser.add_argument(
        "--lowercase", action=argparse.BooleanOptionalAction, default=None, help="trained tokenizers (default: on)"
    )
    parser.add_argument("--nsp", action="store_true", help="sentence pairs with next-sentence labels")
    parser.add_argument("--static-masking", action="store_true", help="mask once at build time (stored)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="processes that read, tokenise and pack the input (1: in this process)")
    parser.add_argument("--shard-size", type=int, default=65536, help="sequences per shard file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")
    parser.add_argument("--resume", action="store_true",
                        help="finish a build of --output-dir that was stopped or killed (same options)")
    parser.add_argument("--on-bad-line", choices=("skip", "error"), default="error",
                        help="malformed rows, binary or non-UTF-8 lines: stop, or drop and count them")
    parser.add_argument("--text-field", default="text", help="the text's JSON field or parquet column")
    parser.add_argument("--dedup", choices=DEDUP_MODES, default="documents",
                        help="remove exact repeats of documents or paragraphs before the split")
    parser.add_argument("--part", type=int, default=0,
                        help="which slice of the inputs to build, 0 to --num-parts - 1 (e.g. $SLURM_ARRAY_TASK_ID)")
    parser.add_argument("--num-parts", type=int, default=1,
                        help="cut the inputs into this many slices of equal bytes, one job each (needs --tokenizer PATH)")
    parser.add_argument("--packing", choices=PACKINGS, default=None,
                        help="full: documents concatenated, [SEP] between; documents (default): one "
                             "document per sequence")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> MLMBuildOptions:
    """The library's options from the parsed flags (`--packing` left out means `documents`)."""
    lengths = args.max_seq_length
    return MLMBuildOptions(**{**vars(args), "input_files": tuple(args.input_files),
                              "max_seq_length": lengths[0] if len(lengths) == 1 else tuple(lengths),
                              "packing": args.packing or "documents"})  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and build the dataset folder (`dataset.text.builder.build_mlm_dataset`)."""
    build_mlm_dataset(options_from_args(parse_args(argv)))


if __name__ == "__main__":
    run_cli(main)
