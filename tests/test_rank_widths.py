"""Trimmed training batches at O(local batch) per rank (issue 19): each rank cuts its batch
after its own longest row, the loop widens every rank's to the widest of the step, and
the ranks then hold exactly the slices of the batch one process serves, at the width one
process chooses from the whole global batch."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from core.constants import IGNORE_LABEL_ID
from dataset.stream import padded_width
from dataset.tasks.loader import TaskDataOptions, TaskTrainStream
from dataset.text.loader import MLMTrainStream
from dataset.text.masking import MaskingConfig
from tests import helpers
from tests.test_mlm_dataset import CLS, PAD, SEP, random_rows, write_dataset
from training.prefetch import widened

SEQ_LEN = 64
GLOBAL_BATCH = 12
NUM_STEPS = 8


def _shorten_rows(root: Path, longest: int) -> None:
    """Cut the train rows of an MLM dataset (4 to L tokens) to 4 to `longest`, in proportion."""
    for shard in (root / "train").glob("shard_?????.npy"):
        ids = np.load(shard)  # (n, L)
        lengths = 4 + ((ids != PAD).sum(axis=1) - 4) * (longest - 4) // (ids.shape[1] - 4)  # (n,)
        columns = np.arange(ids.shape[1])[None, :]
        ids[columns == lengths[:, None] - 1] = SEP
        ids[columns >= lengths[:, None]] = PAD
        np.save(shard, ids)


def _mlm_dataset(root: Path, rows: str) -> Path:
    """"mixed" (4-64 tokens: some batches hold a full row), "short" (4-40: none does) or
    "static" (mixed, with stored masks and NSP labels)."""
    write_dataset(root, 40, 0, seq_len=SEQ_LEN, static=rows == "static", nsp=rows == "static")
    if rows == "short":
        _shorten_rows(root, 40)
    return root


def _task_dataset(root: Path, seed: int = 0) -> Path:
    """A token-classification dataset of 40 rows of 4-64 tokens (labels -100 past each row)."""
    rng = np.random.default_rng(seed)
    ids = random_rows(rng, 40, SEQ_LEN)  # (40, L)
    real = ids != PAD
    (root / "train").mkdir(parents=True)
    arrays = {"input_ids": ids.astype(np.int32), "token_type_ids": np.zeros_like(ids, dtype=np.int8),
              "example_index": np.arange(40), "word_ids": np.where(real, np.arange(SEQ_LEN), -1),
              "labels": np.where(real, rng.integers(0, 3, ids.shape), IGNORE_LABEL_ID).astype(np.int16)}
    for name, array in arrays.items():
        np.save(root / "train" / f"{name}.npy", array)
    metadata = {"task": "token_classification", "labels": ["O", "A", "B"], "vocab_size": 100, "seq_len": SEQ_LEN,
                "pad_id": PAD, "cls_id": CLS, "sep_id": SEP, "tokenizer": "wordpiece", "lowercase": True,
                "vocab_sha256": "0" * 64, "eval_sets": [], "num_rows": {"train": 40}, "num_examples": {"train": 40}}
    (root / "dataset.json").write_text(json.dumps(metadata))
    return root


def _streams(kind: str, root: Path, world: int, trim: int | None = 8) -> list:
    """The training stream of every rank of `world` (kind "mlm" or "task")."""
    if kind == "mlm":
        return [MLMTrainStream([str(root)], 0, GLOBAL_BATCH, rank, world, MaskingConfig(), trim_to_multiple=trim)
                for rank in range(world)]
    options = TaskDataOptions(trim_padding_to_multiple=trim)
    return [TaskTrainStream([str(root)], options, 0, GLOBAL_BATCH, rank, world) for rank in range(world)]


def _widened(batch: dict[str, np.ndarray], width: int, column_padding: dict[str, int]) -> dict[str, np.ndarray]:
    tensors = widened({key: torch.from_numpy(value) for key, value in batch.items()}, width, column_padding)
    return {key: value.numpy() for key, value in tensors.items()}


@pytest.mark.parametrize("kind, rows", [("mlm", "mixed"), ("mlm", "short"), ("mlm", "static"), ("task", "mixed")])
def test_ranks_widened_to_the_widest_hold_the_single_process_batch(tmp_path, kind, rows):
    """1, 2 and 3 simulated ranks: the widest rank's width is the width one process chose
    on the global batch (its longest row, rounded up), and each rank widened to it holds
    its slice of the single-process batch, every array equal."""
    root = _mlm_dataset(tmp_path, rows) if kind == "mlm" else _task_dataset(tmp_path)
    full, trimmed = _streams(kind, root, 1, trim=None)[0], _streams(kind, root, 1)[0]
    old_widths = [padded_width(int(full.next_batch()["attention_mask"].sum(axis=1).max()), SEQ_LEN, 8)
                  for _ in range(NUM_STEPS)]
    single = [trimmed.next_batch() for _ in range(NUM_STEPS)]
    assert [batch["input_ids"].shape[1] for batch in single] == old_widths
    narrower = 0  # rank batches that had to be widened
    for world in (1, 2, 3):
        streams = _streams(kind, root, world)
        for step, whole in enumerate(single):
            parts = [stream.next_batch() for stream in streams]
            width = max(part["input_ids"].shape[1] for part in parts)
            assert width == old_widths[step], (world, step)
            narrower += sum(part["input_ids"].shape[1] < width for part in parts)
            wide = [_widened(part, width, streams[0].column_padding) for part in parts]
            assert all(part.keys() == whole.keys() for part in wide)
            for key, value in whole.items():
                np.testing.assert_array_equal(np.concatenate([part[key] for part in wide]), value, err_msg=key)
    assert narrower > 0  # the widening was exercised
    if rows == "short":
        assert max(old_widths) <= 40
    else:
        assert min(old_widths) < SEQ_LEN == max(old_widths)


def test_streams_without_trimming_need_no_agreement(tmp_path):
    root = _mlm_dataset(tmp_path / "mlm", "mixed")
    assert _streams("mlm", root, 2, trim=None)[0].column_padding is None
    assert _streams("task", _task_dataset(tmp_path / "task"), 2, trim=None)[0].column_padding is None
    assert _streams("mlm", root, 2)[0].column_padding == {"input_ids": PAD, "attention_mask": 0, "token_type_ids": 0,
                                                           "labels": IGNORE_LABEL_ID}


WORKER = """
import sys
import numpy as np
import torch
from dataset.text.loader import MLMTrainStream
from dataset.text.masking import MaskingConfig
from training import distributed
from training.prefetch import PlainBatches, widened_to_every_rank

