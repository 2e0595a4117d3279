"""BERT as plugins of the training engine: pretraining (`arch=bert` and its presets) and
fine-tuning (`arch=bert_cls`, `bert_ner`, `bert_qa`, one plugin per head: each has its own
main loss, its own `transformers` class on export, and a checkpoint of one head is never
restored into another)."""

from __future__ import annotations

import numpy as np
from torch import nn

from models.bert import hf
from models.bert.config import TASK_ARCHS, BertConfig, BertLossConfig, BertTaskConfig
from models.bert.flops import train_flops
from models.bert.model import Bert, build_bert
from models.bert.tasks import build_task_model
from models.interface import ArchPlugin, ParamGroups, decay_groups

__all__ = ["PLUGIN", "TASK_PLUGINS", "Bert", "BertConfig", "BertLossConfig", "BertTaskConfig", "build_bert"]


def param_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    """As in BERT: weight decay off biases and LayerNorms."""
    return ParamGroups(dense=decay_groups(model, weight_decay))


def count_batch(batch: dict[str, np.ndarray]) -> dict[str, int]:
    """Sequences and real (non-padding) tokens of a batch."""
    return {"examples": len(batch["input_ids"]), "tokens": int(batch["attention_mask"].sum())}


PLUGIN = ArchPlugin(
    name="bert", config_class=BertConfig, build=build_bert, data_kind="mlm", param_groups=param_groups,
    main_loss="mlm_loss", count_batch=count_batch, train_flops=train_flops, hf_config=hf.config_from_hf,
    hf_load=hf.load_hf_weights,
)


def _sized_like_checkpoint(arch: dict, vocab_size: int, config: BertTaskConfig) -> BertTaskConfig:
    return config.sized_like(arch, vocab_size)


TASK_PLUGINS = {
    name: ArchPlugin(
        name=name, config_class=BertTaskConfig, build=build_task_model, data_kind="task", param_groups=param_groups,
        main_loss="loss", count_batch=count_batch, train_flops=train_flops, hf_config=hf.config_from_hf,
        hf_load=hf.load_hf_weights,
        checkpoint_config=_sized_like_checkpoint,
    )
    for name in TASK_ARCHS
}
"""`bert_cls`, `bert_ner`, `bert_qa`: the encoder with one fine-tuning head each (`models.bert.tasks`)."""
