"""BERT with the fine-tuning heads of Devlin et al. (2018), one-to-one with `transformers`:

- `BertSequenceClassifier` (`arch=bert_cls`): pooler (dense + tanh on [CLS]), dropout and
  a linear classifier, as `BertForSequenceClassification`; cross-entropy over the classes,
  or mean squared error when the dataset is a regression (one output);
- `BertTokenClassifier` (`arch=bert_ner`): dropout and a linear classifier on every token,
  as `BertForTokenClassification`; cross-entropy over the scored tokens (first word pieces);
- `BertQuestionAnswering` (`arch=bert_qa`): a linear layer giving start and end logits per
  token, as `BertForQuestionAnswering`; the mean of the start and end cross-entropies.

The encoder is `BertEncoder`'s, so the parameter names (`embeddings.*`, `layers.*`,
`pooler.*`) are the pretraining model's and `+init_from` loads them by name. With
`unpad` (default), every head runs on the real tokens only, as pretraining does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.constants import IGNORE_LABEL_ID
from core.errors import UserError
from models.bert.model import BertEncoder, TokenLayout, first_column
from models.interface import Carry, StepOutput

if TYPE_CHECKING:
    from models.bert.config import BertTaskConfig

TASK_OF_ARCH = {
    "bert_cls": ("classification", "regression"),
    "bert_ner": ("token_classification",),
    "bert_qa": ("question_answering",),
}
"""The dataset tasks each head can learn."""

ARCH_OF_TASK = {task: arch for arch, tasks in TASK_OF_ARCH.items() for task in tasks}


class BertTaskModel(BertEncoder):
    """The encoder, the final states of the real tokens, and what every head shares."""

    def final_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, TokenLayout]:
        """Final hidden states of the real tokens (N, H) and where they sit in (B, L)."""
        if self.config.unpad:
            return self.encode_tokens(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        hidden = self.encode(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])  # (B, L, H)
        layout = TokenLayout(self.real_tokens(batch["attention_mask"]))
        return layout.gather(hidden), layout

    def loss_counts(self, carry: Carry, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Real rows: the loss is averaged over rows (sentences, SQuAD windows), and the
        padding rows of the last batch carry no label."""
        return {"loss": (batch["row_index"] >= 0).sum()}


