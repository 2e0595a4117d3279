"""Numbers checks of the shared layers (models/layers.py) and losses (models/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.layers import (
    Attention,
    RotaryEmbedding,
    SparsePuzzleEmbedding,
    SwiGLU,
    lecun_linear,
    rms_norm,
    swiglu_inner_size,
    trunc_normal_init_,
)
from models.losses import softmax_cross_entropy, stablemax_cross_entropy

# ---- initialisation -------------------------------------------------------------------


def test_trunc_normal_has_requested_std_and_corrected_bound():
    torch.manual_seed(0)
    std = 0.02
    samples = trunc_normal_init_(torch.empty(400_000), std=std)
    assert abs(samples.std().item() / std - 1) < 0.01
    assert abs(samples.mean().item()) < 0.01 * std
    # Std of N(0,1) cut at +-2: sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)) = 0.8796.
    sigma = std / 0.87963
    assert samples.abs().max().item() <= 2 * sigma * (1 + 1e-6)
    assert samples.abs().max().item() > 1.98 * sigma  # the tails reach the corrected bound
    # P(|X| > 2 std) for X ~ N(0, sigma) cut at 2 sigma: 2 (Phi(2) - Phi(1.7593)) / 0.9545 = 0.0345
    beyond = (samples.abs() > 2 * std).float().mean().item()
    assert abs(beyond - 0.0345) < 0.002


def test_trunc_normal_zero_std_gives_zeros():
    assert torch.equal(trunc_normal_init_(torch.ones(5), std=0.0), torch.zeros(5))


def test_lecun_linear_std_and_zero_bias():
    torch.manual_seed(0)
    layer = lecun_linear(256, 1024, bias=True)
    assert abs(layer.weight.std().item() * math.sqrt(256) - 1) < 0.01
    assert torch.equal(layer.bias, torch.zeros(1024))
    assert lecun_linear(4, 3).bias is None


# ---- rms_norm ----------------------------------------------------------------------------


def test_rms_norm_matches_formula_on_hand_numbers():
    x = torch.tensor([[3.0, 4.0], [1.0, -1.0]])
    # rows: mean square 12.5 and 1.
    rms = (math.sqrt(12.5 + 1e-5), math.sqrt(1 + 1e-5))
    expected = torch.tensor([[3 / rms[0], 4 / rms[0]], [1 / rms[1], -1 / rms[1]]])
    torch.testing.assert_close(rms_norm(x, 1e-5), expected)


def test_rms_norm_returns_input_dtype_computed_in_float32():
    x = torch.randn(4, 64).to(torch.bfloat16)
    out = rms_norm(x, 1e-5)
    assert out.dtype == torch.bfloat16
    expected = (x.float() / x.float().square().mean(-1, keepdim=True).add(1e-5).sqrt()).to(torch.bfloat16)
    assert torch.equal(out, expected)


# ---- SwiGLU ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hidden, expansion, width",
    [(512, 4, 1536), (97, 4, 512), (916, 4, 2560), (96, 4, 256), (32, 2, 256), (384, 1, 256)],
)
def test_swiglu_inner_width(hidden, expansion, width):
    assert swiglu_inner_size(hidden, expansion) == width


def test_swiglu_matches_formula():
    torch.manual_seed(0)
    layer = SwiGLU(512, 4)
    assert layer.gate_up_proj.weight.shape == (2 * 1536, 512)
    assert layer.down_proj.weight.shape == (512, 1536)
    assert layer.gate_up_proj.bias is None and layer.down_proj.bias is None
    x = torch.randn(2, 3, 512)
    w_gate, w_up = layer.gate_up_proj.weight[:1536], layer.gate_up_proj.weight[1536:]
    expected = (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ layer.down_proj.weight.T
    torch.testing.assert_close(layer(x), expected)


# ---- rotary positions and attention ----------------------------------------------------------


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    length, head_dim = 12, 16
    rotary = RotaryEmbedding(head_dim, max_positions=length, theta=10000.0)
    # The same query and key vector at every position: any change of score is positional.
    q = torch.randn(head_dim).expand(1, 1, length, head_dim)
    k = torch.randn(head_dim).expand(1, 1, length, head_dim)
    q_rot, k_rot = rotary(q, k)
    scores = (q_rot @ k_rot.transpose(-1, -2))[0, 0]  # (T, T)
    for shift in range(1, 4):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift], atol=1e-5, rtol=1e-5)
    assert (scores[0, 1] - scores[0, 5]).abs() > 1e-3  # not trivially constant
    # Position 0 is not rotated, and rotation keeps norms.
    torch.testing.assert_close(q_rot[0, 0, 0], q[0, 0, 0])
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1))


def test_rope_keeps_input_dtype():
    rotary = RotaryEmbedding(8, 4)
    q = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    q_rot, k_rot = rotary(q, q)
    assert q_rot.dtype == k_rot.dtype == torch.bfloat16


def test_attention_matches_manual_bidirectional_attention():
    torch.manual_seed(0)
    batch, length, hidden, heads = 2, 5, 16, 4
    layer = Attention(hidden, heads)
    x = torch.randn(batch, length, hidden)
    q, k, v = (x @ layer.qkv_proj.weight.T).split(hidden, dim=-1)

    def split_heads(t):
        return t.view(batch, length, heads, hidden // heads).transpose(1, 2)

    q, k, v = map(split_heads, (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hidden // heads), dim=-1)
    expected = (weights @ v).transpose(1, 2).reshape(batch, length, hidden) @ layer.o_proj.weight.T
    torch.testing.assert_close(layer(x), expected)
    # Non-causal: the first position sees the last one.
    changed = x.clone()
    changed[:, -1] += 1
    assert not torch.allclose(layer(changed)[:, 0], layer(x)[:, 0])


# ---- sparse puzzle embedding ------------------------------------------------------------------


def test_sparse_puzzle_embedding_is_a_buffer_and_grad_lands_in_last_rows():
    table = SparsePuzzleEmbedding(5, 3)
    assert list(table.parameters()) == []
    assert "weight" in table.state_dict()
    assert torch.equal(table.weight, torch.zeros(5, 3))
    with torch.no_grad():
        table.weight.copy_(torch.arange(15.0).view(5, 3))

    ids = torch.tensor([4, 1, 4], dtype=torch.int32)
    rows = table.train()(ids)
    assert rows.is_leaf and rows.requires_grad
    assert table.last_ids is ids
    coefficients = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    (rows * coefficients).sum().backward()
    torch.testing.assert_close(table.last_rows.grad, coefficients)  # one row per use, not summed
    assert not table.weight.requires_grad and table.weight.grad is None
    # Changing the handed-out rows never touches the table.
    assert torch.equal(rows.detach(), table.weight[ids.long()])

    eval_rows = table.eval()(torch.tensor([2]))
    assert torch.equal(eval_rows, torch.tensor([[6.0, 7.0, 8.0]])) and not eval_rows.requires_grad


# ---- losses ----------------------------------------------------------------------------------


def test_stablemax_cross_entropy_hand_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [2.0, 0.0, -1.0], [-3.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, 2, 1, -100])
    # s = [3, 1, 1/2] (sum 4.5); [1/4, 2, 1] (sum 3.25); ignored row gives 0.
    expected = torch.tensor([math.log(4.5 / 3), math.log(4.5 / 0.5), math.log(3.25 / 2), 0.0], dtype=torch.float64)
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected)


def test_stablemax_gradient_is_finite_and_correct():
    torch.manual_seed(0)
    logits = (torch.randn(3, 4, 5, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.tensor([[0, 1, -100, 4], [2, 2, 2, 2], [-100, -100, 3, 0]])
    assert torch.autograd.gradcheck(lambda x: stablemax_cross_entropy(x, labels), (logits,))
    big = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    stablemax_cross_entropy(big, torch.tensor([1])).sum().backward()
    assert torch.isfinite(big.grad).all()


def test_softmax_cross_entropy_hand_values():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, -100]])
    expected = torch.tensor([[-2 + math.log(math.exp(2) + 1 + math.exp(-1)), 0.0]])
    loss = softmax_cross_entropy(logits, labels)
    assert loss.shape == labels.shape
    torch.testing.assert_close(loss, expected)
