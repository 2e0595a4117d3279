"""The Tiny Recursion Model as a plugin of the training engine (`arch=trm`)."""

from __future__ import annotations

import numpy as np
from torch import nn

from models.interface import ArchPlugin, ParamGroups
from models.layers import SparsePuzzleEmbedding
from models.trm.config import TRMConfig, TRMLossConfig
from models.trm.flops import train_flops
from models.trm.model import TRM, build_trm

__all__ = ["PLUGIN", "TRM", "TRMConfig", "TRMLossConfig", "build_trm"]


def param_groups(model: nn.Module, weight_decay: float) -> ParamGroups:
    """As in TRM: decoupled weight decay on every weight; the puzzle table by sign-SGD."""
    params = [param for param in model.parameters() if param.requires_grad]
    tables = [module for module in model.modules() if isinstance(module, SparsePuzzleEmbedding)]
    return ParamGroups(dense=[{"params": params, "weight_decay": weight_decay}], sparse_tables=tables)


def count_batch(batch: dict[str, np.ndarray]) -> dict[str, int]:
    """Examples in a batch (every position is a real token, so tokens are not counted)."""
    return {"examples": len(batch["inputs"]), "tokens": 0}


PLUGIN = ArchPlugin(
    name="trm", config_class=TRMConfig, build=build_trm, data_kind="puzzle", param_groups=param_groups,
    main_loss="lm_loss", count_batch=count_batch, train_flops=train_flops,
)
