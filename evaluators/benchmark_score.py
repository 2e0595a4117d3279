"""How a downstream benchmark turns dev metrics into one number per task and one overall.

The GLUE rule (Wang et al. 2018, "GLUE: A Multi-Task Benchmark and Analysis Platform for
Natural Language Understanding", arXiv:1804.07461, and the gluebenchmark.com leaderboard
that applies it): a task with several metrics scores the unweighted mean of them (MRPC and
QQP: F1 and accuracy; STS-B: Pearson and Spearman), MNLI the mean of its matched and
mismatched accuracy, and the GLUE score is the unweighted mean of the nine task scores,
WNLI included; the diagnostic set (AX) is not part of it. Check: the leaderboard's BERT-Base
row (CoLA 52.1, SST-2 93.5, MRPC 88.9/84.8, STS-B 87.1/85.8, QQP 71.2/89.2, MNLI 84.6/83.4,
QNLI 90.5, RTE 66.4, WNLI 65.1) gives 78.34, the 78.3 it shows
(`tests/test_finetune_suite_scores.py`). The BERT paper's own 79.6 is another rule: one
metric per task, MNLI-m and -mm as two entries, WNLI left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dataset.tasks.catalog import GLUE_TASKS


def task_score(metrics: Sequence[float]) -> float:
    """A task's score: the unweighted mean of its metrics (one metric: that metric)."""
    return float(np.mean(metrics))


def glue_score(task_scores: dict[str, float]) -> float | None:
    """The GLUE score of per-task scores, or None unless all nine tasks are there."""
    if any(name not in task_scores for name in GLUE_TASKS):
        return None
    return float(np.mean([task_scores[name] for name in GLUE_TASKS]))


def seed_summary(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum and spread (max - min) of one setting's scores over seeds."""
    array = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(array)), "min": float(array.min()), "max": float(array.max()),
            "spread": float(array.max() - array.min())}
