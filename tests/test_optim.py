"""Optimisers and schedules against hand computations."""

import math

import pytest
import torch
from torch import nn

from models.interface import decay_groups
from models.layers import SparsePuzzleEmbedding
from training.ema import EMA
from training.optim import AdamAtan2, SparseSignSGD
from training.schedule import LRSchedule, learning_rate


def test_adam_atan2_matches_hand_computation():
    param = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = AdamAtan2([param], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1)
    grads = [[0.5, -0.1], [0.2, 0.3]]
    expected = [1.0, -2.0]
    m, v = [0.0, 0.0], [0.0, 0.0]
    for step, grad in enumerate(grads, start=1):
        param.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
        for i in range(2):
            m[i] = 0.9 * m[i] + 0.1 * grad[i]
            v[i] = 0.95 * v[i] + 0.05 * grad[i] ** 2
            m_hat, v_hat = m[i] / (1 - 0.9**step), v[i] / (1 - 0.95**step)
            expected[i] = expected[i] * (1 - 0.1 * 0.1) - 0.1 * math.atan2(m_hat, math.sqrt(v_hat))
        torch.testing.assert_close(param.detach(), torch.tensor(expected, dtype=torch.float64))
    # First step: atan2(g, |g|) = +-pi/4 whatever the gradient's scale.
    assert abs((1.0 * 0.99 - 0.1 * math.pi / 4) - (1.0 * 0.99 - 0.1 * math.atan2(0.5, 0.5))) < 1e-12


def test_adam_atan2_is_scale_invariant_on_first_step():
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(3))
    opt_a, opt_b = AdamAtan2([a], lr=0.01), AdamAtan2([b], lr=0.01)
    a.grad = torch.tensor([1.0, -3.0, 0.5])
    b.grad = a.grad * 1000
    opt_a.step()
    opt_b.step()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.detach(), torch.tensor([-1.0, 1.0, -1.0]) * 0.01 * math.pi / 4)


def test_adam_atan2_state_round_trips_through_weights_only_load(tmp_path):
    param = nn.Parameter(torch.ones(4))
    optimizer = AdamAtan2([param], lr=0.1)
    param.grad = torch.ones(4)
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    restored = AdamAtan2([nn.Parameter(param.detach().clone())], lr=0.1)
    restored.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert restored.state_dict()["state"][0]["step"].item() == 1


def test_sparse_sign_sgd_sums_duplicates_and_touches_only_used_rows():
    table = SparsePuzzleEmbedding(5, 2).train()
    table.weight += 1.0
    rows = table(torch.tensor([1, 3]))
    rows.grad = torch.tensor([[0.5, -1.0], [-2.0, 0.0]])
    rows = table(torch.tensor([1]))  # a second use in the same step (gradient accumulation)
    rows.grad = torch.tensor([[-1.0, 0.5]])
    SparseSignSGD([table], lr=0.1, weight_decay=0.5).step()
    # Row 1: summed grad (-0.5, -0.5) -> sign (-1, -1); row 3: (-1, 0).
    expected = torch.ones(5, 2)
    decayed = 1.0 * (1 - 0.1 * 0.5)
    expected[1] = torch.tensor([decayed + 0.1, decayed + 0.1])
    expected[3] = torch.tensor([decayed + 0.1, decayed])
    torch.testing.assert_close(table.weight, expected)
    assert table.last_rows is None


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_learning_rate_schedule(schedule):
    lr = lambda step: learning_rate(step, 1.0, warmup_steps=10, total_steps=110, min_ratio=0.1, schedule=schedule)
    assert lr(0) == 0.0
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)
    assert lr(110) == pytest.approx(0.1)
    midpoint = 0.1 + 0.9 * 0.5  # half-way: cos(pi/2) = 0 and the line is at 1/2
    assert lr(60) == pytest.approx(midpoint)
    if schedule == "cosine":
        assert lr(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    else:
        assert lr(35) == pytest.approx(0.1 + 0.9 * 0.75)


def test_constant_after_warmup_with_min_ratio_one():
    assert learning_rate(500, 2.0, 100, 1000, 1.0) == pytest.approx(2.0)


def test_peak_and_short_run_problems_follow_the_schedule():
    # The BERT presets' schedule stopped by max_steps=30: lr 1e-4, 10,000 warm-up steps.
    schedule = LRSchedule({"weights": 1e-4}, warmup_steps=10_000, total_steps=287_500, min_ratio=0.0, shape="linear")
    assert schedule.peak_lr(30) == pytest.approx(1e-4 * 30 / 10_000)
    assert schedule.peak_lr(287_500) == pytest.approx(1e-4)
    assert schedule.describe(30) == ("learning rate: 10000 warm-up steps to lr=0.0001, linear decay to 0 at step "
                                     "287500; this run peaks at 3e-07 and ends at 3e-07 (step 30)")
    assert schedule.short_run_problem(30) == ("stops at step 30, inside the 10000-step warm-up: its learning rate "
                                              "peaks at 3e-07, 0.3% of lr=0.0001")
    # Past warm-up but before 10% of the decay: 20,000 of 287,500 steps (lr(20000) = 1e-4 * (1 - 10000/277500)).
    assert schedule.short_run_problem(20_000) == ("stops at step 20000, 7.0% of the 287500-step schedule: its "
                                                  "learning rate never decays (it ends at 9.64e-05)")
    assert schedule.short_run_problem(28_750) is None and schedule.short_run_problem(287_500) is None
    # A constant rate after warm-up has nothing to decay: only warm-up counts.
    constant = LRSchedule({"weights": 1e-3}, warmup_steps=100, total_steps=10_000, min_ratio=1.0, shape="cosine")
    assert constant.short_run_problem(200) is None and constant.short_run_problem(50) is not None
    assert constant.describe(200).startswith("learning rate: 100 warm-up steps to lr=0.001, constant after it;")


def test_decay_groups_exclude_vectors():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    decay, no_decay = decay_groups(model, 0.01)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_ema_follows_formula_and_swaps_back():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))
    with ema.swapped_in(model):
        torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 1.2))
    torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 3.0))
