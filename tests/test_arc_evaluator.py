"""The ARC voting evaluator and the evaluator registry, on a tiny built dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError
from dataset.puzzles import arc
from evaluators import gather
from evaluators.arc import ARCEvaluator, ARCEvaluatorConfig
from evaluators.registry import build_evaluators
from tests.test_arc_dataset import build_synthetic, load_split

BATCH = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("arc_eval"), num_aug=8)


@pytest.fixture(scope="module")
def test_rows(data) -> dict[str, np.ndarray]:
    """Test split, one entry per example: inputs, labels, identifier, name, test index."""
    split = load_split(data, "test")
    identifiers = np.repeat(split["puzzle_identifiers"], np.diff(split["puzzle_indices"]))
    test_index = np.concatenate([np.arange(n) for n in np.diff(split["puzzle_indices"])])
    names = json.loads((data / "identifiers.json").read_text())
    base_ids = np.array([names[i].split("|||")[0] for i in identifiers])
    return {
        "inputs": split["inputs"], "labels": split["labels"], "identifiers": identifiers,
        "puzzle": base_ids, "index": test_index, "root": str(data),
    }


def feed(evaluator: ARCEvaluator, inputs, preds, identifiers, halt_logits, seed: int = 0) -> None:
    """Send rows in batches of BATCH, padding the last one with junk rows of identifier 0."""
    rng = np.random.default_rng(seed)
    for start in range(0, len(inputs), BATCH):
        stop = min(start + BATCH, len(inputs))
        pad = BATCH - (stop - start)
        junk = rng.integers(0, 12, size=(pad, 900))
        batch = {
            "inputs": torch.from_numpy(np.concatenate([inputs[start:stop], junk]).astype(np.int32)),
            "puzzle_identifiers": torch.from_numpy(np.concatenate([identifiers[start:stop], np.zeros(pad, dtype=np.int64)])),
        }
        outputs = {
            "preds": torch.from_numpy(np.concatenate([preds[start:stop], junk]).astype(np.int64)),
            "q_halt_logits": torch.from_numpy(np.concatenate([halt_logits[start:stop], np.zeros(pad)]).astype(np.float32)),
        }
        evaluator.update("all", batch, outputs)


def recolour_tokens(tokens: np.ndarray) -> np.ndarray:
    """Every colour c -> (c + 1) mod 10, markers and padding kept."""
    colours = tokens >= arc.COLOUR_OFFSET
    shifted = tokens.copy()
    shifted[colours] = (tokens[colours] - arc.COLOUR_OFFSET + 1) % 10 + arc.COLOUR_OFFSET
    return shifted


def wrong_tokens(test_rows, rows: np.ndarray) -> np.ndarray:
    """A wrong answer that is the same grid in the original frame for every copy:
    the true output with colour c -> (c + 1) mod 10, then augmented as the row's copy."""
    names = json.loads((Path(test_rows["root"]) / "identifiers.json").read_text())
    result = []
    for row in rows:
        _, k, mapping = arc.parse_augmented_name(names[test_rows["identifiers"][row]])
        truth = arc.invert_augmentation(arc.crop_grid(test_rows["labels"][row]), k, mapping)
        result.append(arc.encode_grid(arc.augment_grid((truth + 1) % 10, k, mapping)))
    return np.stack(result)


def test_ground_truth_under_random_augmentations_scores_one(data, test_rows, tmp_path):
    rng = np.random.default_rng(0)
    # Each test input gets one to three random augmented copies, in a random order.
    chosen = []
    for key in {(p, i) for p, i in zip(test_rows["puzzle"], test_rows["index"])}:
        rows = np.flatnonzero((test_rows["puzzle"] == key[0]) & (test_rows["index"] == key[1]))
        chosen.extend(rng.choice(rows, size=rng.integers(1, 4), replace=False))
    chosen = rng.permutation(chosen)
    evaluator = ARCEvaluator(data)
    evaluator.begin()
    feed(evaluator, test_rows["inputs"][chosen], test_rows["labels"][chosen], test_rows["identifiers"][chosen], rng.normal(size=len(chosen)))
    metrics = evaluator.finish(tmp_path, 0, 1)
    assert metrics == {f"ARC/pass@{k}": 1.0 for k in (1, 2, 5, 10, 100, 1000)}
    submission = json.loads((tmp_path / "submission.json").read_text())
    test_puzzles = json.loads((data / "test_puzzles.json").read_text())
    assert submission.keys() == test_puzzles.keys()
    for puzzle_id, attempts in submission.items():
        assert [a["attempt_1"] for a in attempts] == [pair["output"] for pair in test_puzzles[puzzle_id]["test"]]
        assert all(a["attempt_2"] == [[0]] for a in attempts)  # a single distinct prediction each


