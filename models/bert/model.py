"""BERT (Devlin et al. 2018) with its masked-LM and next-sentence heads, as a `TrainModule`.

The architecture is the original one, so the weights convert one-to-one to Hugging Face
`BertForMaskedLM` / `BertForPreTraining` (see `models.bert.hf`): post-LayerNorm layers,
exact (erf) GELU, learned absolute positions, token-type embeddings, a pooler (dense +
tanh on [CLS]) and a decoder tied to the word embeddings.

Four changes are for speed only and do not change the weights:
- query, key and value are one fused Linear ([3H, H] weight);
- the vocabulary is padded to a multiple of `pad_vocab_to_multiple` (padded logits -inf);
- the MLM transform and decoder run only at the labelled positions (~15% of tokens);
- with `unpad` (default), training runs the embeddings, dense layers and feed-forward
  on the real tokens only (N, H); attention stays on the padded layout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from models.interface import Carry, StepOutput, SumAndCount, TrainModule

if TYPE_CHECKING:
    from models.bert.config import BertConfig


class BertEmbeddings(nn.Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig, padded_vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(padded_vocab_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token ids and segment ids (B, L) -> embeddings (B, L, H); or, given each token's
        position, ids (N,) of gathered tokens -> (N, H)."""
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (L,)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (..., H)
        x = x + self.position_embeddings(positions)  # (..., H)
        return self.dropout(self.norm(x))


class TokenLayout:
    """Where the real tokens of a padded batch are: gathers (B, L, ...) -> (N, ...) and
    scatters back, N = number of real tokens, in row-major order."""

    def __init__(self, real: torch.Tensor):
        """real: bool (B, L), True = a real token."""
        self.shape = real.shape
        self.index = real.flatten().nonzero().squeeze(1)  # (N,) flat positions of the real tokens

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...)."""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, L, ...), zeros at the padding positions."""
        full = x.new_zeros((self.shape[0] * self.shape[1], *x.shape[1:]))
        return full.index_copy(0, self.index, x).view(*self.shape, *x.shape[1:])


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection and the output projection."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout_prob = config.attention_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        """x (B, L, H), key_mask bool (B, 1, 1, L) with True = attend -> (B, L, H).

        With a `layout`, x holds only the real tokens (N, H): the projections run on
        them and attention on the padded layout (padding keys are zero and masked out).
        """
        qkv = self.qkv(x)  # (B, L, 3H) or (N, 3H)
        if layout is not None:
            qkv = layout.pad(qkv)  # (B, L, 3H)
        batch, length, width = qkv.shape
        hidden = width // 3
        qkv = qkv.view(batch, length, 3, self.num_heads, hidden // self.num_heads)  # (B, L, 3, nh, hs)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, L, hs)
        dropout = self.dropout_prob if self.training else 0.0
        y = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=dropout)  # (B, nh, L, hs)
        y = y.transpose(1, 2).reshape(batch, length, hidden)  # (B, L, H)
        if layout is not None:
            y = layout.gather(y)  # (N, H)
        return self.out(y)


class BertLayer(nn.Module):
    """One post-LayerNorm encoder layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
        """x (B, L, H) -> (B, L, H); with a `layout`, real tokens only: (N, H) -> (N, H)."""
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask, layout)))
        inner = F.gelu(self.ffn_in(x), approximate="none")  # (B, L, I)
        return self.ffn_norm(x + self.dropout(self.ffn_out(inner)))


class BertMLMHead(nn.Module):
    """Transform (dense + GELU + LayerNorm); the decoder is the word-embedding matrix + `bias`."""

    def __init__(self, config: BertConfig, padded_vocab_size: int):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(padded_vocab_size))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """hidden (..., H), decoder_weight (V_pad, H) -> logits (..., V_pad)."""
        x = self.norm(F.gelu(self.transform(hidden), approximate="none"))  # (..., H)
        return F.linear(x, decoder_weight, self.bias)


