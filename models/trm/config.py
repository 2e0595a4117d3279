"""Typed configuration of the Tiny Recursion Model (`arch=trm`).

Field names and defaults follow TRM's `config/arch/trm.yaml`, so its command-line
overrides (`arch.L_cycles=6 arch.mlp_t=True ...`) work unchanged; unknown keys are errors.
"""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.interface import ArchConfig


class TRMLossConfig(BaseModel):
    """Loss head of TRM: deep supervision with adaptive halting (ACT)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["act"] = "act"
    """The only loss head: LM loss + 0.5 * (Q-halt loss + Q-continue loss)."""
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"] = "stablemax_cross_entropy"
    """Per-token loss of the answer logits; TRM uses stablemax."""


class TRMConfig(ArchConfig):
    """Sizes, recursion depth, halting and input options of TRM (defaults: the paper's)."""

    name: Literal["trm"]
    """Architecture name in the registry."""
    halt_exploration_prob: float = 0.1
    """Probability that a training slot draws a minimum number of steps in [2, halt_max_steps]."""
    halt_max_steps: int = 16
    """Supervision steps after which a slot always halts; evaluation runs exactly this many."""
    H_cycles: int = 3
    """Outer cycles per supervision step; all but the last run without gradient."""
    L_cycles: int = 6
    """Updates of the reasoning state z per outer cycle (each followed by one update of y)."""
    H_layers: int = 0
    """Kept so TRM's YAML validates; TRM has no separate H network, so only 0 is allowed."""
    L_layers: int = 2
    """Blocks in the one recursive network."""
    hidden_size: int = 512
    """Width of the latents and of every block."""
    num_heads: int = 8
    """Attention heads (head dimension = hidden_size / num_heads)."""
    expansion: float = 4
    """SwiGLU width factor (inner width = expansion * width * 2/3, rounded up to 256)."""
    puzzle_emb_ndim: int = 512
    """Size of each puzzle's embedding vector; 0 disables the puzzle-embedding table."""
    puzzle_emb_len: int = 16
    """Prefix positions before the tokens; the puzzle vector fills the first ones and the
    rest are zero. 0 means ceil(puzzle_emb_ndim / hidden_size), as in TRM."""
    pos_encodings: Literal["rope", "learned", "none"] = "rope"
    """Position information: rotary in attention, a learned table added to the input, or none."""
    rope_theta: float = 10000
    """Base of the rotary frequencies."""
    rms_norm_eps: float = 1e-5
    """Epsilon of the (scale-free) RMS norms."""
    mlp_t: bool = False
    """Replace attention by a SwiGLU along the sequence axis (TRM-MLP, for fixed-size grids)."""
    no_ACT_continue: bool = True
    """Halt when the halt logit > 0 and train no continue logit (TRM). False: halt when
    halt > continue and train continue on a bootstrapped target (HRM; one extra forward)."""
    loss: TRMLossConfig = Field(default_factory=TRMLossConfig)
    """Loss head settings."""

    @model_validator(mode="after")
    def _check(self) -> TRMConfig:
        positive = ("halt_max_steps", "H_cycles", "L_cycles", "L_layers", "hidden_size", "num_heads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"arch.{name} must be at least 1, got {getattr(self, name)}")
        if self.expansion <= 0:
            raise ValueError(f"arch.expansion must be positive, got {self.expansion}")
        if self.H_layers != 0:
            raise ValueError("arch.H_layers must be 0: TRM uses one network (arch.L_layers blocks) for both latents")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"arch.hidden_size ({self.hidden_size}) must be divisible by arch.num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 2 and self.pos_encodings == "rope" and not self.mlp_t:
            raise ValueError("rotary positions need an even head dimension: change arch.hidden_size or arch.num_heads")
        if not 0 <= self.halt_exploration_prob <= 1:
            raise ValueError(f"arch.halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if self.puzzle_emb_ndim < 0 or self.puzzle_emb_len < 0:
            raise ValueError("arch.puzzle_emb_ndim and arch.puzzle_emb_len must not be negative")
        if self.num_prefix_positions * self.hidden_size < self.puzzle_emb_ndim:
            raise ValueError(
                f"arch.puzzle_emb_ndim ({self.puzzle_emb_ndim}) does not fit in arch.puzzle_emb_len "
                f"({self.puzzle_emb_len}) positions of arch.hidden_size ({self.hidden_size}); raise puzzle_emb_len"
            )
        if self.mlp_t and self.pos_encodings == "rope":
            # TRM's code accepts this and simply never uses the rotary tables.
            warnings.warn(
                "arch.pos_encodings=rope has no effect with arch.mlp_t=True (no attention); "
                "set arch.pos_encodings=none",
                stacklevel=2,
            )
        return self

    @property
    def num_prefix_positions(self) -> int:
        """Prefix positions before the tokens (puzzle_emb_len, or derived when it is 0)."""
        if self.puzzle_emb_len > 0:
            return self.puzzle_emb_len
        return -(-self.puzzle_emb_ndim // self.hidden_size)
