"""Entity-level precision, recall and F1 as the CoNLL-2000/2003 script (`conlleval`) counts
them, and the evaluator behind them.

An entity is a maximal chunk of one type; chunks start and end by conlleval's rules, so
IOB1, IOB2 and BIOES tags are all read correctly, and so are ill-formed predictions (an
`I-X` after `O` or after another type starts a new entity). A predicted entity counts
only when its type, start and end all match a gold one. Precision, recall and F1 are
micro-averaged over all entities of the set (`precision`, `recall`, `f1`), in [0, 1].

The evaluator maps each word's first-piece prediction back to the word, scores every
evaluation set and writes `predictions/<set>.conll`: `word gold predicted` per line, a
blank line between sentences (conlleval's input).
"""

from __future__ import annotations

import numpy as np
import torch

from dataset.tasks.format import load_split, read_examples
from evaluators.base import EvaluatorOptions, FineTuningEvaluator

Entity = tuple[str, int, int]
"""(type, first word, last word)."""


def _split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> (`B`, `PER`); `O` -> (`O`, ``)."""
    prefix, _, kind = tag.partition("-")
    return (prefix, kind) if kind else (tag, "")


def _chunk_ends(previous: str, previous_type: str, tag: str, kind: str) -> bool:
    """conlleval's endOfChunk: whether a chunk ends between the previous word and this one."""
    return (previous in ("E", "S")
            or (previous in ("B", "I") and tag in ("B", "S", "O"))
            or (previous != "O" and previous_type != kind))


def _chunk_starts(previous: str, previous_type: str, tag: str, kind: str) -> bool:
    """conlleval's startOfChunk: whether a chunk starts at this word."""
    return (tag in ("B", "S")
            or (previous in ("E", "S", "O") and tag in ("E", "I"))
            or (tag != "O" and previous_type != kind))


def entities(tags: list[str]) -> set[Entity]:
    """The entities of one sentence's tags."""
    found, start = set(), None
    previous, previous_type = "O", ""
    for position, full_tag in enumerate([*tags, "O"]):  # the final O closes a chunk at the end
        tag, kind = _split_tag(full_tag)
        if start is not None and _chunk_ends(previous, previous_type, tag, kind):
            found.add((previous_type, start, position - 1))
            start = None
        if _chunk_starts(previous, previous_type, tag, kind):
            start = position
        previous, previous_type = tag, kind
    return found


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over the entities of all sentences."""
    correct = num_gold = num_predicted = 0
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        gold_entities, predicted_entities = entities(gold_tags), entities(predicted_tags)
        correct += len(gold_entities & predicted_entities)
        num_gold += len(gold_entities)
        num_predicted += len(predicted_entities)
    precision = correct / num_predicted if num_predicted else 0.0
    recall = correct / num_gold if num_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


class NEREvaluatorConfig(EvaluatorOptions):
    """Options of the `ner` evaluator (none yet; unknown keys are refused)."""


class NEREvaluator(FineTuningEvaluator):
    """Collects each sentence's word-level predictions, then scores every evaluation set."""

    required_outputs = ("predictions",)

    def __init__(self, data_path: str, config: NEREvaluatorConfig | None = None):
        super().__init__(data_path)
        self.word_ids = {name: load_split(self.root, self.metadata, name)["word_ids"] for name in self.metadata.eval_sets}

    def row_records(self, set_name: str, rows: list[int], positions: np.ndarray, batch: dict[str, torch.Tensor],
                    outputs: dict[str, torch.Tensor]) -> list[dict[int, int]]:
        """{word: predicted tag id} of every real row, read at each word's first piece."""
        predictions = outputs["predictions"].numpy()  # (B, W)
        width = predictions.shape[1]
        records = []
        for row, position in zip(rows, positions):
            word_ids = np.asarray(self.word_ids[set_name][row, :width])  # (W,)
            first_pieces = np.flatnonzero(word_ids >= 0)
            records.append(dict(zip(word_ids[first_pieces].tolist(), predictions[position, first_pieces].tolist())))
        return records

    def score_set(self, set_name: str, rows: dict[int, dict[int, int]]) -> tuple[dict[str, float], dict[str, str]]:
        """Entity scores and word accuracy of the set, and `<set>.conll`."""
        examples = read_examples(self.root, set_name)
        gold = [example["tags"] for example in examples]
        predicted = [[self.metadata.labels[rows.get(index, {}).get(word, 0)] for word in range(len(example["words"]))]
                     for index, example in enumerate(examples)]
        scores = entity_scores(gold, predicted)
        words = sum(len(tags) for tags in gold)
        scores["accuracy"] = sum(g == p for gs, ps in zip(gold, predicted) for g, p in zip(gs, ps)) / max(words, 1)
        lines = ["".join(f"{w} {g} {p}\n" for w, g, p in zip(e["words"], gs, ps)) + "\n"
                 for e, gs, ps in zip(examples, gold, predicted)]
        return scores, {f"{set_name}.conll": "".join(lines)}