class BertSequenceClassifier(BertTaskModel):
    """[CLS] -> pooler -> dropout -> classifier; `num_labels` 1 is a regression."""

    def __init__(self, config: BertTaskConfig, vocab_size: int, num_labels: int, pad_id: int = 0):
        super().__init__(config, vocab_size)
        self.num_labels = num_labels
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.reset_parameters(pad_id)

    def head(self, first: torch.Tensor) -> torch.Tensor:
        """[CLS] states (B, H) -> logits (B, num_labels)."""
        pooled = torch.tanh(self.pooler(first))  # (B, H)
        return self.classifier(self.dropout(pooled))

    def logits(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, num_labels), as `BertForSequenceClassification(...).logits`."""
        return self.head(self.encode(input_ids, token_type_ids, attention_mask)[:, 0])

    def head_flops(self, batch: dict[str, np.ndarray], num_tokens: int) -> int:
        """Pooler and classifier on each row's [CLS] state."""
        hidden = self.config.hidden_size
        return 2 * len(batch["input_ids"]) * hidden * (hidden + self.num_labels)

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Loss and accuracy (or squared error) over the rows that carry a label."""
        tokens, layout = self.final_states(batch)
        logits = self.head(tokens[layout.gather(first_column(batch["attention_mask"]))]).float()  # (B, C)
        valid = batch["row_index"] >= 0  # (B,)
        num_rows = valid.sum()
        labels = batch["labels"]
        if self.num_labels == 1:
            error = (logits[:, 0] - labels.float()) ** 2  # (B,)
            loss_sum = (error * valid).sum()
            metrics = {}
        else:
            loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL_ID, reduction="sum")
            correct = (logits.argmax(dim=-1) == labels) & valid  # (B,)
            metrics = {"accuracy": (correct.sum(), num_rows)}
        return StepOutput(carry={}, losses={"loss": (loss_sum, num_rows)}, metrics=metrics,
                          outputs={"logits": logits.detach()})


class BertTokenClassifier(BertTaskModel):
    """Every token -> dropout -> classifier over the tags."""

    def __init__(self, config: BertTaskConfig, vocab_size: int, num_labels: int, pad_id: int = 0):
        super().__init__(config, vocab_size)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.reset_parameters(pad_id)

    def logits(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, num_labels), as `BertForTokenClassification(...).logits`."""
        return self.classifier(self.dropout(self.encode(input_ids, token_type_ids, attention_mask)))

    def head_flops(self, batch: dict[str, np.ndarray], num_tokens: int) -> int:
        """The classifier on every real token."""
        return 2 * num_tokens * self.config.hidden_size * self.num_labels

    def loss_counts(self, carry: Carry, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tokens that carry a tag (first word pieces of real words)."""
        return {"loss": (batch["labels"] != IGNORE_LABEL_ID).sum()}

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> StepOutput:
        """Loss and tag accuracy over the scored tokens; the predicted tag of every token."""
        tokens, layout = self.final_states(batch)
        logits = self.classifier(self.dropout(tokens)).float()  # (N, C)
        labels = layout.gather(batch["labels"])  # (N,)
        scored = labels != IGNORE_LABEL_ID  # (N,)
        num_scored = scored.sum()
        loss_sum = F.cross_entropy(logits, labels, ignore_index=IGNORE_LABEL_ID, reduction="sum")
        predictions = logits.argmax(dim=-1)  # (N,)
        correct = (predictions == labels) & scored
        return StepOutput(carry={}, losses={"loss": (loss_sum, num_scored)},
                          metrics={"tag_accuracy": (correct.sum(), num_scored)},
                          outputs={"predictions": layout.pad(predictions)})  # (B, L), 0 at padding


class BertQuestionAnswering(BertTaskModel):
    """Every token -> (start, end) logits."""

    def __init__(self, config: BertTaskConfig, vocab_size: int, pad_id: int = 0):
        super().__init__(config, vocab_size)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.reset_parameters(pad_id)

    def logits(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits (B, L) each, as `BertForQuestionAnswering`'s."""
        both = self.qa_outputs(self.encode(input_ids, token_type_ids, attention_mask))  # (B, L, 2)
        return both[..., 0], both[..., 1]

    def head_flops(self, batch: dict[str, np.ndarray], num_tokens: int) -> int:
        """Start and end logits of every real token."""
        return 2 * num_tokens * self.config.hidden_size * 2

    def forward(self, carry: Carry, batch: dict[str, torch.Tensor]) -> StepOutput:
        """(start loss + end loss) / 2 per window; start and end logits for the evaluator."""
        tokens, layout = self.final_states(batch)
        both = layout.pad(self.qa_outputs(tokens).float())  # (B, L, 2), 0 at padding
        padding = ~layout.pad(torch.ones_like(tokens[:, 0], dtype=torch.bool))  # (B, L)
        both = both.masked_fill(padding[..., None], float("-inf"))
        start_logits, end_logits = both[..., 0], both[..., 1]  # (B, L) each
        valid = batch["row_index"] >= 0  # (B,)
        start_loss = F.cross_entropy(start_logits, batch["start_positions"], ignore_index=IGNORE_LABEL_ID, reduction="sum")
        end_loss = F.cross_entropy(end_logits, batch["end_positions"], ignore_index=IGNORE_LABEL_ID, reduction="sum")
        return StepOutput(carry={}, losses={"loss": ((start_loss + end_loss) / 2, valid.sum())},
                          outputs={"start_logits": start_logits.detach(), "end_logits": end_logits.detach()})


def build_task_model(config: BertTaskConfig, metadata) -> BertTaskModel:
    """The head `config.name` for a fine-tuning dataset (`dataset.tasks.format.TaskDatasetMetadata`).

    Raises `UserError` naming what to change when the head does not fit the data.
    """
    if metadata.task not in TASK_OF_ARCH[config.name]:
        raise UserError(f"arch={config.name} cannot learn a {metadata.task} dataset; use arch={ARCH_OF_TASK[metadata.task]}")
    if config.max_position_embeddings < metadata.seq_len:
        raise UserError(
            f"the dataset's sequence length ({metadata.seq_len}) exceeds arch.max_position_embeddings "
            f"({config.max_position_embeddings}); rebuild the dataset with --max-seq-length {config.max_position_embeddings}"
        )
    if config.vocab_size is not None and config.vocab_size < metadata.vocab_size:
        raise UserError(
            f"arch.vocab_size ({config.vocab_size}) is smaller than the dataset's vocabulary ({metadata.vocab_size}); "
            "build the dataset with the starting checkpoint's tokenizer (--tokenizer CHECKPOINT/tokenizer)"
        )
    vocab_size = config.resolved_vocab_size(metadata.vocab_size)
    if config.name == "bert_qa":
        return BertQuestionAnswering(config, vocab_size, metadata.pad_id)
    if metadata.num_labels < 1 or (metadata.task == "classification" and metadata.num_labels < 2):
        raise UserError(f"the dataset has {metadata.num_labels} label(s); a classifier needs at least 2")
    model_class = BertSequenceClassifier if config.name == "bert_cls" else BertTokenClassifier
    return model_class(config, vocab_size, metadata.num_labels, metadata.pad_id)
