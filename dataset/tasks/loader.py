"""Fine-tuning datasets for the training loop: the training stream and the evaluation
batches (the contract is `dataset.stream`).

Batches are padded only to the longest row of the global batch (rounded up to
`trim_padding_to_multiple`): short single sentences then cost what their tokens cost. A
training rank cuts its batch after its own rows' longest and the loop widens every rank's
to the widest (`column_padding`), so no rank reads another's rows; an evaluation batch is
cut to its global batch's width directly. Every batch has
`input_ids`, `token_type_ids` (int64 (B, L)), `attention_mask` (bool (B, L)), `row_index`
(int64 (B,), the row in its split, -1 for the rows that fill the last evaluation batch)
and `example_index` (int64 (B,)), plus the task's labels: `labels` (int64 (B,) classes,
float32 (B,) regression targets, or int64 (B, L) tags with -100 = not scored) or
`start_positions`/`end_positions` (int64 (B,), 0 = no answer in this window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core.batching import rank_rows
from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from dataset.stream import Batch, EpochOrder, EvalBatches, token_column_padding, trimmed_width
from dataset.tasks.format import TRAIN, TaskDatasetMetadata, load_split, load_task_metadata


class TaskDataOptions(BaseModel):
    """The `data:` section of a fine-tuning run (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid")

    masking: None = None
    """Masking is for pretraining; the fine-tuning presets set bert.yaml's section to null."""
    trim_padding_to_multiple: int | None = Field(default=8, gt=0)
    """Batches drop their trailing all-padding columns (as many as every row of the global
    batch has), keeping a multiple of this many; None always serves the full sequence length."""


def _width(ids: np.ndarray, pad_id: int, options: TaskDataOptions) -> int:
    """Columns a batch of `ids` keeps (all of them when trimming is off)."""
    multiple = options.trim_padding_to_multiple
    return ids.shape[1] if multiple is None else trimmed_width(ids, pad_id, multiple)


def _take(arrays: dict[str, np.ndarray], rows: np.ndarray, ids: np.ndarray, width: int,
          metadata: TaskDatasetMetadata) -> Batch:
    """The model's batch for split rows `rows` (-1 = a filler row without labels), whose
    token ids `ids` were already read, `width` columns."""
    real = rows >= 0
    safe = np.where(real, rows, 0)  # (b,)
    input_ids = np.asarray(ids[:, :width], dtype=np.int64)  # (b, W)
    input_ids[~real] = metadata.pad_id
    input_ids[~real, 0] = metadata.cls_id
    attention_mask = input_ids != metadata.pad_id  # (b, W)
    batch = {
        "input_ids": input_ids,
        "token_type_ids": np.asarray(arrays["token_type_ids"][safe, :width], dtype=np.int64) * attention_mask,
        "attention_mask": attention_mask,
        "row_index": rows.astype(np.int64),  # fillers are -1 already
        "example_index": np.where(real, np.asarray(arrays["example_index"][safe]), -1).astype(np.int64),
    }
    if metadata.task == "classification":
        batch["labels"] = np.where(real, np.asarray(arrays["labels"][safe]), IGNORE_LABEL_ID).astype(np.int64)
    elif metadata.task == "regression":
        batch["labels"] = np.where(real, np.asarray(arrays["labels"][safe]), 0.0).astype(np.float32)
    elif metadata.task == "token_classification":
        labels = np.asarray(arrays["labels"][safe, :width], dtype=np.int64)  # (b, W)
        labels[~real] = IGNORE_LABEL_ID
        batch["labels"] = labels
    else:
        for key in ("start_positions", "end_positions"):
            batch[key] = np.where(real, np.asarray(arrays[key][safe]), IGNORE_LABEL_ID).astype(np.int64)
    return batch


class TaskTrainStream:
    """The endless, seeded stream of training batches of a fine-tuning dataset (a `TrainStream`).

    Epoch e visits every training row in the order of `EpochOrder(seed, ...)`;
    global batches are consecutive chunks of that stream, spanning epochs. The state is
    the absolute stream position, so resuming needs no replay; each rank orders and reads
    only its slice of the global batch, cut after its own longest row (`column_padding`
    says how the loop widens it to the step's width), so 1 and N processes train on the
    same batches.
    """

    def __init__(self, paths: list[str], options: TaskDataOptions, seed: int, global_batch_size: int, rank: int,
                 world_size: int):
        self._rows_of_rank = rank_rows(global_batch_size, rank, world_size)
        self.metadata = load_task_metadata(paths)
        self.arrays = load_split(paths[0], self.metadata, TRAIN)
        self.num_rows = self.metadata.num_rows[TRAIN]
        if self.num_rows == 0:
            raise UserError(f"the train split of {paths[0]} has no rows; rebuild the dataset with --train-files")
        self.options = options
        self.column_padding = (None if options.trim_padding_to_multiple is None
                               else token_column_padding(self.metadata.pad_id))
        self.global_batch_size = global_batch_size
        self.examples_per_epoch = float(self.num_rows)
        self._position = 0
        self._order = EpochOrder(seed, self.num_rows)

    def next_batch(self) -> Batch:
        """This rank's slice of the next global batch, cut after its own longest row."""
        first, stop = self._rows_of_rank
        rows = self._order.rows(self._position + first, stop - first)  # (b,)
        self._position += self.global_batch_size
        ids = np.asarray(self.arrays["input_ids"][rows])  # (b, L), read once for the width and the batch
        return _take(self.arrays, rows, ids, _width(ids, self.metadata.pad_id, self.options), self.metadata)

    def state_dict(self) -> dict[str, int]:
        """Rows served so far (all ranks together), and the dataset size as a check."""
        return {"position": self._position, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after the last batch served before `state_dict` was taken."""
        if int(state["num_rows"]) != self.num_rows:
            raise UserError(f"the checkpoint's data position is for {state['num_rows']} training rows, the dataset "
                            f"has {self.num_rows}; resume with the same data_paths")
        self._position = int(state["position"])


def iter_task_eval_batches(paths: list[str], options: TaskDataOptions, global_batch_size: int, rank: int,
                           world_size: int) -> EvalBatches:
    """Every evaluation set once, in order, as (set name, this rank's slice of a global batch).

    The last global batch of a set is filled with rows whose `row_index` is -1 and whose
    labels are ignored.
    """
    first, stop = rank_rows(global_batch_size, rank, world_size)
    metadata = load_task_metadata(paths)
    if not metadata.eval_sets:
        raise UserError(f"{paths[0]} has no evaluation set; rebuild it with --validation-files")
    return _eval_batches(Path(paths[0]), metadata, options, global_batch_size, first, stop)


def _eval_batches(root: Path, metadata: TaskDatasetMetadata, options: TaskDataOptions, global_batch_size: int,
                  first: int, stop: int) -> EvalBatches:
    for set_name in metadata.eval_sets:
        arrays = load_split(root, metadata, set_name)
        num_rows = metadata.num_rows[set_name]
        for start in range(0, num_rows, global_batch_size):
            global_rows = start + np.arange(global_batch_size)  # (B,)
            global_rows[global_rows >= num_rows] = -1
            real = global_rows >= 0
            ids = np.asarray(arrays["input_ids"][np.where(real, global_rows, 0)])  # (B, L); fillers read row 0
            width = _width(ids[real], metadata.pad_id, options)
            yield set_name, _take(arrays, global_rows[first:stop], ids[first:stop], width, metadata)
