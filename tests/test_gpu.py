"""The GPU code paths on a CUDA device (every test skips without one): bf16 autocast
training close to float32 (and CUDA float32 close to CPU), the CUDA prefetcher feeding
exactly the batches of the plain path, the AdamW (fused), Adam-atan2 and LAMB updates equal to
their CPU versions, and compiled training equal to eager.

Small on purpose: `benchmarks/gpu_check.sh` runs them (`pytest -m gpu`) inside its
six-minute budget. Their CPU counterparts are in `tests/test_gpu_paths_on_cpu.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pretrain import launch
from tests.helpers import THREE_STEP_RUNS, compose_config, make_mlm_dataset
from training.metrics import read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]



def _train_losses(arch: str, tmp_path, name: str, extra: list[str]) -> list[float]:
    """The per-step training losses of a 3-step run of `arch` with `extra` overrides."""
    make_data, overrides, key = THREE_STEP_RUNS[arch]
    data = tmp_path / "data"
    if not data.exists():
        make_data(data)
    launch(compose_config(overrides + extra + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / name}"]))
    losses = [record[key] for record in read_metrics(tmp_path / name) if key in record]
    assert len(losses) == 3, losses
    return losses


@pytest.mark.parametrize("arch", ["trm", "bert"])
def test_bf16_training_on_cuda_stays_close_to_float32(arch, tmp_path):
    cpu = _train_losses(arch, tmp_path, "cpu", ["device=cpu", "compile=false"])
    float32 = _train_losses(arch, tmp_path, "fp32", ["device=cuda", "compile=false", "arch.forward_dtype=float32"])
    bf16 = _train_losses(arch, tmp_path, "bf16", ["device=cuda", "compile=false", "arch.forward_dtype=bfloat16"])
    assert float32 == pytest.approx(cpu, rel=1e-3)  # same init and data: the device changes only rounding
    assert bf16 == pytest.approx(float32, rel=3e-2)
    assert bf16 != float32  # autocast was on: bf16 rounding shows


@pytest.mark.compile
@pytest.mark.parametrize("arch", ["trm", "bert"])
def test_compiled_training_on_cuda_matches_eager(arch, tmp_path):
    eager = _train_losses(arch, tmp_path, "eager", ["device=cuda", "compile=false"])
    compiled = _train_losses(arch, tmp_path, "compiled", ["device=cuda", "compile=true"])
    assert compiled == pytest.approx(eager, rel=1e-2, abs=1e-3)


def test_cuda_prefetcher_feeds_the_batches_of_the_plain_path(tmp_path):
    from dataset.text.loader import MLMTrainStream
    from dataset.text.masking import MaskingConfig
    from training.prefetch import PlainBatches, Prefetcher

    data = make_mlm_dataset(tmp_path / "data")
    device = torch.device("cuda")
    make_stream = lambda: MLMTrainStream([str(data)], 0, 4, 0, 1, MaskingConfig(), trim_to_multiple=8)
    plain_stream, prefetched_stream = make_stream(), make_stream()
    plain, prefetched = PlainBatches(plain_stream, device), Prefetcher(prefetched_stream, device, depth=3)
    for _ in range(7):  # more than one epoch of 23 sequences / 4
        expected, got = next(plain), next(prefetched)
        assert got.stream_state == expected.stream_state
        assert sorted(got.device) == sorted(expected.device)
        for key, tensor in expected.device.items():
            assert got.device[key].device.type == "cuda"
            assert torch.equal(got.device[key], tensor), key
    prefetched.close()  # the thread read ahead; closing rewinds to just after the 7th batch
    assert prefetched_stream.state_dict() == plain_stream.state_dict()
    assert (prefetched_stream.next_batch()["input_ids"] == plain_stream.next_batch()["input_ids"]).all()


@pytest.mark.parametrize("optimizer", ["adamw", "adam_atan2", "lamb"])
def test_optimizer_updates_on_cuda_equal_the_cpu_ones(optimizer):
    from models.interface import ParamGroups, decay_groups
    from training.optim import OptimizerSettings, build_optimizers

    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    grads = [[torch.randn_like(param) for param in reference.parameters()] for _ in range(3)]
    finals = {}
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(reference).to(device)
        dense, _ = build_optimizers(ParamGroups(dense=decay_groups(model, 0.1)),
                                    OptimizerSettings(optimizer, 1e-2, (0.9, 0.95), False, 1e-2, 0.1))
        if optimizer == "adamw":
            assert dense.defaults["fused"] is (device == "cuda")  # the fused kernel on CUDA
        for step_grads in grads:
            for param, grad in zip(model.parameters(), step_grads):
                param.grad = grad.to(device)
            dense.step()
            dense.zero_grad(set_to_none=True)
        finals[device] = [param.detach().cpu() for param in model.parameters()]
    moved = max((a - b).abs().max().item() for a, b in zip(finals["cpu"], reference.parameters()))
    assert moved > 1e-3  # the steps did move the weights
    for on_cpu, on_cuda in zip(finals["cpu"], finals["cuda"]):
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-5, atol=1e-6)
