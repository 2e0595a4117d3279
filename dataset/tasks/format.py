"""The on-disk format of fine-tuning datasets (`dataset/build_{text_cls,token_cls,qa}_dataset.py`):

    <root>/dataset.json                      `TaskDatasetMetadata`
    <root>/tokenizer/                        tokenizer.json, vocab.txt, ... (AutoTokenizer loads it)
    <root>/<split>/input_ids.npy             int32 or uint16 [n, seq_len], padded with pad_id
    <root>/<split>/token_type_ids.npy        int8 [n, seq_len]: 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`
    <root>/<split>/labels.npy                classification: int32 [n]; regression: float32 [n];
                                             token classification: int16 [n, seq_len], -100 = not scored
    <root>/<split>/start_positions.npy       question answering: int32 [n], token index (0 = [CLS]: no answer)
    <root>/<split>/end_positions.npy         question answering: int32 [n]
    <root>/<split>/example_index.npy         int32 [n]: the example (line, sentence, question) of each row
    <root>/<split>/word_ids.npy              token classification: int32 [n, seq_len], word index at a
                                             word's first piece, -1 elsewhere
    <root>/<split>/offsets.npy               question answering: int32 [n, seq_len, 2], character span of
                                             each context token in its context, -1 elsewhere
    <root>/<split>/examples.jsonl            one JSON object per example (evaluation sets): the text
                                             and gold answer the evaluators score against

`<split>` is `train` or one of `eval_sets` (one per `--validation-files` file, named after
it). A row is one model input: a sentence (pair), a sentence of tokens, or one window of
a question's context.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import UserError
from core.files import read_once
from dataset.stream import open_npy
from dataset.text.format import TokenIdFields, TokenizerFields

TRAIN = "train"
Task = Literal["classification", "regression", "token_classification", "question_answering"]
BUILDER_HINT = ("build one with dataset/build_text_cls_dataset.py, dataset/build_token_cls_dataset.py "
                "or dataset/build_qa_dataset.py")


class _TaskFields(BaseModel):
    task: Task
    """What the labels are: a class per row, a number per row, a tag per word, an answer span."""
    labels: list[str]
    """Class names (classification) or tags (token classification) by id; empty otherwise."""


# pydantic puts the fields of the last base first: the bases' order keeps the key order of
# dataset.json as it has always been written.
class TaskDatasetMetadata(TokenizerFields, TokenIdFields, _TaskFields):
    """`dataset.json` of a fine-tuning dataset folder (a row is one model input)."""

    model_config = ConfigDict(extra="forbid")

    eval_sets: list[str]
    """Names of the evaluation splits, in `--validation-files` order."""
    num_rows: dict[str, int]
    """Rows per split."""
    num_examples: dict[str, int]
    """Examples per split (rows of a question answering split are windows of fewer questions)."""
    options: dict[str, Any] = {}
    """Builder options the evaluators need (e.g. `max_answer_length`, `version_2_with_negative`)."""

    @property
    def num_labels(self) -> int:
        """Outputs of the head: classes, tags, 1 for regression, 2 (start, end) for answers."""
        if self.task == "regression":
            return 1
        if self.task == "question_answering":
            return 2
        return len(self.labels)


def split_arrays(task: str) -> tuple[str, ...]:
    """The arrays every split of a `task` dataset holds."""
    per_task = {
        "classification": ("labels",),
        "regression": ("labels",),
        "token_classification": ("labels", "word_ids"),
        "question_answering": ("start_positions", "end_positions", "offsets"),
    }
    return ("input_ids", "token_type_ids", "example_index", *per_task[task])


def read_task_metadata(path: str | Path) -> TaskDatasetMetadata:
    """The metadata of one dataset folder; `UserError` when it is not a fine-tuning dataset."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"dataset folder {path} does not exist; {BUILDER_HINT}")
    file = root / "dataset.json"
    if not file.is_file():
        raise UserError(f"{path} is not a fine-tuning dataset (no dataset.json at its root); {BUILDER_HINT}")
    try:
        raw = json.loads(read_once(file))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{file} is not JSON ({error}); {BUILDER_HINT}") from None
    if isinstance(raw, dict) and "mask_prob" in raw:
        raise UserError(f"{path} is an MLM (pretraining) dataset; fine-tuning archs read a task dataset: {BUILDER_HINT}")
    try:
        return TaskDatasetMetadata.model_validate(raw)
    except ValidationError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{file} is not fine-tuning dataset metadata ({first}); {BUILDER_HINT}") from None


def load_task_metadata(paths: list[str]) -> TaskDatasetMetadata:
    """The metadata of the one dataset folder a fine-tuning run reads."""
    if not paths:
        raise UserError("no dataset folder given; set data_paths")
    if len(paths) > 1:
        raise UserError(f"fine-tuning reads one dataset folder, got {len(paths)}; build one dataset from all files")
    return read_task_metadata(paths[0])


def load_split(root: str | Path, metadata: TaskDatasetMetadata, split: str) -> dict[str, np.ndarray]:
    """The arrays of one split, memory-mapped; a missing or misshapen file is a `UserError`."""
    folder = Path(root) / split
    arrays = {}
    for name in split_arrays(metadata.task):
        file = folder / f"{name}.npy"
        arrays[name] = open_npy(file)
        if len(arrays[name]) != metadata.num_rows[split]:
            raise UserError(f"{file} has {len(arrays[name])} rows, dataset.json says {metadata.num_rows[split]}; "
                            "the dataset is damaged, rebuild it")
    return arrays


def read_examples(root: str | Path, split: str) -> list[dict[str, Any]]:
    """The `examples.jsonl` of an evaluation split."""
    file = Path(root) / split / "examples.jsonl"
    if not file.is_file():
        raise UserError(f"{file} is missing; the dataset is incomplete, rebuild it")
    with open(file, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_split(folder: Path, arrays: dict[str, np.ndarray], examples: list[dict[str, Any]] | None) -> None:
    """Write one split's arrays (and, for evaluation sets, its examples) into `folder`."""
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(array))
    if examples is not None:
        with open(folder / "examples.jsonl", "w", encoding="utf-8") as handle:
            for example in examples:
                handle.write(json.dumps(example, ensure_ascii=False) + "\n")
