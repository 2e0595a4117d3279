"""The fine-tuning metrics against hand-computed values, CoNLL and SQuAD edge cases included."""

from __future__ import annotations

import numpy as np
import pytest

from evaluators.classification import (
    accuracy,
    classification_f1,
    classification_metrics,
    matthews_correlation,
    pearson,
    spearman,
)
from evaluators.ner import entities, entity_scores
from evaluators.squad import best_answer, exact_match, normalize_answer, squad_scores, token_f1


def test_binary_classification_metrics():
    predictions, labels = np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])
    assert accuracy(predictions, labels) == 0.5
    # TP 2, FP 1, FN 1: precision = recall = 2/3.
    assert classification_f1(predictions, labels, 2) == pytest.approx(2 / 3)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (0 - 1) / sqrt(3*3*1*1)
    assert matthews_correlation(predictions, labels, 2) == pytest.approx(-1 / 3)
    assert matthews_correlation(np.zeros(4, dtype=int), labels, 2) == 0.0  # constant prediction: undefined -> 0
    assert classification_f1(np.zeros(4, dtype=int), labels, 2) == 0.0


def test_multiclass_f1_and_mcc():
    labels, predictions = np.array([0, 1, 2, 0]), np.array([0, 2, 2, 0])
    # Per class F1: 1, 0, 2/3 -> macro 5/9. MCC: (3*4 - (2*2 + 1*0 + 1*2)) / sqrt((16 - 8) * (16 - 6)).
    assert classification_f1(predictions, labels, 3) == pytest.approx(5 / 9)
    assert matthews_correlation(predictions, labels, 3) == pytest.approx(6 / np.sqrt(80))
    logits = np.eye(3)[predictions]
    assert classification_metrics(logits, labels.astype(float)) == pytest.approx(
        {"accuracy": 0.75, "f1": 5 / 9, "mcc": 6 / np.sqrt(80)})


def test_correlations():
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / np.sqrt(2 * 114 / 9))
    # Ties share their mean rank: x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4.
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert classification_metrics(np.array([[0.1], [0.5], [0.3]]), np.array([1.0, 3.0, 2.0])) == pytest.approx(
        {"pearson": 1.0, "spearman": 1.0})


def test_conll_entities_in_iob2_iob1_and_bioes():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    # IOB1: I- starts an entity; B- only separates two adjacent entities of one type.
    assert entities(["I-PER", "I-PER", "B-PER", "O", "I-LOC"]) == {("PER", 0, 1), ("PER", 2, 2), ("LOC", 4, 4)}
    assert entities(["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]) == {("PER", 0, 0), ("LOC", 1, 3), ("LOC", 4, 4)}
    # A type change inside a chunk starts a new entity; an entity may end the sentence.
    assert entities(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    assert entities(["O", "O"]) == set()


def test_conll_scores_count_exact_entities_only():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-MISC"]]
    # gold: PER(0-1), LOC, ORG = 3; predicted: PER(0-0), LOC, ORG, MISC = 4; correct: LOC, ORG = 2.
    scores = entity_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(2 / 4) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("a cat and an apple, the end") == "cat and apple end"
    assert exact_match("the Beatles", "Beatles .") == 1.0
    # "in 1969" vs "1969 summer": overlap 1, precision 1/2, recall 1/2.
    assert token_f1("in 1969", "1969 summer") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    examples = [
        {"id": "q1", "answers": ["Paris", "the city of Paris"]},
        {"id": "q2", "answers": ["1969"]},
        {"id": "q3", "answers": []},  # v2.0: no answer
    ]
    scores = squad_scores({"q1": "city of Paris", "q2": "in 1969", "q3": ""}, examples)
    # q1: EM 1 (second gold), F1 1; q2: EM 0, F1 2/3; q3: right to abstain: 1, 1.
    assert scores["exact_match"] == pytest.approx(100 * 2 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert scores["no_answer_exact_match"] == 100.0 and scores["has_answer_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert squad_scores({"q3": "something"}, examples[2:]) == pytest.approx(
        {"exact_match": 0.0, "f1": 0.0, "has_answer_exact_match": 0.0, "has_answer_f1": 0.0,
         "no_answer_exact_match": 0.0, "no_answer_f1": 0.0})


def test_best_answer_searches_every_window_within_the_context():
    context = "alice went to paris in 1969"
    # Tokens: [CLS] q [SEP] then context words; offsets -1 outside the context.
    spans = [(0, 5), (6, 10), (11, 13), (14, 19), (20, 22), (23, 27)]
    offsets = np.array([(-1, -1), (-1, -1), (-1, -1), *spans], dtype=np.int32)
    start, end = np.zeros(9), np.zeros(9)
    start[1], end[1] = 9.0, 9.0  # the question token scores best but is outside the context
    start[8], end[8] = 3.0, 2.0  # "1969"
    start[6], end[8 - 1] = 2.5, 1.0
    text, score, null = best_answer([(start, end, offsets)], context, n_best_size=20, max_answer_length=30)
    assert text == "1969" and score == 5.0 and null == 0.0
    # A second window with a better span wins; the null score is the lowest [CLS] score.
    start2, end2 = np.full(9, -1.0), np.full(9, -1.0)
    start2[3], end2[6] = 6.0, 6.0
    start2[0], end2[0] = -2.0, -2.0
    text, score, null = best_answer([(start, end, offsets), (start2, end2, offsets)], context, 20, 30)
    assert text == "alice went to paris" and score == 12.0 and null == -4.0
    text, *_ = best_answer([(start2, end2, offsets)], context, 20, max_answer_length=2)
    assert text != "alice went to paris"  # four tokens is too long