def test_wrong_answers_score_zero(data, test_rows, tmp_path):
    evaluator = ARCEvaluator(data)
    evaluator.begin()
    rows = test_rows
    every_row = np.arange(len(rows["inputs"]))
    feed(evaluator, rows["inputs"], wrong_tokens(rows, every_row), rows["identifiers"], np.ones(len(rows["inputs"])))
    assert set(evaluator.finish(tmp_path, 0, 1).values()) == {0.0}
    # The wrong grid is the same in the original frame for all copies: one candidate each.
    assert all(len(predictions) == 1 for predictions in evaluator.votes.values())
    assert len(evaluator.votes) == 3  # evalA004 has 2 test inputs, evalB005 1


def copies_of(test_rows, puzzle: str, index: int) -> np.ndarray:
    return np.flatnonzero((test_rows["puzzle"] == puzzle) & (test_rows["index"] == index))


@pytest.mark.parametrize(
    "right_logits, wrong_logits, pass_at_1, pass_at_2",
    [
        ([4.0], [-4.0, -4.0], 0.0, 1.0),  # more votes win over a higher halting probability
        ([4.0], [-4.0], 1.0, 1.0),  # tie on votes: the higher mean halting probability wins
        ([-4.0], [4.0], 0.0, 1.0),
        ([1.0, 1.0], [5.0, -5.0], 1.0, 1.0),  # tie: mean sigmoid 0.73 against 0.5
        ([1.0, 1.0, -9.0], [9.0, 9.0, 9.0], 0.0, 1.0),
    ],
)
def test_ranking_counts_votes_then_mean_halting_probability(data, test_rows, tmp_path, right_logits, wrong_logits, pass_at_1, pass_at_2):
    # evalA004 has two test inputs; only its first gets votes, evalB005 none.
    rows = copies_of(test_rows, "evalA004", 0)[: len(right_logits) + len(wrong_logits)]
    right, wrong = rows[: len(right_logits)], rows[len(right_logits) :]
    preds = np.concatenate([test_rows["labels"][right], wrong_tokens(test_rows, wrong)])
    evaluator = ARCEvaluator(data, ARCEvaluatorConfig(pass_Ks=[1, 2]))
    evaluator.begin()
    feed(evaluator, test_rows["inputs"][rows], preds, test_rows["identifiers"][rows], np.array(right_logits + wrong_logits))
    metrics = evaluator.finish(tmp_path, 0, 1)
    # Mean over 2 puzzles of (solved inputs / 2) for evalA004 and 0 for evalB005.
    assert metrics == {"ARC/pass@1": pass_at_1 / 4, "ARC/pass@2": pass_at_2 / 4}
    attempts = json.loads((tmp_path / "submission.json").read_text())["evalA004"]
    truth = json.loads((data / "test_puzzles.json").read_text())["evalA004"]["test"][0]["output"]
    assert (attempts[0]["attempt_1"] == truth) == bool(pass_at_1)
    assert attempts[1] == {"attempt_1": [[0]], "attempt_2": [[0]]}


