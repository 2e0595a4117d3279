"""Checks of the TRM model, its ACT halting and its losses (models/trm) on tiny configs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from dataset.puzzles.format import PuzzleDatasetMetadata
from models.losses import softmax_cross_entropy, stablemax_cross_entropy
from models.trm import TRMConfig, build_trm
from models.trm.model import TRM

VOCAB, SEQ_LEN, NUM_PUZZLES = 6, 8, 5



def tiny_config(**overrides) -> TRMConfig:
    settings = dict(
        name="trm", hidden_size=32, num_heads=2, expansion=2, L_layers=2, H_cycles=2, L_cycles=2,
        halt_max_steps=4, puzzle_emb_ndim=32, puzzle_emb_len=2,
    )
    settings.update(overrides)
    return TRMConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> TRM:
    torch.manual_seed(seed)
    model = TRM(tiny_config(**overrides), vocab_size=VOCAB, seq_len=SEQ_LEN, num_puzzle_identifiers=NUM_PUZZLES)
    with torch.no_grad():  # a non-zero puzzle table, so the prefix carries information
        model.puzzle_emb.weight.normal_() if model.puzzle_emb is not None else None
    return model


def make_batch(size: int = 4, seed: int = 0, explore: float = 1.0, min_steps_draw: float = 0.0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, VOCAB, (size, SEQ_LEN), generator=generator, dtype=torch.int32)
    noise = torch.stack([torch.full((size,), explore), torch.full((size,), min_steps_draw)], dim=1)
    return {
        "inputs": inputs,
        "labels": torch.randint(1, VOCAB, (size, SEQ_LEN), generator=generator, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, NUM_PUZZLES, (size,), generator=generator, dtype=torch.int32),
        "noise": noise,  # explore=1.0: no exploration
    }


def objective(out) -> torch.Tensor:
    return sum(out.loss_weights[name] * total / count for name, (total, count) in out.losses.items())


def set_q_bias(model: TRM, halt: float, cont: float = -5.0) -> None:
    with torch.no_grad():
        model.q_head.bias.copy_(torch.tensor([halt, cont]))


# ---- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=30, num_heads=4), "num_heads"),
        (dict(halt_exploration_prob=1.5), "halt_exploration_prob"),
        (dict(H_layers=2), "H_layers"),
        (dict(L_cycles=0), "L_cycles"),
        (dict(puzzle_emb_ndim=100, puzzle_emb_len=3), "puzzle_emb_len"),
        (dict(L_cycle=3), "L_cycle"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValidationError, match=field):
        tiny_config(**overrides)


def test_config_mlp_t_with_rope_warns_and_derived_prefix():
    with pytest.warns(UserWarning, match="pos_encodings"):
        tiny_config(mlp_t=True, pos_encodings="rope")
    assert tiny_config(puzzle_emb_len=0, puzzle_emb_ndim=70).num_prefix_positions == 3  # ceil(70 / 32)


def test_default_size_is_about_7m_parameters():
    metadata = PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11, seq_len=81,
        num_puzzle_identifiers=3, total_groups=1, mean_puzzle_examples=1.0, total_puzzles=3, sets=["all"],
    )
    model = build_trm(TRMConfig(name="trm"), metadata)
    d, inner, vocab = 512, 1536, 11
    per_block = d * 3 * d + d * d + d * 2 * inner + inner * d
    expected = 2 * per_block + 2 * vocab * d + 2 * d + 2  # blocks, token embedding + LM head, Q head
    assert sum(p.numel() for p in model.parameters()) == expected == 6_828_034
    assert model.puzzle_emb.weight.shape == (3, 512)
    assert model.y_init.shape == (512,) and abs(model.y_init.std().item() - 1) < 0.15


# ---- shapes, init, embedding --------------------------------------------------------------------


def test_output_shapes_and_detached_carry():
    model = tiny_model().train()
    batch = make_batch()
    out = model(model.initial_carry(batch), batch)
    assert out.outputs["preds"].shape == (4, SEQ_LEN)
    assert out.outputs["q_halt_logits"].shape == (4,)
    assert out.carry["z_H"].shape == out.carry["z_L"].shape == (4, SEQ_LEN + 2, 32)
    assert out.carry["steps"].dtype == torch.int32 and out.carry["halted"].dtype == torch.bool
    assert all(not value.requires_grad for value in out.carry.values())
    assert set(out.losses) == {"lm_loss", "q_halt_loss"}
    assert out.loss_weights == {"lm_loss": 1.0, "q_halt_loss": 0.5}
    assert set(out.metrics) == {"accuracy", "exact_accuracy", "q_halt_accuracy", "steps"}
    for key in ("inputs", "labels", "puzzle_identifiers"):
        assert torch.equal(out.outputs[key], batch[key])


def test_q_head_init():
    model = tiny_model()
    assert torch.equal(model.q_head.weight, torch.zeros(2, 32))
    assert torch.equal(model.q_head.bias, torch.tensor([-5.0, -5.0]))
    batch = make_batch()
    out = model.eval()(model.initial_carry(batch), batch)
    assert torch.equal(out.outputs["q_halt_logits"], torch.full((4,), -5.0))


def test_input_embedding_layout():
    model = tiny_model(puzzle_emb_ndim=48, puzzle_emb_len=3)
    batch = make_batch()
    x = model.eval().embed_inputs(batch["inputs"], batch["puzzle_identifiers"])  # (B, 3 + L, 32)
    scale = math.sqrt(32)
    puzzle = model.puzzle_emb.weight[batch["puzzle_identifiers"].long()]  # (B, 48)
    torch.testing.assert_close(x[:, 0], scale * puzzle[:, :32])
    torch.testing.assert_close(x[:, 1, :16], scale * puzzle[:, 32:])
    assert torch.equal(x[:, 1, 16:], torch.zeros(4, 16)) and torch.equal(x[:, 2], torch.zeros(4, 32))
    torch.testing.assert_close(x[:, 3:], scale * model.embed_tokens.weight[batch["inputs"].long()])
    assert abs(model.embed_tokens.weight.std().item() * scale - 1) < 0.25

    learned = tiny_model(pos_encodings="learned").eval()
    x = learned.embed_inputs(batch["inputs"], batch["puzzle_identifiers"])
    plain = torch.cat([learned.puzzle_emb.weight[batch["puzzle_identifiers"].long()].view(4, 1, 32),
                       torch.zeros(4, 1, 32), learned.embed_tokens.weight[batch["inputs"].long()]], dim=1)
    torch.testing.assert_close(x, scale * (plain + learned.embed_positions.weight) / math.sqrt(2))


# ---- carry and halting -------------------------------------------------------------------------


def test_carry_reset_restarts_halted_slots_only():
    model = tiny_model().eval()
    first, second = make_batch(seed=1), make_batch(seed=2)
    carry = model(model.initial_carry(first), first).carry
    carry["halted"] = torch.tensor([True, False, True, False])
    out = model(carry, second)

    restarted = torch.tensor([True, False, True, False])
    for key in ("inputs", "labels", "puzzle_identifiers"):
        expected = torch.where(restarted.view(-1, *[1] * (first[key].dim() - 1)), second[key], first[key])
        assert torch.equal(out.carry[key], expected)
    assert out.carry["steps"].tolist() == [1, 2, 1, 2]
    # The new latents are one step from init for restarted slots, from the carry otherwise.
    y0 = torch.where(restarted[:, None, None], model.y_init, carry["z_H"])
    z0 = torch.where(restarted[:, None, None], model.z_init, carry["z_L"])
    x = model.embed_inputs(out.carry["inputs"], out.carry["puzzle_identifiers"])
    y, z, *_ = model.recurse(y0, z0, x)
    torch.testing.assert_close(out.carry["z_H"], y)
    torch.testing.assert_close(out.carry["z_L"], z)
    # A restarted slot matches a fresh run on its new example.
    fresh = model(model.initial_carry(second), second).carry
    torch.testing.assert_close(out.carry["z_H"][0], fresh["z_H"][0])


def run_steps(model: TRM, batch: dict, num_steps: int) -> list[list[bool]]:
    """Halted flags after each step, on a fixed batch."""
    carry, flags = model.initial_carry(batch), []
    for _ in range(num_steps):
        out = model(carry, batch)
        carry = out.carry
        flags.append(carry["halted"].tolist())
    return flags


def test_eval_runs_exactly_max_steps_even_if_q_says_halt():
    model = tiny_model(halt_max_steps=3).eval()
    set_q_bias(model, halt=5.0)
    batch = make_batch()
    del batch["noise"]  # evaluation needs no noise
    carry, all_halted = model.initial_carry(batch), []
    for _ in range(3):
        out = model(carry, batch)
        carry = out.carry
        all_halted.append(out.all_halted)
    assert all_halted == [False, False, True]
    assert carry["steps"].tolist() == [3, 3, 3, 3]


def test_training_halts_on_q_halt_or_max_steps():
    model = tiny_model(halt_max_steps=3).train()
    set_q_bias(model, halt=5.0)
    assert run_steps(model, make_batch(), 1) == [[True] * 4]
    set_q_bias(model, halt=-5.0)
    assert run_steps(model, make_batch(), 3) == [[False] * 4, [False] * 4, [True] * 4]


def test_training_exploration_sets_minimum_steps_from_noise():
    model = tiny_model(halt_max_steps=4).train()
    set_q_bias(model, halt=5.0)  # every slot wants to halt at once
    batch = make_batch()
    # Slot 0 does not explore; slots 1-3 draw min steps 2 + floor(u * 3) = 2, 3, 4.
    batch["noise"] = torch.tensor([[0.5, 0.9], [0.05, 0.0], [0.05, 0.5], [0.0, 0.999]])
    flags = run_steps(model, batch, 4)
    first_halt = [next(step + 1 for step in range(4) if flags[step][slot]) for slot in range(4)]
    assert first_halt == [1, 2, 3, 4]


def test_training_without_noise_is_an_error():
    model = tiny_model().train()
    batch = make_batch()
    del batch["noise"]
    with pytest.raises(KeyError, match="noise"):
        model(model.initial_carry(batch), batch)


def test_hrm_style_halting_compares_halt_and_continue():
    model = tiny_model(no_ACT_continue=False, halt_max_steps=4).train()
    set_q_bias(model, halt=1.0, cont=0.0)  # halt logit 1 < 0? no, but 1 > continue: halts
    assert run_steps(model, make_batch(), 1) == [[True] * 4]
    set_q_bias(model, halt=1.0, cont=2.0)  # halt logit > 0 but < continue: runs on
    assert run_steps(model, make_batch(), 1) == [[False] * 4]


# ---- gradients ----------------------------------------------------------------------------------


def test_gradients_flow_only_through_the_last_outer_cycle():
    """H_cycles=3 from init must give the gradients of H_cycles=1 started from the state
    that the two gradient-free cycles reach (computed by a separate H_cycles=2 model)."""
    batch = make_batch()
    models = {h: tiny_model(H_cycles=h).train() for h in (1, 2, 3)}
    for h in (1, 2):
        models[h].load_state_dict(models[3].state_dict())

    full = models[3](models[3].initial_carry(batch), batch)
    objective(full).backward()
    with torch.no_grad():
        warm_carry = models[2](models[2].initial_carry(batch), batch).carry
    warm_carry["halted"] = torch.zeros(4, dtype=torch.bool)
    last = models[1](warm_carry, batch)
    objective(last).backward()

    torch.testing.assert_close(objective(full), objective(last))
    for (name, p3), p1 in zip(models[3].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p3.grad, p1.grad, msg=name)
    torch.testing.assert_close(models[3].puzzle_emb.last_rows.grad, models[1].puzzle_emb.last_rows.grad)
    assert models[3].puzzle_emb.last_rows.grad.abs().sum() > 0

    # Back-propagating through all three cycles gives different gradients, so the check bites.
    model = models[3]
    model.zero_grad()
    x = model.embed_inputs(batch["inputs"], batch["puzzle_identifiers"])
    y, z = model.y_init.expand_as(x), model.z_init.expand_as(x)
    for _ in range(3):
        y, z = model._cycle(y, z, x)
    full_bptt = stablemax_cross_entropy(model.lm_head(y[:, 2:]), batch["labels"]).mean(-1).mean()
    full_bptt.backward()
    lm_only = tiny_model(H_cycles=3).train()
    lm_only.load_state_dict(model.state_dict())
    out = lm_only(lm_only.initial_carry(batch), batch)
    (out.losses["lm_loss"][0] / out.losses["lm_loss"][1]).backward()
    torch.testing.assert_close(full_bptt.double(), (out.losses["lm_loss"][0] / 4).double(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model.blocks[0].mlp.down_proj.weight.grad, lm_only.blocks[0].mlp.down_proj.weight.grad)


# ---- losses and metrics ------------------------------------------------------------------------


def reference_logits(model: TRM, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and halt logits of a first step, recomputed through the model's pieces."""
    x = model.embed_inputs(batch["inputs"], batch["puzzle_identifiers"])
    _, _, logits, q_halt, _ = model.recurse(model.y_init.expand_as(x), model.z_init.expand_as(x), x)
    return logits, q_halt


