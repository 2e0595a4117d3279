"""Sequence classification and regression metrics (GLUE's), and the evaluator behind them.

Classification: `accuracy`, `f1` (of class id 1 for two classes, as GLUE reports MRPC and
QQP; the mean over classes, macro, for more) and `mcc` (Matthews correlation, CoLA's; the
multi-class form of Gorodkin 2004 for more than two classes). Regression: `pearson` and
`spearman` (STS-B's; ties get their mean rank). All in [0, 1] (correlations in [-1, 1]);
a metric that is undefined on the data (no variance) is 0, as scikit-learn and SciPy
return it.

The evaluator scores each evaluation set and writes `predictions/<set>.tsv` in the run
folder, GLUE's submission layout: `index<TAB>prediction`, the class name or the number.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluators.base import EvaluatorOptions, FineTuningEvaluator


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of exact matches."""
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def f1_score(predictions: np.ndarray, labels: np.ndarray, positive: int) -> float:
    """F1 of one class: 2 * precision * recall / (precision + recall); 0 without true positives."""
    true_positives = int(np.sum((predictions == positive) & (labels == positive)))
    predicted, actual = int(np.sum(predictions == positive)), int(np.sum(labels == positive))
    if true_positives == 0:
        return 0.0
    precision, recall = true_positives / predicted, true_positives / actual
    return 2 * precision * recall / (precision + recall)


def classification_f1(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """F1 of class 1 for two classes, the macro average over classes for more."""
    if num_classes == 2:
        return f1_score(predictions, labels, positive=1)
    return float(np.mean([f1_score(predictions, labels, positive=c) for c in range(num_classes)]))


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Matthews correlation coefficient (multi-class form; the usual one for two classes)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(confusion, (labels, predictions), 1.0)
    total, correct = confusion.sum(), np.trace(confusion)
    actual, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    numerator = correct * total - actual @ predicted
    denominator = np.sqrt(total**2 - predicted @ predicted) * np.sqrt(total**2 - actual @ actual)
    return float(numerator / denominator) if denominator > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side has no variance."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denominator) if denominator > 0 else 0.0


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    result = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        result[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return result


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of the ranks."""
    return pearson(ranks(x), ranks(y))


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics of (n, C) logits against (n,) class ids, or of (n, 1) outputs against targets."""
    if logits.shape[1] == 1:
        return {"pearson": pearson(logits[:, 0], labels), "spearman": spearman(logits[:, 0], labels)}
    predictions, labels = logits.argmax(axis=1), labels.astype(np.int64)
    num_classes = logits.shape[1]
    return {"accuracy": accuracy(predictions, labels), "f1": classification_f1(predictions, labels, num_classes),
            "mcc": matthews_correlation(predictions, labels, num_classes)}


class ClassificationEvaluatorConfig(EvaluatorOptions):
    """Options of the `classification` evaluator (none yet; unknown keys are refused)."""


class ClassificationEvaluator(FineTuningEvaluator):
    """Collects each row's logits and label, then scores every evaluation set."""

    required_outputs = ("logits",)

    def __init__(self, data_path: str, config: ClassificationEvaluatorConfig | None = None):
        super().__init__(data_path)

    def row_records(self, set_name: str, rows: list[int], positions: np.ndarray, batch: dict[str, torch.Tensor],
                    outputs: dict[str, torch.Tensor]) -> list[tuple[np.ndarray, float]]:
        """(logits, label) of every real row."""
        logits, labels = outputs["logits"].float().numpy(), batch["labels"].float().numpy()
        return [(logits[position], float(labels[position])) for position in positions]

    def score_set(self, set_name: str,
                  rows: dict[int, tuple[np.ndarray, float]]) -> tuple[dict[str, float], dict[str, str]]:
        """The set's metrics and `<set>.tsv`; nothing for a set without rows."""
        if not rows:
            return {}, {}
        order = sorted(rows)
        logits = np.stack([rows[row][0] for row in order])  # (n, C)
        labels = np.array([rows[row][1] for row in order])  # (n,)
        return classification_metrics(logits, labels), {f"{set_name}.tsv": self._tsv(order, logits)}

    def _tsv(self, rows: list[int], logits: np.ndarray) -> str:
        if logits.shape[1] == 1:
            values = [f"{value:.6f}" for value in logits[:, 0]]
        else:
            values = [self.metadata.labels[index] for index in logits.argmax(axis=1)]
        return "index\tprediction\n" + "".join(f"{row}\t{value}\n" for row, value in zip(rows, values))