class BertEncoder(TrainModule):
    """The BERT encoder (embeddings and layers) that the pretraining and fine-tuning heads
    build on; subclasses add their heads and call `reset_parameters` at the end of `__init__`."""

    def __init__(self, config: BertConfig, vocab_size: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.padded_vocab_size = config.padded_vocab_size(vocab_size)
        self.embeddings = BertEmbeddings(config, self.padded_vocab_size)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def reset_parameters(self, pad_id: int = 0) -> None:
        """Initialise as BERT / `transformers` do: N(0, initializer_range) weights and
        embeddings, zero biases, LayerNorm (1, 0); the pad and padded vocabulary rows are 0."""
        std = self.config.initializer_range
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.normal_(0.0, std)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
            word = self.embeddings.word_embeddings.weight
            word[pad_id].zero_()
            word[self.vocab_size :].zero_()

    def head_flops(self, batch: dict[str, np.ndarray], num_tokens: int) -> int:
        """Forward FLOPs of the head over a host batch whose encoder keeps `num_tokens` real
        tokens (`models.bert.flops`); each head defines it."""
        raise NotImplementedError

    # ---- network -------------------------------------------------------------------

    @staticmethod
    def real_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
        """bool (B, L): the tokens the encoder treats as real.

        A row without any real token (a padded evaluation row) would softmax over nothing
        and give NaN, which poisons the gradients; such rows count as all real.
        """
        mask = attention_mask.bool()
        return mask | ~mask.any(dim=-1, keepdim=True)  # (B, L)

    def encode(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Final hidden states (B, L, H) of the encoder."""
        key_mask = self.real_tokens(attention_mask)[:, None, None, :]  # (B, 1, 1, L)
        x = self.embeddings(input_ids, token_type_ids)  # (B, L, H)
        return self._layers(x, key_mask, None)

    def encode_tokens(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, TokenLayout]:
        """Final hidden states of the real tokens only, (N, H), and where they sit.

        Equal to `layout.gather(encode(...))` up to float rounding; embeddings, dense
        layers and feed-forward skip the padding. Rows without a real token count as all
        real, as in `encode`.
        """
        mask = self.real_tokens(attention_mask)  # (B, L)
        layout = TokenLayout(mask)
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, L)
        x = self.embeddings(layout.gather(input_ids), layout.gather(token_type_ids), layout.gather(positions))  # (N, H)
        return self._layers(x, mask[:, None, None, :], layout), layout

    def _layers(self, x: torch.Tensor, key_mask: torch.Tensor, layout: TokenLayout | None) -> torch.Tensor:
        """The encoder layers over x (B, L, H), or (N, H) real tokens with a layout."""
        for layer in self.layers:
            if self.config.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, key_mask, layout, use_reentrant=False)
            else:
                x = layer(x, key_mask, layout)
        return x


class Bert(BertEncoder):
    """BERT encoder + MLM head (+ pooler and NSP head when `config.loss.use_nsp`).

    Stateless: the carry is always `{}`. Batch keys: `input_ids`, `token_type_ids` (int64
    (B, L)), `attention_mask` (bool (B, L), True = real token), `labels` (int64 (B, L), -100 =
    not predicted) and, with NSP, `next_sentence_label` (int64 (B,), -100 = padded row).
    """

    def __init__(self, config: BertConfig, vocab_size: int, pad_id: int = 0):
        super().__init__(config, vocab_size)
        self.mlm_head = BertMLMHead(config, self.padded_vocab_size)
        self.pooler = None
        self.nsp_head = None
        if config.loss.use_nsp:
            # Built only with NSP: unused parameters would break DDP and waste optimiser state.
            self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
            self.nsp_head = nn.Linear(config.hidden_size, 2)
        self.reset_parameters(pad_id)

    def reset_parameters(self, pad_id: int = 0) -> None:
        """The encoder's initialisation, and a zero decoder bias."""
        super().reset_parameters(pad_id)
        with torch.no_grad():
            self.mlm_head.bias.zero_()

    def head_flops(self, batch: dict[str, np.ndarray], num_tokens: int) -> int:
        """The MLM transform and decoder at the labelled positions; the NSP pooler and classifier per row."""
        hidden = self.config.hidden_size
        num_labelled = int((batch["labels"] != IGNORE_LABEL_ID).sum())
        flops = 2 * num_labelled * hidden * (hidden + self.padded_vocab_size)
        if self.nsp_head is not None:
            flops += 2 * len(batch["input_ids"]) * hidden * (hidden + 2)
        return flops

    def mlm_logits(self, hidden: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits over the padded vocabulary, padded rows -inf.

        hidden (B, L, H) -> (B, L, V_pad); with a bool `positions` (B, L), only those
        positions are decoded: (N, V_pad) in row-major order, N = positions.sum().
        """
        if positions is not None:
            hidden = hidden[positions]  # (N, H)
        logits = self.mlm_head(hidden, self.embeddings.word_embeddings.weight)  # (..., V_pad)
        if self.padded_vocab_size > self.vocab_size:
            # In place on the matmul output (not needed by its backward): padded tokens
            # never win the argmax and get zero probability and zero gradient.
            logits[..., self.vocab_size :] = float("-inf")
        return logits

    def nsp_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Is-next / not-next logits (B, 2) from the pooled [CLS] state of hidden (B, L, H)."""
        if self.pooler is None or self.nsp_head is None:
            raise RuntimeError("this model has no NSP head; build it with arch.loss.use_nsp=true")
        return self._nsp_head_logits(hidden[:, 0])

    def _nsp_head_logits(self, first: torch.Tensor) -> torch.Tensor:
        """[CLS] states (B, H) -> is-next / not-next logits (B, 2)."""
        pooled = torch.tanh(self.pooler(first))  # (B, H)
        return self.nsp_head(pooled)

    # ---- training step -------------------------------------------------------------

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Carry:
        """BERT carries nothing between steps."""
        return {}

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Perplexity of the masked tokens, exp(mean MLM loss)."""
        if "mlm_loss" not in metrics:
            return {}
        return {"perplexity": math.exp(min(metrics["mlm_loss"], 700.0))}

    def loss_counts(self, carry: Carry, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Labelled positions (MLM) and labelled pairs (NSP) of the batch."""
        counts = {"mlm_loss": (batch["labels"] != IGNORE_LABEL_ID).sum()}
        if self.config.loss.use_nsp:
            counts["nsp_loss"] = (batch["next_sentence_label"] != IGNORE_LABEL_ID).sum()
        return counts

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> StepOutput:
        """One MLM (+ NSP) step: summed losses and metrics with their counts."""
        labels = batch["labels"]
        selected = labels != IGNORE_LABEL_ID  # (B, L)
        if self.config.unpad:
            tokens, layout = self.encode_tokens(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            labelled = tokens[layout.gather(selected)]  # (N_labelled, H), row-major like hidden[selected]
        else:
            hidden = self.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # (B, L, H)
            labelled = hidden[selected]  # (N_labelled, H)
        losses, metrics = self._mlm_terms(labelled, labels, selected)
        if self.config.loss.use_nsp:
            first = tokens[layout.gather(first_column(selected))] if self.config.unpad else hidden[:, 0]  # (B, H)
            nsp_losses, nsp_metrics = self._nsp_terms(first, batch["next_sentence_label"])
            losses.update(nsp_losses)
            metrics.update(nsp_metrics)
        return StepOutput(carry={}, losses=losses, metrics=metrics, all_halted=True)

    def _mlm_terms(
        self, labelled: torch.Tensor, labels: torch.Tensor, selected: torch.Tensor
    ) -> tuple[dict[str, SumAndCount], dict[str, SumAndCount]]:
        """MLM loss, token accuracy and sequence exact accuracy over the labelled positions.

        labelled (N, H): final hidden states at the `selected` (B, L) positions, row-major.
        """
        targets = labels[selected]  # (N,)
        logits = self.mlm_logits(labelled)  # (N, V_pad)
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
        correct = logits.argmax(dim=-1) == targets  # (N,)
        # A sequence is exactly right when none of its labelled tokens is wrong.
        all_right = torch.ones_like(selected)  # (B, L)
        all_right[selected] = correct
        sequence_right = all_right.all(dim=-1) & selected.any(dim=-1)  # (B,)
        num_labelled = selected.sum()
        losses = {"mlm_loss": (loss_sum, num_labelled)}
        metrics = {
            "accuracy": (correct.sum(), num_labelled),
            "exact_accuracy": (sequence_right.sum(), selected.any(dim=-1).sum()),
        }
        return losses, metrics

    def _nsp_terms(
        self, first: torch.Tensor, next_sentence_label: torch.Tensor
    ) -> tuple[dict[str, SumAndCount], dict[str, SumAndCount]]:
        """NSP loss and accuracy over the rows that carry a label; first (B, H): [CLS] states."""
        logits = self._nsp_head_logits(first).float()  # (B, 2)
        valid = next_sentence_label != IGNORE_LABEL_ID  # (B,)
        loss_sum = F.cross_entropy(logits, next_sentence_label, ignore_index=IGNORE_LABEL_ID, reduction="sum")
        correct = (logits.argmax(dim=-1) == next_sentence_label) & valid  # (B,)
        num_rows = valid.sum()
        return {"nsp_loss": (loss_sum, num_rows)}, {"nsp_accuracy": (correct.sum(), num_rows)}


def first_column(like: torch.Tensor) -> torch.Tensor:
    """bool (B, L), True in column 0: the [CLS] positions."""
    first = torch.zeros_like(like, dtype=torch.bool)
    first[:, 0] = True
    return first


def build_bert(config: BertConfig, metadata) -> Bert:
    """Build BERT for an MLM dataset; `metadata` needs `vocab_size`, `seq_len`, `pad_id`, `nsp`.

    Raises `UserError` naming the key to change when the config cannot serve the data.
    """
    if config.max_position_embeddings < metadata.seq_len:
        raise UserError(
            f"arch.max_position_embeddings ({config.max_position_embeddings}) is smaller than the "
            f"dataset's sequence length ({metadata.seq_len}); set arch.max_position_embeddings>={metadata.seq_len}"
        )
    if config.loss.use_nsp and not metadata.nsp:
        raise UserError(
            "arch.loss.use_nsp=true but the dataset has no next-sentence labels; "
            "set arch.loss.use_nsp=false or rebuild the dataset with NSP pairs"
        )
    if config.vocab_size is not None and config.vocab_size < metadata.vocab_size:
        raise UserError(
            f"arch.vocab_size ({config.vocab_size}) is smaller than the dataset's vocabulary "
            f"({metadata.vocab_size}); set arch.vocab_size=null to take the dataset's"
        )
    return Bert(config, config.resolved_vocab_size(metadata.vocab_size), metadata.pad_id)