@pytest.mark.parametrize("loss_type", ["stablemax_cross_entropy", "softmax_cross_entropy"])
def test_loss_is_mean_per_sequence_summed_over_labelled_rows(loss_type):
    model = tiny_model(loss={"loss_type": loss_type}).eval()
    batch = make_batch()
    batch["labels"][0, 2:] = -100  # 2 labels
    batch["labels"][1, :3] = -100  # 5 labels
    batch["labels"][2] = -100  # no label: not counted
    out = model(model.initial_carry(batch), batch)

    logits, q_halt = reference_logits(model, batch)
    loss_fn = stablemax_cross_entropy if loss_type == "stablemax_cross_entropy" else softmax_cross_entropy
    token_loss = loss_fn(logits, batch["labels"]).double()
    expected = token_loss[0, :2].mean() + token_loss[1, 3:].mean() + token_loss[3].mean()
    total, count = out.losses["lm_loss"]
    assert count.item() == 3
    torch.testing.assert_close(total.double(), expected, rtol=1e-5, atol=1e-6)

    exact = (logits.argmax(-1) == batch["labels"]) | (batch["labels"] == -100)
    bce = F.binary_cross_entropy_with_logits(q_halt, exact.all(-1).float(), reduction="none")
    total, count = out.losses["q_halt_loss"]
    assert count.item() == 3
    torch.testing.assert_close(total, bce[[0, 1, 3]].sum())


