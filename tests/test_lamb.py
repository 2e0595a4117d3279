"""LAMB against a direct implementation of the published formulas (You et al. 2019,
Algorithm 2, in NVIDIA's variant: see training/lamb.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.interface import decay_groups
from training.lamb import Lamb

BETAS, EPS = (0.9, 0.999), 1e-6


def reference_step(params: list[torch.Tensor], grads: list[torch.Tensor], moments: list[list[torch.Tensor]],
                   step: int, lr: float, weight_decay: float) -> None:
    """One LAMB step written from the formulas, tensor by tensor, in float64 and in place.

    Biases and LayerNorm weights (1-d tensors) get neither weight decay nor a trust ratio.
    """
    beta1, beta2 = BETAS
    for param, grad, (m, v) in zip(params, grads, moments):
        excluded = param.ndim < 2
        m.mul_(beta1).add_((1 - beta1) * grad)
        v.mul_(beta2).add_((1 - beta2) * grad * grad)
        m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
        update = m_hat / (v_hat.sqrt() + EPS) + (0.0 if excluded else weight_decay) * param
        w_norm, u_norm = math.sqrt(float((param * param).sum())), math.sqrt(float((update * update).sum()))
        trust = 1.0 if excluded or w_norm == 0 or u_norm == 0 else w_norm / u_norm
        param.sub_(lr * trust * update)


def _model() -> nn.Module:
    """A matrix, a bias, LayerNorm weight and bias, and a zero matrix (trust ratio 1 at step 1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[2].weight.zero_()
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.01, 0.3])
def test_lamb_matches_the_published_formulas(weight_decay):
    model = _model()
    optimizer = Lamb(decay_groups(model, weight_decay), lr=0.05, betas=BETAS, eps=EPS)
    reference = [param.detach().double().clone() for param in model.parameters()]
    moments = [[torch.zeros_like(param), torch.zeros_like(param)] for param in reference]
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        grads = [torch.randn(param.shape, generator=generator, dtype=torch.float64) * 10 ** (step % 3 - 1)
                 for param in reference]
        for param, grad in zip(model.parameters(), grads):
            param.grad = grad.float()
        optimizer.step()
        reference_step(reference, grads, moments, step, lr=0.05, weight_decay=weight_decay)
        for name, (param, expected) in zip([n for n, _ in model.named_parameters()], zip(model.parameters(), reference)):
            assert (param.detach().double() - expected).abs().max().item() <= 1e-6, (step, name)
    # The trust ratio made the matrices move by lr * ||w|| in step 5, the excluded vectors did not.
    assert not torch.equal(model[2].weight.detach(), torch.zeros(2, 4))


def test_trust_ratio_scales_each_matrix_update_to_lr_times_its_norm():
    matrix = nn.Parameter(torch.full((3, 3), 2.0))  # ||w|| = 6
    bias = nn.Parameter(torch.full((3,), 2.0))
    optimizer = Lamb([{"params": [matrix], "weight_decay": 0.0}, {"params": [bias], "weight_decay": 0.0}], lr=0.1)
    matrix.grad = torch.full((3, 3), 1e-3)
    bias.grad = torch.full((3,), 1e-3)
    optimizer.step()
    # Step 1: every entry of the update is c = g / (|g| + eps); the matrix's trust ratio 6 / (3c)
    # makes its step lr * 6 / 3 = 0.2 per entry (eps cancels); the bias moves by lr * c.
    torch.testing.assert_close(matrix.detach(), torch.full((3, 3), 2.0 - 0.1 * 6 / 3))
    torch.testing.assert_close(bias.detach(), torch.full((3,), 2.0 - 0.1 * (1e-3 / (1e-3 + 1e-6))))


def test_a_zero_gradient_and_a_zero_weight_give_no_nan():
    zeros = nn.Parameter(torch.zeros(2, 2))
    still = nn.Parameter(torch.ones(2, 2))
    optimizer = Lamb([zeros, still], lr=0.1)
    zeros.grad = torch.ones(2, 2)
    still.grad = torch.zeros(2, 2)
    optimizer.step()
    torch.testing.assert_close(zeros.detach(), torch.full((2, 2), -0.1 / (1 + 1e-6)))  # ||w|| = 0: ratio 1
    torch.testing.assert_close(still.detach(), torch.ones(2, 2))  # ||update|| = 0: ratio 1, no move


def test_stopping_and_reloading_the_state_continues_exactly(tmp_path):
    def run(steps, optimizer, model, generator):
        for _ in range(steps):
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()

    straight = _model()
    straight_optimizer = Lamb(decay_groups(straight, 0.01), lr=0.05)
    run(4, straight_optimizer, straight, torch.Generator().manual_seed(3))
    first = _model()
    first_optimizer = Lamb(decay_groups(first, 0.01), lr=0.05)
    generator = torch.Generator().manual_seed(3)
    run(2, first_optimizer, first, generator)
    torch.save(first_optimizer.state_dict(), tmp_path / "optimizer.pt")
    second = _model()
    second.load_state_dict(first.state_dict())
    second_optimizer = Lamb(decay_groups(second, 0.01), lr=0.05)
    second_optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    run(2, second_optimizer, second, generator)
    for param, expected in zip(second.parameters(), straight.parameters()):
        assert torch.equal(param, expected)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="invalid Lamb settings"):
        Lamb([nn.Parameter(torch.ones(2, 2))], lr=0.1, betas=(0.9, 1.0))
