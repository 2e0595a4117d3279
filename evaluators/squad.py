"""SQuAD exact match and F1 with the official normalisation (v1.1 and v2.0 scripts), and
the evaluator that turns start/end logits into answers.

Normalisation: lower case, punctuation removed, the articles `a`, `an`, `the` removed,
whitespace collapsed. `exact_match` and `f1` (token overlap) take the best over the gold
answers and are reported in percent, as the official scripts print them. A question
without gold answers (v2.0 `is_impossible`) is right only when the prediction is empty
(both metrics 0 or 100); v2.0 sets also report `has_answer_*` and `no_answer_*`.

Decoding follows BERT's `run_squad.py`: over all windows of a question, the `n_best_size`
best starts and ends inside the context, end >= start, at most `max_answer_length` tokens;
the best start + end logit wins. With v2.0 data, the empty answer wins when the [CLS]
score (start + end at position 0, its minimum over windows) beats the best span plus
`null_score_diff_threshold`. Answers go to `predictions/<set>/predictions.json`
({question id: text}).
"""

from __future__ import annotations

import collections
import json
import re
import string

import numpy as np
import torch

from dataset.tasks.format import load_split, read_examples
from evaluators.base import EvaluatorOptions, FineTuningEvaluator

PUNCTUATION = set(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation."""
    text = "".join(character for character in text.lower() if character not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised tokens; when either is empty, 1.0 only if both are."""
    predicted_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:
        return float(predicted_tokens == gold_tokens)
    common = collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], examples: list[dict]) -> dict[str, float]:
    """exact_match and f1 in percent (and the has/no-answer splits when any question has no answer)."""
    per_question = []
    for example in examples:
        golds = [answer for answer in example["answers"] if normalize_answer(answer)] or [""]
        prediction = predictions.get(example["id"], "")
        per_question.append((max(exact_match(prediction, g) for g in golds), max(token_f1(prediction, g) for g in golds),
                             golds != [""]))
    scores = _percent(per_question)
    if any(not has_answer for *_, has_answer in per_question):
        for prefix, wanted in (("has_answer_", True), ("no_answer_", False)):
            part = [item for item in per_question if item[2] == wanted]
            scores.update({prefix + key: value for key, value in _percent(part).items()})
    return scores


def _percent(items: list[tuple[float, float, bool]]) -> dict[str, float]:
    if not items:
        return {"exact_match": 0.0, "f1": 0.0}
    return {"exact_match": 100.0 * sum(i[0] for i in items) / len(items), "f1": 100.0 * sum(i[1] for i in items) / len(items)}


def best_answer(windows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], context: str, n_best_size: int,
                max_answer_length: int) -> tuple[str, float, float]:
    """(answer text, its score, the null score) from each window's (start logits, end logits,
    character offsets (L, 2), -1 outside the context)."""
    best_text, best_score, null_score = "", -np.inf, np.inf
    for start_logits, end_logits, offsets in windows:
        null_score = min(null_score, float(start_logits[0] + end_logits[0]))
        in_context = offsets[: len(start_logits), 0] >= 0  # (W,)
        starts = [i for i in np.argsort(-start_logits)[:n_best_size] if in_context[i]]
        ends = [i for i in np.argsort(-end_logits)[:n_best_size] if in_context[i]]
        for start in starts:
            for end in ends:
                if end < start or end - start + 1 > max_answer_length:
                    continue
                score = float(start_logits[start] + end_logits[end])
                if score > best_score:
                    best_score, best_text = score, context[offsets[start, 0] : offsets[end, 1]]
    return best_text, best_score, null_score


class SquadEvaluatorConfig(EvaluatorOptions):
    """Options of the `squad` evaluator (unknown keys are refused)."""

    null_score_diff_threshold: float = 0.0
    """v2.0: answer nothing when the null score exceeds the best span's by more than this."""


class SquadEvaluator(FineTuningEvaluator):
    """Collects the start/end logits of every window, then decodes and scores each set."""

    required_outputs = ("start_logits", "end_logits")

    def __init__(self, data_path: str, config: SquadEvaluatorConfig | None = None):
        super().__init__(data_path)
        self.config = config or SquadEvaluatorConfig()

    def row_records(self, set_name: str, rows: list[int], positions: np.ndarray, batch: dict[str, torch.Tensor],
                    outputs: dict[str, torch.Tensor]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (start, end) logits of every real window."""
        starts, ends = outputs["start_logits"].float().numpy(), outputs["end_logits"].float().numpy()  # (B, W)
        return [(starts[position], ends[position]) for position in positions]

    def score_set(self, set_name: str,
                  rows: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, str]]:
        """Decode the set's answers; their scores and `<set>/predictions.json`."""
        examples = read_examples(self.root, set_name)
        predictions = self.predict(set_name, examples, rows)
        return squad_scores(predictions, examples), {f"{set_name}/predictions.json": json.dumps(predictions, indent=1)}

    def predict(self, set_name: str, examples: list[dict],
                rows: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
        """{question id: answer} of one set, whose `examples` were read by the caller."""
        arrays = load_split(self.root, self.metadata, set_name)
        windows: dict[int, list] = collections.defaultdict(list)
        for row, (starts, ends) in sorted(rows.items()):
            windows[int(arrays["example_index"][row])].append((starts, ends, np.asarray(arrays["offsets"][row])))
        options = self.metadata.options
        predictions = {}
        for index, example in enumerate(examples):
            text, score, null_score = best_answer(windows.get(index, []), example["context"],
                                                  options.get("n_best_size", 20), options.get("max_answer_length", 30))
            if options.get("version_2_with_negative") and null_score > score + self.config.null_score_diff_threshold:
                text = ""
            predictions[example["id"]] = text
        return predictions
