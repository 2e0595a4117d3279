"""Datasets at scale: start-up that opens no shard, datasets in parts read as one, and
de-duplication across parts (issue 19)."""

from __future__ import annotations

import builtins
import json
from collections import Counter
from pathlib import Path

import numpy as np

from pretrain import launch
from tests.helpers import TINY_BERT, compose_config, make_mlm_dataset

NUM_SHARDS = 10_000


def _split_into_one_row_shards(root: Path, num_shards: int) -> None:
    """Rewrite the train split of a built dataset as `num_shards` shards of one row each."""
    metadata = json.loads((root / "dataset.json").read_text())
    train = root / "train"
    rows = np.concatenate([np.load(train / name) for name in metadata["shards"]["train"]])
    for path in train.glob("*.npy"):
        path.unlink()
    names = [f"shard_{index:05d}.npy" for index in range(num_shards)]
    for index, name in enumerate(names):
        np.save(train / name, rows[index % len(rows)][None])
    metadata["shards"]["train"], metadata["shard_rows"]["train"] = names, [1] * num_shards
    metadata["num_sequences"]["train"] = num_shards
    (root / "dataset.json").write_text(json.dumps(metadata))


def test_ten_thousand_shards_start_without_opening_them(tmp_path, monkeypatch):
    data = make_mlm_dataset(tmp_path / "data", num_documents=20, max_seq_length=16)
    _split_into_one_row_shards(data, NUM_SHARDS)
    opened = Counter()  # opens per file under the dataset folder
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        path = Path(str(file))
        if data in path.parents:
            opened[path.relative_to(data).as_posix()] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    launch(compose_config(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}",
                                       "global_batch_size=8", "epochs=1", "max_steps=1", "checkpoint_every_eval=false"]))
    # One step of 8 rows reads at most 8 one-row train shards (np.load and its memory map
    # open each a few times); evaluation reads the test split; nothing scans the 10,000.
    train_shards = [name for name in opened if name.startswith("train/")]
    assert 0 < len(train_shards) <= 8, opened
    assert sum(opened[name] for name in train_shards) <= 3 * 8, opened
    assert opened["dataset.json"] <= 4, opened  # metadata, model sizing, the stream, the checkpoint's copy
