"""Tiny Recursion Model (TRM, Jolicoeur-Martineau 2025) with deep supervision and ACT.

One small network `net` (L_layers post-norm blocks) refines two latents over the input x
(tokens behind a puzzle-embedding prefix):

    y: the answer state (carry key `z_H`),  z: the reasoning state (carry key `z_L`)
    one supervision step = H_cycles times { L_cycles times z = net(z, y + x); y = net(y, z) }

with gradients only through the last outer cycle. The LM head reads y's token positions,
the Q head reads y's position 0 and decides when a slot halts. Training is continuous
batching: every `forward` call is one supervision step for every slot; slots that halted
at the previous call start over on the batch's example at their index.

Names: B batch, T = num_prefix_positions + seq_len (positions seen by the network),
L = seq_len, D = hidden_size, V = vocab_size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from core.constants import IGNORE_LABEL_ID
from models.interface import Carry, DatasetShape, StepOutput, SumAndCount, TrainModule
from models.layers import (
    Attention,
    RotaryEmbedding,
    SparsePuzzleEmbedding,
    SwiGLU,
    lecun_linear,
    rms_norm,
    trunc_normal_init_,
)
from models.losses import softmax_cross_entropy, stablemax_cross_entropy

if TYPE_CHECKING:
    # Type hints only: config.py imports nothing from here either, so there is no cycle.
    from models.trm.config import TRMConfig

DATA_KEYS = ("inputs", "labels", "puzzle_identifiers")
"""Batch tensors that a slot keeps in its carry until it halts."""

LOSS_FUNCTIONS = {
    "stablemax_cross_entropy": stablemax_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
}

Q_HALT_LOSS_WEIGHT = 0.5
"""Weight of each Q loss in the objective (LM loss weight 1), as in TRM."""


class TRMBlock(nn.Module):
    """Post-norm block: mix positions (attention, or an MLP over the sequence), then SwiGLU."""

    def __init__(self, config: TRMConfig, num_positions: int):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.mlp_t = config.mlp_t
        if config.mlp_t:
            self.sequence_mlp = SwiGLU(num_positions, config.expansion)
        else:
            self.attention = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, h: torch.Tensor, rotary: RotaryEmbedding | None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        if self.mlp_t:
            h_t = h.transpose(1, 2)  # (B, D, T)
            # As in TRM, this norm runs in the transposed layout, i.e. over the positions.
            h = rms_norm(h_t + self.sequence_mlp(h_t), self.eps).transpose(1, 2)  # (B, T, D)
        else:
            h = rms_norm(h + self.attention(h, rotary), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class TRM(TrainModule):
    """TRM network, ACT halting and loss head; see the module docstring."""

    def __init__(self, config: TRMConfig, vocab_size: int, seq_len: int, num_puzzle_identifiers: int):
        super().__init__()
        self.config = config
        self.seq_len = seq_len
        self.num_prefix = config.num_prefix_positions
        num_positions = seq_len + self.num_prefix
        hidden = config.hidden_size

        self.embed_scale = math.sqrt(hidden)
        self.embed_tokens = nn.Embedding(vocab_size, hidden)
        trunc_normal_init_(self.embed_tokens.weight, std=1 / self.embed_scale)
        self.puzzle_emb = None
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = SparsePuzzleEmbedding(num_puzzle_identifiers, config.puzzle_emb_ndim)
        self.embed_positions = None
        if config.pos_encodings == "learned":
            self.embed_positions = nn.Embedding(num_positions, hidden)
            trunc_normal_init_(self.embed_positions.weight, std=1 / self.embed_scale)
        self.rotary = None
        if config.pos_encodings == "rope" and not config.mlp_t:
            self.rotary = RotaryEmbedding(hidden // config.num_heads, num_positions, config.rope_theta)

        self.blocks = nn.ModuleList(TRMBlock(config, num_positions) for _ in range(config.L_layers))
        self.lm_head = lecun_linear(hidden, vocab_size)
        self.q_head = lecun_linear(hidden, 2, bias=True)
        with torch.no_grad():
            # Q starts near "never halt" (sigmoid(-5) ~ 0.007) so early steps run long.
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)
        # Fixed (not learned) starting latents; saved so a checkpoint reproduces them.
        self.register_buffer("y_init", trunc_normal_init_(torch.empty(hidden), std=1.0))
        self.register_buffer("z_init", trunc_normal_init_(torch.empty(hidden), std=1.0))
        self.loss_fn = LOSS_FUNCTIONS[config.loss.loss_type]

    # ---- network -------------------------------------------------------------------

    def embed_inputs(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L) and puzzle ids (B,) -> scaled input embedding x (B, T, D)."""
        batch = inputs.shape[0]
        x = self.embed_tokens(inputs)  # (B, L, D)
        if self.num_prefix > 0:
            prefix = x.new_zeros(batch, self.num_prefix * self.config.hidden_size)  # (B, P*D)
            if self.puzzle_emb is not None:
                puzzle = self.puzzle_emb(puzzle_identifiers)  # (B, puzzle_emb_ndim)
                prefix = F.pad(puzzle, (0, prefix.shape[1] - puzzle.shape[1]))
            x = torch.cat((prefix.view(batch, self.num_prefix, -1), x), dim=1)  # (B, T, D)
        if self.embed_positions is not None:
            # 1/sqrt(2) keeps the variance of a sum of two unit-variance embeddings.
            x = (x + self.embed_positions.weight) / math.sqrt(2)
        return self.embed_scale * x

    def net(self, hidden: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        """The one recursive network: blocks(hidden + injection), (B, T, D) -> (B, T, D)."""
        h = hidden + injection
        for block in self.blocks:
            h = block(h, self.rotary)
        return h

    def _cycle(self, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One outer cycle: refine z L_cycles times from (y + x), then y once from z."""
        for _ in range(self.config.L_cycles):
            z = self.net(z, y + x)
        y = self.net(y, z)
        return y, z

    def recurse(
        self, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One supervision step from latents y, z (B, T, D) over input x (B, T, D).

        Returns the new y and z, the logits (B, L, V), and the halt and continue
        logits (B,) in float32.
        """
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                y, z = self._cycle(y, z, x)
        y, z = self._cycle(y, z, x)
        logits = self.lm_head(y[:, self.num_prefix :])  # (B, L, V)
        with torch.autocast(device_type=y.device.type, enabled=False):
            q_logits = self.q_head(y[:, 0].float())  # (B, 2): halting decisions stay in float32
        return y, z, logits, q_logits[:, 0], q_logits[:, 1]

    # ---- ACT ---------------------------------------------------------------------

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """All slots halted (so the first step loads the batch), latents at their init."""
        size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        shape = (size, self.num_prefix + self.seq_len, self.config.hidden_size)
        carry = {
            "z_H": self.y_init.expand(shape).clone(),
            "z_L": self.z_init.expand(shape).clone(),
            "steps": torch.zeros(size, dtype=torch.int32, device=device),
            "halted": torch.ones(size, dtype=torch.bool, device=device),
        }
        carry.update({key: batch[key].clone() for key in DATA_KEYS})
        return carry

    def _reset_halted(self, carry: Carry, batch: dict[str, torch.Tensor]) -> Carry:
        """Slots that halted restart: init latents, step 0, the batch's example at their index."""
        halted = carry["halted"]
        state = {
            "z_H": torch.where(halted[:, None, None], self.y_init, carry["z_H"]),
            "z_L": torch.where(halted[:, None, None], self.z_init, carry["z_L"]),
            "steps": torch.where(halted, 0, carry["steps"]),
        }
        for key in DATA_KEYS:
            row_halted = halted.view(-1, *([1] * (batch[key].dim() - 1)))
            state[key] = torch.where(row_halted, batch[key], carry[key])
        return state

    def _halt(
        self, steps: torch.Tensor, q_halt: torch.Tensor, q_continue: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Which slots stop after this step (steps already counts it)."""
        config = self.config
        halted = steps >= config.halt_max_steps
        if not self.training or config.halt_max_steps == 1:
            return halted  # evaluation always runs halt_max_steps, so batches stay in step
        if "noise" not in batch:
            raise KeyError("training batches need a 'noise' tensor (B, 2) for TRM's halting exploration")
        if config.no_ACT_continue:
            halted = halted | (q_halt > 0)
        else:
            halted = halted | (q_halt > q_continue)
        # Noise comes from the data loader, so the draws do not depend on the process count.
        noise = batch["noise"]
        exploring = noise[:, 0] < config.halt_exploration_prob
        min_steps = 2 + torch.floor(noise[:, 1] * (config.halt_max_steps - 1)).to(steps.dtype)  # in [2, max]
        return halted & (~exploring | (steps >= min_steps))

    def loss_counts(self, carry: Carry, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rows with labels after the refill `forward` does: every loss term averages over them."""
        labels = torch.where(carry["halted"][:, None], batch["labels"], carry["labels"])  # (B, L)
        num_sequences = (labels != IGNORE_LABEL_ID).any(-1).sum()
        names = ["lm_loss", "q_halt_loss"]
        if self.training and not self.config.no_ACT_continue:
            names.append("q_continue_loss")
        return dict.fromkeys(names, num_sequences)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> StepOutput:
        """One supervision step for every slot; returns losses, metrics and the new carry."""
        state = self._reset_halted(carry, batch)
        x = self.embed_inputs(state["inputs"], state["puzzle_identifiers"])  # (B, T, D)
        y, z, logits, q_halt, q_continue = self.recurse(state["z_H"], state["z_L"], x)
        with torch.no_grad():
            steps = state["steps"] + 1
            halted = self._halt(steps, q_halt, q_continue, batch)
            target_q_continue = None
            if self.training and not self.config.no_ACT_continue:
                target_q_continue = self._q_continue_target(y, z, x.detach(), steps)
        new_carry = {**state, "z_H": y.detach(), "z_L": z.detach(), "steps": steps, "halted": halted}
        losses, metrics, preds = self._losses_and_metrics(
            logits, state["labels"], q_halt, q_continue, target_q_continue, halted, steps
        )
        weights = {"lm_loss": 1.0, "q_halt_loss": Q_HALT_LOSS_WEIGHT, "q_continue_loss": Q_HALT_LOSS_WEIGHT}
        outputs = {"preds": preds, "q_halt_logits": q_halt.detach()}
        outputs.update({key: state[key] for key in DATA_KEYS})
        return StepOutput(
            carry=new_carry,
            losses=losses,
            loss_weights={name: weights[name] for name in losses},
            metrics=metrics,
            outputs=outputs,
            # Only evaluation reads it; in training it would cost a device sync every step.
            all_halted=True if self.training else bool(halted.all()),
        )

    @torch.no_grad()
    def _q_continue_target(
        self, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        """HRM's bootstrapped target: sigmoid of the best next-step Q value (halt alone at the end).

        Reuses this step's input embedding, so the puzzle-embedding rows that carry the
        gradient are not replaced by a second lookup.
        """
        _, _, _, next_halt, next_continue = self.recurse(y, z, x)
        is_last = steps >= self.config.halt_max_steps
        return torch.sigmoid(torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue)))

    def _losses_and_metrics(self, logits, labels, q_halt, q_continue, target_q_continue, halted, steps):
        """(sum, count) losses over labelled rows, metrics over labelled rows that halted."""
        mask = labels != IGNORE_LABEL_ID  # (B, L)
        num_labels = mask.sum(-1)  # (B,)
        has_labels = num_labels > 0
        divisor = num_labels.clamp_min(1)
        with torch.no_grad():
            preds = logits.argmax(-1)  # (B, L)
            correct = mask & (preds == labels)
            exact = correct.sum(-1) == num_labels  # (B,)
        token_loss = self.loss_fn(logits, labels, ignore_index=IGNORE_LABEL_ID)  # (B, L)
        lm_loss = (token_loss.sum(-1) / divisor).sum().float()
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, exact.float(), reduction="none")
        num_sequences = has_labels.sum()
        losses: dict[str, SumAndCount] = {
            "lm_loss": (lm_loss, num_sequences),
            "q_halt_loss": ((q_halt_loss * has_labels).sum(), num_sequences),
        }
        if target_q_continue is not None:
            q_continue_loss = F.binary_cross_entropy_with_logits(q_continue, target_q_continue, reduction="none")
            losses["q_continue_loss"] = ((q_continue_loss * has_labels).sum(), num_sequences)

        counted = halted & has_labels  # (B,)
        num_counted = counted.sum()
        per_row = {
            "accuracy": correct.sum(-1) / divisor,
            "exact_accuracy": exact.float(),
            "q_halt_accuracy": ((q_halt.detach() >= 0) == exact).float(),
            "steps": steps.float(),
        }
        metrics = {name: ((value * counted).sum(), num_counted) for name, value in per_row.items()}
        return losses, metrics, preds


def build_trm(config: TRMConfig, metadata: DatasetShape) -> TRM:
    """Build a `TRM` sized for a puzzle dataset (vocabulary, length, number of puzzles)."""
    return TRM(
        config,
        vocab_size=metadata.vocab_size,
        seq_len=metadata.seq_len,
        num_puzzle_identifiers=metadata.num_puzzle_identifiers,
    )