def test_metrics_count_only_halted_labelled_rows():
    model = tiny_model(halt_max_steps=4).train()
    set_q_bias(model, halt=5.0)
    batch = make_batch(size=4)
    batch["noise"] = torch.tensor([[0.5, 0.0], [0.0, 0.99], [0.5, 0.0], [0.5, 0.0]])  # slot 1 runs on
    batch["labels"][3] = -100  # halts, but has no label
    batch["labels"][0, :4] = -100
    # Make slot 0 exactly right and slot 2 half right, from the model's own predictions.
    logits, _ = reference_logits(model.eval(), batch)
    preds = logits.argmax(-1).to(batch["labels"].dtype)
    batch["labels"][0, 4:] = preds[0, 4:]
    batch["labels"][2, :4] = preds[2, :4]
    batch["labels"][2, 4:] = (preds[2, 4:] + 1) % VOCAB
    out = model.train()(model.initial_carry(batch), batch)

    assert out.carry["halted"].tolist() == [True, False, True, True]
    assert torch.equal(out.outputs["preds"], logits.argmax(-1))
    metrics = {name: (total.item(), count.item()) for name, (total, count) in out.metrics.items()}
    assert metrics["accuracy"] == pytest.approx((1.0 + 0.5, 2))
    assert metrics["exact_accuracy"] == (1.0, 2)
    assert metrics["q_halt_accuracy"] == (1.0, 2)  # q_halt = 5 >= 0 matches "exactly right" for slot 0 only
    assert metrics["steps"] == (2.0, 2)
    assert out.losses["lm_loss"][1].item() == 3