context = distributed.init_distributed("cpu")
stream = MLMTrainStream([sys.argv[1]], 0, 12, context.rank, context.world_size, MaskingConfig(), trim_to_multiple=8)
batches = PlainBatches(stream, context.device)
saved = {}
for step in range(8):
    local = next(batches)
    saved[f"{step}/local_width"] = np.array(local.host["input_ids"].shape[1])
    item = widened_to_every_rank(local, stream.column_padding, context.device)
    for key, value in item.host.items():
        assert np.array_equal(item.device[key].numpy(), value), key
        saved[f"{step}/{key}"] = value
np.savez(f"{sys.argv[2]}/rank{context.rank}.npz", **saved)
distributed.destroy()
"""


@pytest.mark.multiprocess
def test_two_processes_agree_on_the_width_with_one_all_reduce(tmp_path):
    """Under torchrun (gloo), `widened_to_every_rank` gives each rank its exact slice of the
    single-process batch, host and device tensors alike."""
    root = _mlm_dataset(tmp_path / "data", "short")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    done = subprocess.run([*helpers.torchrun_command(29561), str(script), str(root), str(tmp_path)],
                          cwd=helpers.REPO, env=helpers.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single = _streams("mlm", root, 1)[0]
    ranks = [np.load(tmp_path / f"rank{rank}.npz") for rank in range(2)]
    narrower = 0
    for step in range(NUM_STEPS):
        whole = single.next_batch()
        for key, value in whole.items():
            np.testing.assert_array_equal(np.concatenate([rank[f"{step}/{key}"] for rank in ranks]), value)
        narrower += sum(int(rank[f"{step}/local_width"]) < whole["input_ids"].shape[1] for rank in ranks)
    assert narrower > 0  # some rank's own rows were shorter: the all-reduce widened it
