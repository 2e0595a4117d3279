"""BERT pretraining as a plugin of the training engine (`arch=bert` and its presets)."""

from __future__ import annotations

import numpy as np
from torch import nn

from models.bert import hf
from models.bert.config import BertConfig, BertLossConfig
from models.bert.model import Bert, build_bert
from models.interface import ArchPlugin, ParamGroups, decay_groups

__all__ = ["PLUGIN", "Bert", "BertConfig", "BertLossConfig", "build_bert"]


def param_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    """As in BERT: weight decay off biases and LayerNorms."""
    return ParamGroups(dense=decay_groups(model, weight_decay))


def count_batch(batch: dict[str, np.ndarray]) -> dict[str, int]:
    """Sequences and real (non-padding) tokens of a batch."""
    return {"examples": len(batch["input_ids"]), "tokens": int(batch["attention_mask"].sum())}


PLUGIN = ArchPlugin(
    name="bert", config_class=BertConfig, build=build_bert, data_kind="mlm", param_groups=param_groups,
    main_loss="mlm_loss", count_batch=count_batch, hf_config=hf.config_from_hf, hf_load=hf.load_hf_weights,
)