def test_hrm_style_q_continue_loss_uses_next_step_target():
    model = tiny_model(no_ACT_continue=False, halt_max_steps=2).train()
    with torch.no_grad():
        model.q_head.weight.normal_(std=0.3)
    batch = make_batch()
    carry = model.initial_carry(batch)
    for step in (1, 2):
        # Reference first: its embedding lookup would replace the rows that carry the gradient.
        x = model.embed_inputs(batch["inputs"], batch["puzzle_identifiers"])
        y0 = torch.where(carry["halted"][:, None, None], model.y_init, carry["z_H"])
        z0 = torch.where(carry["halted"][:, None, None], model.z_init, carry["z_L"])
        with torch.no_grad():
            y, z, _, _, q_continue = model.recurse(y0, z0, x)
            _, _, _, next_halt, next_continue = model.recurse(y, z, x)
        # At the last step (2) the target is the halt value alone.
        is_last = torch.where(carry["halted"], 0, carry["steps"]) + 1 >= 2
        target_logit = torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue))
        expected = F.binary_cross_entropy_with_logits(q_continue, torch.sigmoid(target_logit), reduction="sum")

        out = model(carry, batch)
        assert out.loss_weights["q_continue_loss"] == 0.5
        total, count = out.losses["q_continue_loss"]
        torch.testing.assert_close(total, expected)
        assert count.item() == 4
        objective(out).backward()
        assert model.puzzle_emb.last_rows.grad.abs().sum() > 0  # the target pass did not replace it
        assert is_last.any() == (step == 2)  # both branches of the target are exercised
        carry = out.carry
    assert "q_continue_loss" not in model.eval()(model.initial_carry(batch), batch).losses


