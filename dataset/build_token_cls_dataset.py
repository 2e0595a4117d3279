"""Build a token classification (NER) dataset from CoNLL-style files for `arch=bert_ner`.

    python dataset/build_token_cls_dataset.py --train-files train.conll --validation-files dev.conll \
        --tokenizer data/wiki-mlm/tokenizer --output-dir data/conll-ner

Input: one token per line with its tag in the last column (`--token-column`/`--tag-column`
choose others; CoNLL-2003's `EU NNP B-NP B-ORG` works as it comes), a blank line between
sentences, `-DOCSTART-` lines skipped. Tags are `O` or `B-`/`I-`/`E-`/`S-` plus a type:
IOB1, IOB2 and BIOES are all accepted and scored as the CoNLL script scores them. A
word's tag goes to its first word piece; the other pieces and the special tokens are not
scored (-100). Sentences longer than `--max-seq-length` pieces are cut: their last words
get no prediction (the evaluator counts them as `O`, so scores stay honest).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from core.cli import argument_parser
from core.constants import IGNORE_LABEL_ID
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

Sentence = tuple[list[str], list[str]]
"""(words, tags)."""
TAG = re.compile(r"^(O|[BIES]-.+)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see `--help`)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    add_common_args(parser, max_seq_length=128)
    parser.add_argument("--token-column", type=int, default=0, help="column of the word (0-based)")
    parser.add_argument("--tag-column", type=int, default=-1, help="column of the tag (0-based, -1 = last)")
    return parser.parse_args(argv)


def read_conll(file: Path, token_column: int, tag_column: int) -> list[Sentence]:
    """The sentences of a CoNLL file (whitespace-separated columns, blank line between sentences)."""
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    with open(file, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if words:
                    sentences.append((words, tags))
                words, tags = [], []
                continue
            try:
                word, tag = fields[token_column], fields[tag_column]
            except IndexError:
                raise UserError(f"{file}:{number} has {len(fields)} columns; check --token-column/--tag-column") from None
            if not TAG.match(tag):
                raise UserError(f"{file}:{number}: tag {tag!r} is not O or B-/I-/E-/S- plus a type (IOB1, IOB2 or BIOES)")
            words.append(word)
            tags.append(tag)
    if words:
        sentences.append((words, tags))
    return sentences


def encode_sentences(sentences: list[Sentence], labels: list[str], choice: TokenizerChoice,
                     seq_len: int) -> tuple[dict[str, np.ndarray], int]:
    """Arrays of one split, and how many sentences were cut."""
    tokenizer = choice.tokenizer
    tokenizer.enable_truncation(seq_len)
    try:
        encodings = tokenizer.encode_batch([words for words, _ in sentences], is_pretokenized=True)
    finally:
        tokenizer.no_truncation()
    index = {label: i for i, label in enumerate(labels)}
    label_rows, word_rows, cut = [], [], 0
    for (words, tags), encoding in zip(sentences, encodings):
        row_labels, row_words, previous = [], [], None
        for word in encoding.word_ids:
            first_piece = word is not None and word != previous
            row_labels.append(index[tags[word]] if first_piece else IGNORE_LABEL_ID)
            row_words.append(word if first_piece else -1)
            previous = word
        label_rows.append(row_labels)
        word_rows.append(row_words)
        cut += max(row_words, default=-1) + 1 < len(words)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    arrays = {
        "input_ids": padded([e.ids for e in encodings], seq_len, choice.special_ids["[PAD]"], id_dtype(vocab_size)),
        "token_type_ids": padded([e.type_ids for e in encodings], seq_len, 0, np.int8),
        "example_index": np.arange(len(sentences), dtype=np.int32),
        "labels": padded(label_rows, seq_len, IGNORE_LABEL_ID, np.int16),
        "word_ids": padded(word_rows, seq_len, -1, np.int32),
    }
    return arrays, cut


def main(argv: list[str] | None = None) -> None:
    """Read the files, collect the tags, tokenise, and write the dataset folder atomically."""
    args = parse_args(argv)
    common = common_options(args)
    common.check()
    sentences = read_sets(common, lambda file: read_conll(file, args.token_column, args.tag_column), "sentences")
    tags = {tag for split in sentences.values() for _, sentence_tags in split for tag in sentence_tags}
    labels = ["O", *sorted(tags - {"O"})]
    choice = load_tokenizer(args.tokenizer)
    splits = {}
    for name, split in sentences.items():
        arrays, cut = encode_sentences(split, labels, choice, args.max_seq_length)
        if cut:
            print(f"note: {cut} of {len(split)} {name} sentences were longer than --max-seq-length "
                  f"{args.max_seq_length} and were cut")
        examples = [{"words": words, "tags": sentence_tags} for words, sentence_tags in split] if name != TRAIN else None
        splits[name] = (arrays, examples, len(split))
    write_dataset(common, choice, "token_classification", labels, splits)


if __name__ == "__main__":
    run_cli(main)
