"""Scale-out: gradient accumulation gives the update of one big batch, alone and under
DistributedDataParallel on 2 processes, with a resume in between."""

from __future__ import annotations

import subprocess

import pytest
from safetensors.torch import load_file

from core.errors import ConfigError
from pretrain import launch
from tests import helpers
from tests.helpers import REPO, TINY_BERT, TINY_TRM, compose_config, make_mlm_dataset, make_puzzle_dataset
from training.checkpoint import find_latest
from training.metrics import read_metrics

RUNS = {
    # 48 examples / 16 = 3 steps per epoch; halting up to 4 steps, so carries span steps.
    "trm": (make_puzzle_dataset, TINY_TRM + ["arch.halt_max_steps=4", "global_batch_size=16", "epochs=3",
                                             "eval_interval=3", "lr=1e-3"], "train/lm_loss"),
    # Dropout off: the micro-batches would draw other dropout masks than the whole batch.
    "bert": (make_mlm_dataset, TINY_BERT + ["arch.hidden_dropout_prob=0", "arch.attention_dropout_prob=0",
                                            "global_batch_size=8", "epochs=3", "eval_interval=3", "lr=1e-3"],
             "train/mlm_loss"),
}
# LAMB (training/lamb.py) at NVIDIA's betas: the trust ratios must not let ranks or micro-batches drift apart.
RUNS["bert_lamb"] = (RUNS["bert"][0], RUNS["bert"][1] + ["optimizer=lamb", "lr=1e-2"], RUNS["bert"][2])
MICRO_BATCH = {"trm": 4, "bert": 4, "bert_lamb": 2}
"""micro_batch_size of the one-process split run: 4 micro-batches of 2 for LAMB (global batch 8)."""
TOLERANCE_TWO_PROCESSES = {"trm": 1e-5, "bert": 1e-5, "bert_lamb": 1e-6}
"""Largest loss and weight difference of 2 processes from 1 (1 process with micro-batches: 1e-6 for all)."""
MASTER_PORTS = {"trm": 29547, "bert": 29549, "bert_lamb": 29551}


def _run(overrides: list[str], run_dir, *extra) -> dict[int, float]:
    launch(compose_config(overrides + [f"+checkpoint_path={run_dir}", *extra]))
    return read_metrics(run_dir)


def _weights(run_dir):
    return load_file(find_latest(run_dir) / "model.safetensors")


def _assert_same_weights(a, b, tolerance):
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert (first[name] - second[name]).abs().max().item() <= tolerance, name


@pytest.mark.parametrize("arch", ["trm", "bert", "bert_lamb"])
def test_micro_batches_give_the_update_of_one_batch_also_across_a_resume(arch, tmp_path):
    make_data, overrides, key = RUNS[arch]
    overrides = overrides + [f"data_paths=[{make_data(tmp_path / 'data')}]"]
    whole = helpers.step_values(_run(overrides, tmp_path / "whole"), key)
    micro = f"micro_batch_size={MICRO_BATCH[arch]}"
    _run(overrides, tmp_path / "split", micro, "max_steps=4")
    resumed = _run(overrides, tmp_path / "split", micro, f"+load_checkpoint={tmp_path / 'split'}")
    split = helpers.step_values(resumed, key)
    assert sorted(split) == sorted(whole) and len(whole) >= 6
    for step, loss in whole.items():
        assert split[step] == pytest.approx(loss, abs=1e-6, rel=1e-6), step
    _assert_same_weights(tmp_path / "whole", tmp_path / "split", 1e-6)


def test_a_micro_batch_that_does_not_divide_the_share_is_refused(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"micro_batch_size \(5\) must divide .* = 16\); pick a divisor of 16"):
        launch(compose_config(RUNS["trm"][1] + [f"data_paths=[{data}]", "micro_batch_size=5",
                                                f"+checkpoint_path={tmp_path / 'run'}"]))


@pytest.mark.multiprocess
@pytest.mark.parametrize("arch", ["trm", "bert", "bert_lamb"])
def test_two_processes_with_accumulation_match_one_big_batch(arch, tmp_path):
    make_data, overrides, key = RUNS[arch]
    overrides = overrides + [f"data_paths=[{make_data(tmp_path / 'data')}]"]
    whole_records = _run(overrides, tmp_path / "whole")
    whole = helpers.step_values(whole_records, key)
    launcher = [*helpers.torchrun_command(MASTER_PORTS[arch]), str(REPO / "pretrain.py")]
    split_dir = tmp_path / "two"
    for extra in (["max_steps=4"], [f"+load_checkpoint={split_dir}"]):
        result = subprocess.run([*launcher, *overrides, "micro_batch_size=2", f"+checkpoint_path={split_dir}",
                                 *extra], cwd=tmp_path, env=helpers.subprocess_env(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        # torch 2.13 deprecates DDP's broadcast_buffers with a FutureWarning per rank; we pass its successor.
        assert "FutureWarning" not in result.stderr and "broadcast_buffers" not in result.stderr
    assert "micro-batch(es) of 2" in result.stdout
    two = helpers.step_values(read_metrics(split_dir), key)
    if arch == "bert":  # the ranks' rows hold different numbers of real tokens: the count is their sum
        tokens = helpers.step_values(whole_records, "train/tokens_seen")
        assert helpers.step_values(read_metrics(split_dir), "train/tokens_seen") == tokens and len(tokens) >= 6
    assert sorted(two) == sorted(whole)
    for step, loss in whole.items():
        assert two[step] == pytest.approx(loss, abs=TOLERANCE_TWO_PROCESSES[arch], rel=TOLERANCE_TWO_PROCESSES[arch]), step
    _assert_same_weights(tmp_path / "whole", split_dir, TOLERANCE_TWO_PROCESSES[arch])
