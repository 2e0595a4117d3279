"""Build a sequence classification or regression dataset (GLUE-style) for `arch=bert_cls`.

    python dataset/build_text_cls_dataset.py --train-files data/sst2/train.tsv \
        --validation-files data/sst2/dev.tsv --text-columns sentence --label-column label \
        --tokenizer data/wiki-mlm/tokenizer --max-seq-length 128 --output-dir data/sst2-cls
    # pairs: --text-columns sentence1 sentence2 (rows become [CLS] a [SEP] b [SEP], token types 0/1)
    # CoLA (no header): --no-header --text-columns 3 --label-column 1
    # MNLI: --validation-files dev_matched.tsv dev_mismatched.tsv --label-column gold_label

Inputs are `.tsv` (GLUE's layout: tab-separated, quotes are plain characters), `.csv` or
`.jsonl` (one object per line). Columns are named by the header (or by 0-based index,
always possible and the only way with `--no-header`). Labels: strings mapped to ids in
sorted order (numeric order when they are all integers; `--labels` fixes another) and
stored in dataset.json; with `--label-type auto`, numbers with a decimal point (STS-B's
scores) make a regression. Texts longer than `--max-seq-length` are cut, the longer of
a pair first. Each validation file is an evaluation set named after the file.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np

from core.cli import argument_parser
from core.errors import UserError, run_cli
from dataset.tasks.builder import (
    add_common_args,
    common_options,
    padded,
    read_sets,
    write_dataset,
)
from dataset.tasks.format import TRAIN
from dataset.text.tokenizer import TokenizerChoice, id_dtype, load_tokenizer

Row = tuple[list[str], str]
"""(texts, label) of one line."""
FLOAT_LABEL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)$")
INT_LABEL = re.compile(r"^[+-]?\d+$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see `--help`)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    add_common_args(parser, max_seq_length=128)
    parser.add_argument("--text-columns", nargs="+", default=["sentence"],
                        help="one column (single sentences) or two (pairs): names or 0-based indices")
    parser.add_argument("--label-column", default="label", help="column of the label: name or 0-based index")
    parser.add_argument("--header", action=argparse.BooleanOptionalAction, default=True,
                        help="whether .tsv/.csv files start with a header line")
    parser.add_argument("--label-type", choices=("auto", "class", "regression"), default="auto",
                        help="auto: regression when the labels are decimal numbers")
    parser.add_argument("--labels", nargs="+", default=None, help="class names in id order (default: sorted)")
    parser.add_argument("--skip-short-lines", action="store_true",
                        help="skip (and count) lines with too few columns instead of stopping (GLUE's QQP has some)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values of this builder's own flags that cannot work, naming the flag to change."""
    if len(args.text_columns) not in (1, 2):
        raise UserError(f"--text-columns takes one or two columns, got {len(args.text_columns)}")
    if args.labels is not None and len(set(args.labels)) != len(args.labels):
        raise UserError("--labels lists a class twice")


# ------------------------------------------------------------------------------ reading


def _column(spec: str, header: list[str] | None, file: Path) -> int:
    """The index of a column given by name (in the header) or by 0-based index."""
    if header is not None and spec in header:
        return header.index(spec)
    if spec.isdigit():
        return int(spec)
    known = f"; its columns are: {', '.join(header)}" if header else " (use 0-based indices with --no-header)"
    raise UserError(f"{file} has no column {spec!r}{known}")


def _records(file: Path, header: bool) -> tuple[list[str] | None, list[tuple[int, list[str] | dict]]]:
    """(header, [(line number, fields)]) of a .tsv/.csv file, or (None, [(line, object)]) of a .jsonl."""
    suffix = file.suffix.lower()
    with open(file, encoding="utf-8-sig", newline="") as handle:  # -sig: MRPC's files start with a BOM
        if suffix == ".jsonl":
            records = []
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        records.append((number, json.loads(line)))
                    except json.JSONDecodeError as error:
                        raise UserError(f"{file}:{number} is not JSON ({error.msg})") from None
            return None, records
        if suffix not in (".tsv", ".csv"):
            raise UserError(f"{file}: unknown format {suffix!r}; use .tsv, .csv or .jsonl")
        # GLUE's TSVs contain unbalanced quotes inside sentences: quotes are text there.
        reader = (csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv"
                  else csv.reader(handle))
        rows = [(number, fields) for number, fields in enumerate(reader, start=1) if fields]
    if header and rows:
        return rows[0][1], rows[1:]
    return None, rows