# ---- variants -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, permutation_equivariant",
    [
        (dict(pos_encodings="none"), True),
        (dict(pos_encodings="rope"), False),
        (dict(pos_encodings="learned"), False),
        (dict(mlp_t=True, pos_encodings="none"), False),
    ],
)
def test_position_variants(overrides, permutation_equivariant):
    """Without positions, attention cannot tell token order: permuting the tokens permutes
    the logits. Every real position scheme (and the sequence MLP) breaks that symmetry."""
    model = tiny_model(**overrides).eval()
    batch = make_batch()
    out = model(model.initial_carry(batch), batch)
    assert out.outputs["preds"].shape == (4, SEQ_LEN) and out.carry["z_H"].shape == (4, SEQ_LEN + 2, 32)
    if overrides.get("mlp_t"):
        assert not hasattr(model.blocks[0], "attention")
        assert model.blocks[0].sequence_mlp.gate_up_proj.weight.shape == (2 * 256, SEQ_LEN + 2)
    permutation = torch.randperm(SEQ_LEN, generator=torch.Generator().manual_seed(3))
    permuted = dict(batch, inputs=batch["inputs"][:, permutation])
    logits, _ = reference_logits(model, batch)
    permuted_logits, _ = reference_logits(model, permuted)
    assert torch.allclose(permuted_logits, logits[:, permutation], atol=1e-4) == permutation_equivariant


def test_no_puzzle_embedding_variant():
    model = tiny_model(puzzle_emb_ndim=0, puzzle_emb_len=0).train()
    assert model.puzzle_emb is None and model.num_prefix == 0
    batch = make_batch()
    out = model(model.initial_carry(batch), batch)
    assert out.carry["z_H"].shape == (4, SEQ_LEN, 32)


def test_bfloat16_autocast_runs_and_keeps_float32_carry():
    model = tiny_model().train()
    batch = make_batch()
    reference = objective(model(model.initial_carry(batch), batch))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(model.initial_carry(batch), batch)
        loss = objective(out)
    loss.backward()
    assert out.carry["z_H"].dtype == torch.float32 and out.outputs["q_halt_logits"].dtype == torch.float32
    assert out.losses["lm_loss"][0].dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0)
    assert torch.isfinite(model.puzzle_emb.last_rows.grad).all()


# ---- learning --------------------------------------------------------------------------------------


def test_tiny_trm_overfits_fixed_examples():
    model = tiny_model(seed=1, halt_max_steps=1, L_layers=1).train()
    batch = make_batch(size=4, seed=6)  # random labels: pure memorisation
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out = model(model.initial_carry(batch), batch)
        loss = objective(out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(out.losses["lm_loss"][0].item() / 4)
    assert losses[-1] < 0.2 * losses[0], losses
    final = model(model.initial_carry(batch), batch)
    assert final.metrics["accuracy"][0].item() / 4 > 0.9