@pytest.mark.parametrize("aggregated", [False, True])
def test_begin_clears_votes_unless_aggregated(data, test_rows, tmp_path, aggregated):
    evaluator = ARCEvaluator(data, ARCEvaluatorConfig(aggregated_voting=aggregated, pass_Ks=[1]))
    rows = test_rows
    evaluator.begin()
    feed(evaluator, rows["inputs"], rows["labels"], rows["identifiers"], np.zeros(len(rows["inputs"])))
    assert evaluator.finish(tmp_path, 0, 1) == {"ARC/pass@1": 1.0}
    # Second round: every copy votes wrong once. Aggregated, the right grid keeps a tie on
    # votes and wins on halting probability (logit 0 against -1); otherwise it is gone.
    evaluator.begin()
    feed(evaluator, rows["inputs"], wrong_tokens(rows, np.arange(len(rows["inputs"]))), rows["identifiers"], -np.ones(len(rows["inputs"])))
    assert evaluator.finish(tmp_path, 0, 1) == {"ARC/pass@1": 1.0 if aggregated else 0.0}
    counts = sorted(entry[1] for predictions in evaluator.votes.values() for entry in predictions.values())
    assert sum(counts) == len(rows["inputs"]) * (2 if aggregated else 1)


def test_votes_are_gathered_across_ranks(data, test_rows, tmp_path, monkeypatch):
    rows = test_rows
    halt_logits = np.random.default_rng(1).normal(size=len(rows["inputs"]))
    preds = rows["labels"].copy()
    # A mix of right and wrong votes: evalB005 gets 6 wrong of 9, the others one in three.
    wrong = np.concatenate([copies_of(rows, "evalB005", 0)[:6], np.flatnonzero(rows["puzzle"] == "evalA004")[::3]])
    preds[wrong] = wrong_tokens(rows, wrong)
    single = ARCEvaluator(data)
    feed(single, rows["inputs"], preds, rows["identifiers"], halt_logits)
    expected = single.finish(tmp_path / "single", 0, 1)
    ranks = [ARCEvaluator(data), ARCEvaluator(data)]
    for rank, evaluator in enumerate(ranks):
        part = slice(rank, None, 2)
        feed(evaluator, rows["inputs"][part], preds[part], rows["identifiers"][part], halt_logits[part])
    assert expected["ARC/pass@1"] == 0.5 and expected["ARC/pass@2"] == 1.0

    def fake_all_gather_object(output, obj):
        output[:] = [evaluator.votes for evaluator in ranks]

    monkeypatch.setattr(gather.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(gather.dist, "all_gather_object", fake_all_gather_object)
    assert ranks[1].finish(tmp_path / "rank1", 1, 2) is None and not (tmp_path / "rank1").exists()
    assert ranks[0].finish(tmp_path / "rank0", 0, 2) == pytest.approx(expected)
    assert (tmp_path / "rank0" / "submission.json").read_text() == (tmp_path / "single" / "submission.json").read_text()


def test_input_matching_no_test_input_is_an_error(data, test_rows):
    evaluator = ARCEvaluator(data)
    row = copies_of(test_rows, "evalA004", 0)[:1]
    with pytest.raises(ValueError, match="matches none of its test inputs"):
        feed(evaluator, recolour_tokens(test_rows["inputs"][row]), test_rows["labels"][row], test_rows["identifiers"][row], np.zeros(1))


def test_registry_builds_and_validates(data):
    (evaluator,) = build_evaluators([{"name": "arc@ARC", "pass_Ks": [1, 2], "aggregated_voting": True}], [str(data)])
    assert isinstance(evaluator, ARCEvaluator) and evaluator.config.pass_Ks == [1, 2] and evaluator.config.aggregated_voting
    assert build_evaluators([{"name": "arc"}], [str(data)])[0].config.submission_K == 2
    with pytest.raises(UserError, match="unknown evaluator 'mlm'.*arc, classification, ner, puzzle_predictions, squad, arc@ARC"):
        build_evaluators([{"name": "mlm"}], [str(data)])
    with pytest.raises(UserError, match="pass_ks: unknown option"):
        build_evaluators([{"name": "arc", "pass_ks": [1]}], [str(data)])
    with pytest.raises(UserError, match="submission_K"):
        build_evaluators([{"name": "arc", "submission_K": 0}], [str(data)])
    with pytest.raises(UserError, match="identifiers.json not found"):
        build_evaluators([{"name": "arc"}], [str(data / "train")])