def read_rows(file: Path, args: argparse.Namespace) -> list[Row]:
    """(texts, label) of every line of one input file."""
    header, records = _records(file, args.header)
    rows = []
    if header is None and records and isinstance(records[0][1], dict):
        for number, record in records:
            missing = [key for key in [*args.text_columns, args.label_column] if key not in record]
            if missing:
                raise UserError(f"{file}:{number} has no field {missing[0]!r}; check --text-columns/--label-column")
            rows.append(([str(record[key]) for key in args.text_columns], str(record[args.label_column])))
        return rows
    text_columns = [_column(spec, header, file) for spec in args.text_columns]
    label_column = _column(args.label_column, header, file)
    needed = max(*text_columns, label_column) + 1
    short = [number for number, fields in records if len(fields) < needed]
    if short and args.skip_short_lines:
        print(f"note: skipped {len(short)} line(s) of {file} with fewer than {needed} columns (first: line {short[0]})")
        records = [(number, fields) for number, fields in records if len(fields) >= needed]
    for number, fields in records:
        if len(fields) < needed:
            raise UserError(f"{file}:{number} has {len(fields)} columns, {needed} needed; is it the right file "
                            "and --header setting?")
        label = fields[label_column].strip()
        if not label:
            raise UserError(f"{file}:{number} has no label in column {args.label_column!r} (test files have none)")
        rows.append(([fields[column] for column in text_columns], label))
    return rows


def label_scheme(all_labels: list[str], args: argparse.Namespace) -> tuple[str, list[str]]:
    """(task, class names in id order) from every label of every file."""
    distinct = sorted(set(all_labels))
    numeric = all(INT_LABEL.match(label) or FLOAT_LABEL.match(label) for label in distinct)
    regression = args.label_type == "regression" or (
        args.label_type == "auto" and numeric and any(FLOAT_LABEL.match(label) for label in distinct))
    if regression:
        if not numeric:
            bad = next(label for label in distinct if not (INT_LABEL.match(label) or FLOAT_LABEL.match(label)))
            raise UserError(f"--label-type regression, but label {bad!r} is not a number")
        return "regression", []
    if args.labels is not None:
        unknown = sorted(set(distinct) - set(args.labels))
        if unknown:
            raise UserError(f"labels {unknown[:3]} are not in --labels {' '.join(args.labels)}")
        return "classification", list(args.labels)
    if all(INT_LABEL.match(label) for label in distinct):
        distinct.sort(key=int)
    if len(distinct) < 2:
        raise UserError(f"the files hold only the label {distinct}; a classifier needs two or more classes")
    return "classification", distinct


# ----------------------------------------------------------------------------- encoding


def encode_rows(rows: list[Row], choice: TokenizerChoice, seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(input_ids, token_type_ids, rows cut to fit) of `[CLS] a [SEP] (b [SEP])` rows."""
    tokenizer = choice.tokenizer
    tokenizer.enable_truncation(seq_len, strategy="longest_first")
    try:
        inputs = [texts[0] if len(texts) == 1 else (texts[0], texts[1]) for texts, _ in rows]
        encodings = tokenizer.encode_batch(inputs)
    finally:
        tokenizer.no_truncation()
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    input_ids = padded([e.ids for e in encodings], seq_len, choice.special_ids["[PAD]"], id_dtype(vocab_size))
    token_type_ids = padded([e.type_ids for e in encodings], seq_len, 0, np.int8)
    return input_ids, token_type_ids, sum(bool(e.overflowing) for e in encodings)


def build_split(rows: list[Row], task: str, labels: list[str], choice: TokenizerChoice, seq_len: int,
                with_examples: bool) -> tuple[dict[str, np.ndarray], list[dict] | None, int]:
    """Arrays (and, for evaluation sets, examples) of one split."""
    input_ids, token_type_ids, cut = encode_rows(rows, choice, seq_len)
    if task == "regression":
        label_array = np.array([float(label) for _, label in rows], dtype=np.float32)
    else:
        index = {label: i for i, label in enumerate(labels)}
        label_array = np.array([index[label] for _, label in rows], dtype=np.int32)
    arrays = {"input_ids": input_ids, "token_type_ids": token_type_ids,
              "example_index": np.arange(len(rows), dtype=np.int32), "labels": label_array}
    examples = [{"index": i, "texts": texts, "label": label} for i, (texts, label) in enumerate(rows)]
    if cut:
        print(f"note: {cut} of {len(rows)} rows were longer than --max-seq-length {seq_len} and were cut")
    return arrays, examples if with_examples else None, len(rows)


def main(argv: list[str] | None = None) -> None:
    """Read the files, fix the labels, tokenise, and write the dataset folder atomically."""
    args = parse_args(argv)
    common = common_options(args)
    common.check()
    check_args(args)
    rows = read_sets(common, lambda file: read_rows(file, args), "rows")
    task, labels = label_scheme([label for split in rows.values() for _, label in split], args)
    choice = load_tokenizer(args.tokenizer)
    splits = {name: build_split(split, task, labels, choice, args.max_seq_length, name != TRAIN)
              for name, split in rows.items()}
    write_dataset(common, choice, task, labels, splits, {"num_texts": len(args.text_columns)})


if __name__ == "__main__":
    run_cli(main)
