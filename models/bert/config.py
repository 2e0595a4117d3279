"""Typed configuration of BERT (`arch=bert`): sizes, dropout and loss.

The defaults are BERT-Base as in Devlin et al. (2018). Derived sizes (`intermediate_size`,
`head_dim`, the padded vocabulary) are computed here once, so the model and the Hugging
Face conversion agree on them. Unknown keys are errors.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.interface import ArchConfig


class BertLossConfig(BaseModel):
    """Training objective: masked-language modelling, optionally with next-sentence prediction."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["mlm"] = "mlm"
    """The only loss head: cross-entropy at the masked positions."""
    use_nsp: bool = False
    """Add the next-sentence-prediction loss (needs a dataset built with NSP pairs)."""


class BertConfig(ArchConfig):
    """Sizes and options of the original post-LayerNorm BERT encoder (defaults: BERT-Base)."""

    name: Literal["bert"]
    """Architecture name in the registry."""
    loss: BertLossConfig = Field(default_factory=BertLossConfig)
    """Loss head settings."""
    num_layers: int = 12
    """Transformer layers (BERT-Base 12, BERT-Large 24)."""
    hidden_size: int = 768
    """Width of every layer."""
    num_heads: int = 12
    """Attention heads; must divide `hidden_size`."""
    expansion: float = 4
    """Feed-forward width factor: intermediate size = expansion * hidden_size (3072 for Base)."""
    max_position_embeddings: int = 512
    """Rows of the learned position table; must be at least the dataset's sequence length."""
    vocab_size: int | None = None
    """Vocabulary size; None takes it from the dataset. When set it must be at least the
    dataset's vocabulary (useful to keep one size across datasets)."""
    type_vocab_size: int = 2
    """Token-type (segment) ids: 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`."""
    hidden_dropout_prob: float = 0.1
    """Dropout after the embeddings and after each attention/feed-forward output."""
    attention_dropout_prob: float = 0.1
    """Dropout on the attention probabilities (training only)."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm (BERT uses 1e-12)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of weights and embeddings."""
    pad_vocab_to_multiple: int = 64
    """Embedding/decoder rows are padded to a multiple of this for faster matmuls; the
    padded rows are never predicted (their logits are -inf) and export drops them."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: less memory, ~30% slower."""
    unpad: bool = True
    """Run the embeddings, dense layers and feed-forward only on the real (non-padding)
    tokens, gathered to (N, H); attention still runs on the padded layout. Same results
    as the padded model (up to float rounding), less compute when batches hold padding."""

    @model_validator(mode="after")
    def _check_sizes(self) -> BertConfig:
        positive = {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "pad_vocab_to_multiple": self.pad_vocab_to_multiple,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"arch.{key} must be positive, got {value}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"arch.hidden_size ({self.hidden_size}) must be divisible by arch.num_heads ({self.num_heads})"
            )
        intermediate = self.expansion * self.hidden_size
        if self.expansion <= 0 or intermediate != round(intermediate):
            raise ValueError(
                f"arch.expansion * arch.hidden_size must be a positive whole number, got {intermediate}"
            )
        if self.vocab_size is not None and self.vocab_size <= 0:
            raise ValueError(f"arch.vocab_size must be positive or null, got {self.vocab_size}")
        for key in ("hidden_dropout_prob", "attention_dropout_prob"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"arch.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise ValueError("arch.layer_norm_eps and arch.initializer_range must be positive")
        return self

    @property
    def intermediate_size(self) -> int:
        """Width of the feed-forward layer."""
        return round(self.expansion * self.hidden_size)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def padded_vocab_size(self, vocab_size: int) -> int:
        """Rows of the embedding/decoder table for `vocab_size` real tokens."""
        return math.ceil(vocab_size / self.pad_vocab_to_multiple) * self.pad_vocab_to_multiple

    def resolved_vocab_size(self, dataset_vocab_size: int) -> int:
        """The model's vocabulary: `vocab_size` when set, else the dataset's."""
        return dataset_vocab_size if self.vocab_size is None else self.vocab_size

    def sized_like(self, arch: dict, vocab_size: int) -> Self:
        """This config with the weight-shaping fields of a checkpoint's `arch` section
        (`vocab_size` resolved to `vocab_size` when the checkpoint left it to its dataset)."""
        updates = {key: arch[key] for key in SIZE_FIELDS if key in arch}
        updates["vocab_size"] = updates.get("vocab_size") or vocab_size
        return type(self).model_validate({**self.model_dump(), **updates})


TASK_ARCHS = ("bert_cls", "bert_ner", "bert_qa")
"""The fine-tuning architectures: sequence classification/regression, token
classification, extractive question answering."""

SIZE_FIELDS = (
    "num_layers", "hidden_size", "num_heads", "expansion", "max_position_embeddings", "vocab_size",
    "type_vocab_size", "layer_norm_eps", "initializer_range", "pad_vocab_to_multiple",
)  # fmt: skip
"""The fields that shape the weights: a fine-tuning run takes them from its starting checkpoint."""


class BertTaskConfig(BertConfig):
    """BERT with a fine-tuning head (`arch=bert_cls`, `bert_ner`, `bert_qa`).

    The encoder fields are `BertConfig`'s; with `+init_from` or `+init_from_hf` the sizes
    come from the starting checkpoint. The number of labels comes from the dataset.
    """

    name: Literal["bert_cls", "bert_ner", "bert_qa"]  # type: ignore[assignment]
    """Which head: [CLS] classification/regression, per-token classification, or answer spans."""
    loss: None = None  # type: ignore[assignment]
    """The pretraining loss section does not apply (the presets set it to null); the head
    decides the loss: cross-entropy, mean squared error for regression datasets, or the
    mean of the start and end cross-entropies."""
    classifier_dropout: float | None = None
    """Dropout before the classifier (`bert_cls`, `bert_ner`); None uses `hidden_dropout_prob`,
    as `transformers` does."""

    @model_validator(mode="after")
    def _check_classifier_dropout(self) -> BertTaskConfig:
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"arch.classifier_dropout must be in [0, 1) or null, got {self.classifier_dropout}")
        return self

    @property
    def head_dropout(self) -> float:
        """The dropout applied before the classifier."""
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout

