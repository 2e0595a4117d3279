"""Build an extractive question answering dataset from SQuAD v1.1 / v2.0 JSON for `arch=bert_qa`.

    python dataset/build_qa_dataset.py --train-files train-v1.1.json --validation-files dev-v1.1.json \
        --tokenizer data/wiki-mlm/tokenizer --max-seq-length 384 --doc-stride 128 --output-dir data/squad

Each question becomes one row per window of its context: `[CLS] question [SEP] context
window [SEP]` (question cut to `--max-query-length` tokens). Windows hold as many context
tokens as fit and start `--doc-stride` tokens apart (BERT's `run_squad.py` meaning: the
step between windows, so consecutive windows overlap by the window length minus the
stride), the last one ending at the context's end. An answer's character span becomes the
tokens that cover it in every window that holds it whole; other windows, and questions
marked `is_impossible` (v2.0), point at [CLS] (position 0). Training answers whose text
is not at their `answer_start` are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see `--help`)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    add_common_args(parser, max_seq_length=384)
    parser.add_argument("--doc-stride", type=int, default=128, help="context tokens between window starts")
    parser.add_argument("--max-query-length", type=int, default=64, help="question tokens kept")
    parser.add_argument("--max-answer-length", type=int, default=30, help="longest predicted answer, in tokens")
    parser.add_argument("--n-best-size", type=int, default=20, help="start and end candidates per window")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Reject values of this builder's own flags that cannot work, naming the flag to change."""
    if args.max_query_length < 1 or args.max_seq_length - args.max_query_length - 3 < 8:
        raise UserError(f"--max-seq-length {args.max_seq_length} leaves under 8 context tokens after a question of "
                        f"--max-query-length {args.max_query_length}; raise the first or lower the second")
    if not 0 < args.doc_stride <= args.max_seq_length - args.max_query_length - 3:
        raise UserError(f"--doc-stride {args.doc_stride} must be positive and at most the context room "
                        f"({args.max_seq_length - args.max_query_length - 3}), or windows would skip text")
    if args.max_answer_length < 1 or args.n_best_size < 1:
        raise UserError("--max-answer-length and --n-best-size must be at least 1")


def read_squad(file: Path) -> list[dict]:
    """The questions of a SQuAD file: id, question, context, answers [{text, answer_start}], is_impossible."""
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{file} is not SQuAD JSON ({type(error).__name__}: {error}); expected {{'data': [...]}}") from None
    questions = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                questions.append({
                    "id": str(qa["id"]), "question": qa["question"], "context": paragraph["context"],
                    "answers": list(qa.get("answers", [])), "is_impossible": bool(qa.get("is_impossible", False)),
                })
    return questions


def window_starts(num_tokens: int, room: int, stride: int) -> list[int]:
    """First context token of each window: `stride` apart, the last reaching the end."""
    starts = [0]
    while starts[-1] + room < num_tokens:
        starts.append(starts[-1] + stride)
    return starts


def token_span(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int] | None:
    """(first, last) context token covering characters [start_char, end_char), or None."""
    first = next((i for i, (s, e) in enumerate(offsets) if e > start_char), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end_char), None)
    if first is None or last is None or last < first:
        return None
    return first, last


class _Rows:
    """The rows of one split as they are made."""

    def __init__(self):
        self.ids, self.types, self.offsets, self.starts, self.ends, self.examples = [], [], [], [], [], []


def encode_question(question: dict, index: int, choice: TokenizerChoice, args: argparse.Namespace, rows: _Rows,
                    train: bool) -> bool:
    """Append the windows of one question to `rows`; False when its answer cannot be located (skipped)."""
    tokenizer, special = choice.tokenizer, choice.special_ids
    query = tokenizer.encode(question["question"], add_special_tokens=False).ids[: args.max_query_length]
    context = tokenizer.encode(question["context"], add_special_tokens=False)
    span = None
    if train and not question["is_impossible"]:
        if not question["answers"]:
            return False
        answer = question["answers"][0]
        start_char = int(answer["answer_start"])
        end_char = start_char + len(answer["text"])
        if question["context"][start_char:end_char] != answer["text"]:
            return False
        span = token_span(context.offsets, start_char, end_char)
        if span is None:
            return False
    room = args.max_seq_length - len(query) - 3
    for first in window_starts(len(context.ids), room, args.doc_stride):
        last = min(first + room, len(context.ids))  # exclusive
        head = [special["[CLS]"], *query, special["[SEP]"]]
        rows.ids.append([*head, *context.ids[first:last], special["[SEP]"]])
        rows.types.append([0] * len(head) + [1] * (last - first + 1))
        rows.offsets.append([(-1, -1)] * len(head) + list(context.offsets[first:last]) + [(-1, -1)])
        inside = span is not None and first <= span[0] and span[1] < last
        rows.starts.append(len(head) + span[0] - first if inside else 0)
        rows.ends.append(len(head) + span[1] - first if inside else 0)
        rows.examples.append(index)
    return True


def build_split(questions: list[dict], choice: TokenizerChoice, args: argparse.Namespace,
                train: bool) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of one split and the number of skipped questions."""
    rows, skipped = _Rows(), 0
    for index, question in enumerate(questions):
        skipped += not encode_question(question, index, choice, args, rows, train)
    seq_len = args.max_seq_length
    offsets = np.full((len(rows.ids), seq_len, 2), -1, dtype=np.int32)
    for row, spans in enumerate(rows.offsets):
        offsets[row, : len(spans)] = spans
    vocab_size = choice.tokenizer.get_vocab_size(with_added_tokens=True)
    arrays = {
        "input_ids": padded(rows.ids, seq_len, choice.special_ids["[PAD]"], id_dtype(vocab_size)),
        "token_type_ids": padded(rows.types, seq_len, 0, np.int8),
        "example_index": np.array(rows.examples, dtype=np.int32),
        "start_positions": np.array(rows.starts, dtype=np.int32),
        "end_positions": np.array(rows.ends, dtype=np.int32),
        "offsets": offsets,
    }
    return arrays, skipped


def main(argv: list[str] | None = None) -> None:
    """Read the files, cut contexts into windows, and write the dataset folder atomically."""
    args = parse_args(argv)
    common = common_options(args)
    common.check()
    check_args(args)
    questions = read_sets(common, read_squad, "questions")
    choice = load_tokenizer(args.tokenizer)
    splits = {}
    for name, split in questions.items():
        arrays, skipped = build_split(split, choice, args, train=name == TRAIN)
        if skipped:
            print(f"note: skipped {skipped} of {len(split)} {name} questions whose answer text is not at its answer_start")
        examples = None if name == TRAIN else [
            {"id": q["id"], "context": q["context"], "answers": [a["text"] for a in q["answers"]],
             "is_impossible": q["is_impossible"]} for q in split]
        splits[name] = (arrays, examples, len(split))
    version_2 = any(q["is_impossible"] for split in questions.values() for q in split)
    options = {"max_answer_length": args.max_answer_length, "n_best_size": args.n_best_size,
               "version_2_with_negative": version_2, "doc_stride": args.doc_stride}
    write_dataset(common, choice, "question_answering", [], splits, options)


if __name__ == "__main__":
    run_cli(main)
