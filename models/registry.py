"""Architectures by short name: `arch.name` -> config class, model builder, data kind.

Adding an architecture means adding one entry to `ARCHITECTURES`; nothing else in the
training loop names a model. Presets such as `bert_large` and `bert_tiny` are YAML files
that set `name: bert` with other sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from dataset import mlm_dataset, puzzle_dataset
from dataset.stream import EvalBatches, TrainStream
from models.bert import hf as bert_hf
from models.bert.config import BertConfig
from models.bert.model import build_bert
from models.interface import TrainModule
from models.trm.config import TRMConfig
from models.trm.model import build_trm
from utils.config import ConfigError


@dataclass(frozen=True)
class DataKind:
    """How the loop reads one family of on-disk datasets."""

    name: str
    load_metadata: Callable[[list[str]], Any]
    """Training-split metadata of the dataset folders (sizes the model)."""
    train_stream: Callable[[list[str], int, int, int, int, BaseModel], TrainStream]
    """(paths, seed, global_batch_size, rank, world_size, arch_config) -> stream."""
    eval_batches: Callable[[list[str], int, int, int, BaseModel, int], EvalBatches]
    """(paths, global_batch_size, rank, world_size, arch_config, seed) -> batches."""


PUZZLE_DATA = DataKind(
    name="puzzle",
    load_metadata=lambda paths: puzzle_dataset.load_puzzle_metadata(paths, "train"),
    train_stream=lambda paths, seed, batch, rank, world, _arch: puzzle_dataset.PuzzleTrainStream(
        paths, seed, batch, rank, world
    ),
    eval_batches=lambda paths, batch, rank, world, _arch, _seed: puzzle_dataset.iter_puzzle_eval_batches(
        paths, batch, rank, world
    ),
)

MLM_DATA = DataKind(
    name="mlm",
    load_metadata=mlm_dataset.load_mlm_metadata,
    train_stream=lambda paths, seed, batch, rank, world, arch: mlm_dataset.MLMTrainStream(
        paths, seed, batch, rank, world, arch.masking, arch.trim_padding_to_multiple
    ),
    eval_batches=lambda paths, batch, rank, world, arch, seed: mlm_dataset.iter_mlm_eval_batches(
        paths, batch, rank, world, arch.masking, seed
    ),
)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: how to validate its config, build it, and feed it."""

    config_class: type[BaseModel]
    build: Callable[[Any, Any], TrainModule]
    data: DataKind
    hf_config: Callable[[str, Any], Any] | None = None
    """(HF folder, arch config) -> arch config sized like the HF model (`+init_from_hf`)."""
    hf_load: Callable[[TrainModule, str], Any] | None = None
    """(model, HF folder) -> loads the HF weights into the model."""


ARCHITECTURES: dict[str, ArchSpec] = {
    "trm": ArchSpec(config_class=TRMConfig, build=build_trm, data=PUZZLE_DATA),
    "bert": ArchSpec(config_class=BertConfig, build=build_bert, data=MLM_DATA, hf_config=bert_hf.config_from_hf,
                     hf_load=bert_hf.load_hf_weights),
}


def get_arch(name: str) -> ArchSpec:
    """The entry for `arch.name`; an unknown name lists the known ones."""
    if name not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(f"unknown arch.name '{name}'; known architectures: {known}")
    return ARCHITECTURES[name]
