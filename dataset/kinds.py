"""Data kinds by name: the one place that lists the dataset families the engine reads.

An architecture names the kind it reads (`ArchPlugin.data_kind`). Adding a data kind is
its family folder (`dataset/<family>/`: format, loader, builder) plus one entry here.
"""

from __future__ import annotations

from pathlib import Path

from core.batching import BatchLayout
from core.errors import ConfigError
from dataset.puzzles import loader as puzzles
from dataset.stream import DataKind, EvalBatches, TrainStream
from dataset.tasks import loader as tasks
from dataset.tasks.format import load_task_metadata
from dataset.text import loader as text
from dataset.text.format import load_mlm_metadata, resolve_mlm_paths


def _puzzle_train_stream(paths, _options, seed, layout: BatchLayout) -> TrainStream:
    return puzzles.PuzzleTrainStream(paths, seed, layout.global_batch_size, layout.rank, layout.world_size)


def _puzzle_eval_batches(paths, _options, _seed, layout: BatchLayout) -> EvalBatches:
    return puzzles.iter_puzzle_eval_batches(paths, layout.global_batch_size, layout.rank, layout.world_size)


def _puzzle_evaluators(paths: list[str]) -> list[dict]:
    """ARC voting for ARC datasets (they carry `test_puzzles.json`), nothing otherwise."""
    return [{"name": "arc"}] if (Path(paths[0]) / "test_puzzles.json").is_file() else []


def _mlm_train_stream(paths, options: text.MLMDataOptions, seed, layout: BatchLayout) -> TrainStream:
    return text.MLMTrainStream(paths, seed, layout.global_batch_size, layout.rank, layout.world_size, options.masking,
                               options.trim_padding_to_multiple)


def _mlm_eval_batches(paths, options: text.MLMDataOptions, seed, layout: BatchLayout) -> EvalBatches:
    return text.iter_mlm_eval_batches(paths, layout.global_batch_size, layout.rank, layout.world_size,
                                      options.masking, seed)


def _task_train_stream(paths, options: tasks.TaskDataOptions, seed, layout: BatchLayout) -> TrainStream:
    return tasks.TaskTrainStream(paths, options, seed, layout.global_batch_size, layout.rank, layout.world_size)


def _task_eval_batches(paths, options: tasks.TaskDataOptions, _seed, layout: BatchLayout) -> EvalBatches:
    return tasks.iter_task_eval_batches(paths, options, layout.global_batch_size, layout.rank, layout.world_size)


TASK_EVALUATORS = {
    "classification": "classification", "regression": "classification",
    "token_classification": "ner", "question_answering": "squad",
}
"""The evaluator each fine-tuning task is scored with."""


def _task_evaluators(paths: list[str]) -> list[dict]:
    """The task's benchmark metrics, with predictions written next to the run."""
    return [{"name": TASK_EVALUATORS[load_task_metadata(paths[:1]).task]}]


DATA_KINDS: dict[str, DataKind] = {
    "puzzle": DataKind(
        name="puzzle", options_class=puzzles.PuzzleDataOptions,
        load_metadata=lambda paths: puzzles.load_puzzle_metadata(paths, "train"),
        train_stream=_puzzle_train_stream, eval_batches=_puzzle_eval_batches, default_evaluators=_puzzle_evaluators,
    ),
    "mlm": DataKind(
        name="mlm", options_class=text.MLMDataOptions, load_metadata=load_mlm_metadata,
        train_stream=_mlm_train_stream, eval_batches=_mlm_eval_batches, default_evaluators=lambda paths: [],
        resolve_paths=resolve_mlm_paths,
    ),
    "task": DataKind(
        name="task", options_class=tasks.TaskDataOptions, load_metadata=load_task_metadata,
        train_stream=_task_train_stream, eval_batches=_task_eval_batches, default_evaluators=_task_evaluators,
    ),
}


def get_data_kind(name: str) -> DataKind:
    """The data kind called `name`."""
    if name not in DATA_KINDS:
        raise ConfigError(f"unknown data kind '{name}'; known: {', '.join(sorted(DATA_KINDS))}")
    return DATA_KINDS[name]
