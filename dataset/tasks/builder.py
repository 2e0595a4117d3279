"""What the three fine-tuning builders share: the common flags and their typed options
(`TaskBuildOptions`), the tokenizer (reused from a pretraining dataset, a checkpoint, a
`transformers` folder, a `tokenizer.json` or a BERT `vocab.txt`, through
`dataset.text.tokenizer.load_tokenizer`), evaluation-set names, row
padding and the atomic write of the dataset folder."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from core.errors import UserError
from core.files import atomic_folder, write_json
from dataset.tasks.format import TRAIN, TaskDatasetMetadata, write_split
from dataset.text.tokenizer import TokenizerChoice, save_tokenizer

T = TypeVar("T")


def add_common_args(parser: argparse.ArgumentParser, max_seq_length: int) -> None:
    """--train-files, --validation-files, --validation-names, --tokenizer, --max-seq-length,
    --output-dir, --overwrite."""
    parser.add_argument("--train-files", nargs="+", required=True, help="training files (concatenated)")
    parser.add_argument("--validation-files", nargs="+", default=[],
                        help="evaluation files; each is its own evaluation set, named after the file")
    parser.add_argument("--validation-names", nargs="+", default=None,
                        help="names of the evaluation sets (default: the file names without extension)")
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer.json, a folder holding one (a dataset's tokenizer/, a checkpoint's, a "
                             "transformers model) or a BERT vocab.txt; use the starting checkpoint's")
    parser.add_argument("--max-seq-length", type=int, default=max_seq_length, help="tokens per row, specials included")
    parser.add_argument("--output-dir", required=True, help="dataset folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output-dir")


@dataclass(frozen=True)
class TaskBuildOptions:
    """The options every fine-tuning builder shares; each field is the flag of the same name."""

    train_files: Sequence[str]
    """Training files (concatenated)."""
    tokenizer: str
    """A tokenizer.json, a folder holding one, or a BERT vocab.txt (`load_tokenizer`)."""
    max_seq_length: int
    """Tokens per row, specials included."""
    output_dir: str
    """Dataset folder to create."""
    validation_files: Sequence[str] = ()
    """Evaluation files; each is its own evaluation set."""
    validation_names: Sequence[str] | None = None
    """Names of the evaluation sets (None: the file names without extension)."""
    overwrite: bool = False
    """Replace an existing `output_dir`."""

    def check(self) -> None:
        """Reject values that cannot work, naming the flag to change."""
        if self.max_seq_length < 8:
            raise UserError(f"--max-seq-length {self.max_seq_length} is too short; use 8 or more (BERT uses 128)")
        for file in [*self.train_files, *self.validation_files]:
            if not Path(file).is_file():
                raise UserError(f"input file {file} does not exist")
        if Path(self.output_dir).exists() and not self.overwrite:
            raise UserError(f"output folder {self.output_dir} already exists; choose another --output-dir or pass --overwrite")


def common_options(args: argparse.Namespace) -> TaskBuildOptions:
    """The shared options from flags parsed with `add_common_args`."""
    return TaskBuildOptions(
        train_files=tuple(args.train_files), tokenizer=args.tokenizer, max_seq_length=args.max_seq_length,
        output_dir=args.output_dir, validation_files=tuple(args.validation_files),
        validation_names=None if args.validation_names is None else tuple(args.validation_names),
        overwrite=args.overwrite,
    )


def read_sets(options: TaskBuildOptions, read_file: Callable[[Path], Iterable[T]], noun: str) -> dict[str, list[T]]:
    """The items of every set: `train` from `--train-files`, one evaluation set per
    `--validation-files` file (named by `eval_set_names`); an empty training set is refused."""
    names = eval_set_names(options.validation_files, options.validation_names)
    sources = {TRAIN: options.train_files, **{name: [file] for name, file in zip(names, options.validation_files)}}
    items = {name: [item for file in files for item in read_file(Path(file))] for name, files in sources.items()}
    if not items[TRAIN]:
        raise UserError(f"--train-files {' '.join(options.train_files)} hold no {noun}")
    return items


def eval_set_names(files: Sequence[str], names: Sequence[str] | None) -> list[str]:
    """One name per validation file: `--validation-names`, or the file names without extension."""
    if names is not None and len(names) != len(files):
        raise UserError(f"--validation-names gives {len(names)} names for {len(files)} --validation-files; give one each")
    chosen = list(names) if names is not None else [Path(file).name.split(".")[0] for file in files]
    for name in chosen:
        if name == TRAIN or not name or "/" in name or name.startswith("."):
            raise UserError(f"evaluation set name {name!r} is not allowed; pass --validation-names")
    if len(set(chosen)) != len(chosen):
        raise UserError(f"two --validation-files have the same name ({', '.join(chosen)}); pass --validation-names")
    return chosen


def padded(rows: Sequence[Sequence[int]], seq_len: int, fill: int, dtype) -> np.ndarray:
    """Rows of at most `seq_len` values -> (n, seq_len), filled with `fill`."""
    out = np.full((len(rows), seq_len), fill, dtype=dtype)
    for index, row in enumerate(rows):
        out[index, : len(row)] = row
    return out


def write_dataset(common: TaskBuildOptions, choice: TokenizerChoice, task: str, labels: list[str],
                  splits: dict[str, tuple[dict[str, np.ndarray], list[dict[str, Any]] | None, int]],
                  options: dict[str, Any] | None = None) -> TaskDatasetMetadata:
    """Write the tokenizer, every split (arrays, examples, number of examples) and
    `dataset.json` into `--output-dir`, atomically; returns the metadata."""
    ids = choice.special_ids
    with atomic_folder(common.output_dir, overwrite=common.overwrite) as folder:
        vocab_sha256 = save_tokenizer(choice, folder / "tokenizer", common.max_seq_length)
        for name, (arrays, examples, _) in splits.items():
            write_split(folder / name, arrays, examples)
        metadata = TaskDatasetMetadata(
            task=task, labels=labels, vocab_size=choice.tokenizer.get_vocab_size(with_added_tokens=True),
            seq_len=common.max_seq_length, pad_id=ids["[PAD]"], cls_id=ids["[CLS]"], sep_id=ids["[SEP]"],
            tokenizer=choice.kind, lowercase=choice.lowercase, vocab_sha256=vocab_sha256,
            eval_sets=[name for name in splits if name != TRAIN],
            num_rows={name: len(arrays["input_ids"]) for name, (arrays, _, _) in splits.items()},
            num_examples={name: count for name, (_, _, count) in splits.items()}, options=options or {},
        )
        write_json(folder / "dataset.json", metadata.model_dump())
    for name in splits:
        print(f"{name}: {metadata.num_examples[name]} examples, {metadata.num_rows[name]} rows")
    print(f"{task} dataset, {len(labels)} labels, vocabulary {metadata.vocab_size} ({choice.kind}) -> {common.output_dir}")
    return metadata
