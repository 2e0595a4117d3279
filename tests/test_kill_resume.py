"""Runs survive crashes and preemption, and resume exactly.

- SIGKILL at a random moment after the first checkpoint: resuming (from `latest` or the
  run folder) gives, step for step, the losses of an uninterrupted run (TRM with its
  carry and data position, BERT with its masking, data position and dropout RNG), and
  half-written checkpoint folders are never picked up.
- SIGINT in-process and SIGTERM to one rank of a 2-process torchrun: the step finishes,
  every rank stops at the same step, a checkpoint is written, the exit is clean and the
  resume command is printed.
- Non-finite losses: the step is skipped, counted and logged; too many in a row stop
  the run with a one-line error.
- `checkpoint_keep_last=1` with SIGKILL during the save of the newest checkpoint: the
  previous one survives and `resume=auto` continues from it.
- `checkpoint_keep_last` and `checkpoint_keep_best` keep the newest and the best by an
  eval metric, as the metrics log says.

Stops during evaluation and the second signal: `test_stopping.py`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.errors import UserError
from models.trm.model import TRM
from pretrain import launch
from tests import helpers
from tests.helpers import REPO, TINY_BERT, TINY_TRM, compose_config, make_mlm_dataset, make_puzzle_dataset
from training import loop as train_loop
from training.checkpoint import list_checkpoints, read_checkpoint
from training.metrics import read_metrics

COMPARED_STEPS = 24
"""The resumed and the uninterrupted runs both stop here (`max_steps`); the killed run
would go on to the end of its LR schedule (60 steps), which it never reaches."""

ARCHS = {
    # 48 examples / 16 = 3 steps per epoch, a checkpoint after each epoch; with up to 8 ACT steps
    # per example, checkpoints fall while examples are half done, so the carry matters.
    "trm": (make_puzzle_dataset, TINY_TRM + ["arch.halt_max_steps=8", "global_batch_size=16", "epochs=20",
                                             "eval_interval=1", "lr=1e-3"]),
    # 23 sequences / 8 = 2.875 steps per epoch; dropout stays at 0.1: the saved torch RNG replays it.
    "bert": (make_mlm_dataset, TINY_BERT + ["global_batch_size=8", "epochs=20", "eval_interval=1", "lr=1e-3"]),
}
LOSS_KEYS = {"trm": "train/lm_loss", "bert": "train/mlm_loss"}



def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
    """Poll `condition()` every 20 ms while `process` runs; fail if it ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            output = process.communicate()[1] if process.stderr else ""
            pytest.fail(f"the run ended (status {process.returncode}) before {what}: {output[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _plant_half_written(run_dir: Path) -> None:
    """What a crash mid-save can leave: a temporary folder and a step folder without manifest."""
    partial = run_dir / ".step_999.partial-12345"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    unfinished = run_dir / "step_998"
    shutil.copytree(list_checkpoints(run_dir)[-1], unfinished)
    (unfinished / "manifest.json").unlink()


@pytest.mark.parametrize("arch", ["trm", "bert"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(arch, tmp_path, monkeypatch):
    make_data, overrides = ARCHS[arch]
    data = make_data(tmp_path / "data")
    overrides = overrides + [f"data_paths=[{data}]"]
    run_dir = tmp_path / "checkpoints" / "proj" / "run"
    killed = subprocess.Popen(
        [sys.executable, str(REPO / "pretrain.py"), *overrides, "+project_name=proj", "+run_name=run"],
        cwd=tmp_path, env=helpers.subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(lambda: bool(list_checkpoints(run_dir)), killed, "its first checkpoint")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    killed.stderr.close()
    latest = list_checkpoints(run_dir)[-1]
    resume_step = int(latest.name.removeprefix("step_"))
    assert resume_step < COMPARED_STEPS, "the killed run got too far to compare; raise COMPARED_STEPS"
    if arch == "trm":
        assert not read_checkpoint(latest).carry["halted"].all()  # examples in flight: the carry is tested
    _plant_half_written(run_dir)

    monkeypatch.chdir(tmp_path)  # `latest` resolves checkpoints/<project>/<run> from here
    resume_from = ["+load_checkpoint=latest", "+project_name=proj", "+run_name=run"] if arch == "trm" else [
        f"+load_checkpoint={run_dir}"]
    launch(compose_config(overrides + [f"max_steps={COMPARED_STEPS}", *resume_from]))
    records = read_metrics(run_dir)
    logged_steps = [r["step"] for r in records if LOSS_KEYS[arch] in r]
    assert len(logged_steps) == len(set(logged_steps))  # what the killed run logged past its checkpoint is dropped
    resumed = helpers.step_values([r for r in records if r["step"] > resume_step], LOSS_KEYS[arch])

    launch(compose_config(overrides + [f"max_steps={COMPARED_STEPS}", f"+checkpoint_path={tmp_path / 'straight'}"]))
    straight = helpers.step_values(read_metrics(tmp_path / "straight"), LOSS_KEYS[arch])

    assert sorted(resumed) == list(range(resume_step + 1, COMPARED_STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-6, rel=0), step
    assert not (run_dir / "step_999").exists() and (run_dir / f"step_{COMPARED_STEPS}").is_dir()


def test_sigint_stops_after_the_step_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    data = make_puzzle_dataset(tmp_path / "data")
    overrides = ARCHS["trm"][1] + [f"data_paths=[{data}]", "max_steps=12"]
    real_train_step = train_loop.train_step

    def interrupted_step(state, *args):
        if state.step == 4:  # Ctrl-C arrives during the fifth step
            os.kill(os.getpid(), signal.SIGINT)
        return real_train_step(state, *args)

    monkeypatch.setattr(train_loop, "train_step", interrupted_step)
    run_dir = tmp_path / "run"
    launch(compose_config(overrides + [f"+checkpoint_path={run_dir}"]))
    out = capsys.readouterr().out
    assert f"stopped by SIGINT after step 5; checkpoint {run_dir / 'step_5'}\n" in out
    assert f"resume with the same command plus +load_checkpoint={run_dir}\n" in out
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_3", "step_5"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is uninstalled

    monkeypatch.setattr(train_loop, "train_step", real_train_step)
    records_before = len(read_metrics(run_dir))
    launch(compose_config(overrides + [f"+load_checkpoint={run_dir}"]))
    resumed = helpers.step_values(read_metrics(run_dir)[records_before:], "train/lm_loss")
    launch(compose_config(overrides + [f"+checkpoint_path={tmp_path / 'straight'}"]))
    straight = helpers.step_values(read_metrics(tmp_path / "straight"), "train/lm_loss")
    assert sorted(resumed) == list(range(6, 13))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], abs=1e-6, rel=0), step


def _inject_nan(monkeypatch, bad_calls: set[int] | None) -> None:
    """Make TRM's training forward return a NaN loss on the given calls (None: on every call)."""
    real_forward = TRM.forward
    calls = []

    def forward(self, carry, batch):
        out = real_forward(self, carry, batch)
        if self.training:
            if bad_calls is None or len(calls) in bad_calls:
                total, count = out.losses["lm_loss"]
                out.losses["lm_loss"] = (total * float("nan"), count)
            calls.append(1)
        return out

    monkeypatch.setattr(TRM, "forward", forward)


def test_nonfinite_steps_are_skipped_counted_and_logged(tmp_path, monkeypatch, capsys):
    data = make_puzzle_dataset(tmp_path / "data")
    overrides = TINY_TRM + [f"data_paths=[{data}]", "global_batch_size=16", "epochs=2", "eval_interval=2", "lr=1e-3"]
    _inject_nan(monkeypatch, bad_calls={2, 3})
    launch(compose_config(overrides + [f"+checkpoint_path={tmp_path / 'run'}"]))
    out = capsys.readouterr().out
    assert "warning: step 3: non-finite loss or gradients, step skipped (1 in a row, 1 in total)" in out
    assert "warning: step 4: non-finite loss or gradients, step skipped (2 in a row, 2 in total)" in out
    records = read_metrics(tmp_path / "run")
    assert sorted(helpers.step_values(records, "train/lm_loss")) == [1, 2, 5, 6]  # skipped steps log no loss
    assert [r["train/nonfinite_steps"] for r in records if "train/nonfinite_steps" in r] == [0, 0, 1, 2, 2, 2]
    final = read_checkpoint(tmp_path / "run" / "step_6")
    assert final.train_state["nonfinite_total"] == 2
    optimizer_steps = {float(s["step"]) for s in final.optimizers["weights"]["state"].values()}
    assert optimizer_steps == {4.0}  # 6 steps, 2 of them skipped
    assert all(torch.isfinite(tensor).all() for tensor in final.model.values())

    _inject_nan(monkeypatch, bad_calls=None)
    with pytest.raises(UserError) as error:
        launch(compose_config(overrides + ["max_nonfinite_steps=3", f"+checkpoint_path={tmp_path / 'nan'}"]))
    assert str(error.value) == ("loss or gradients were not finite for 3 steps in a row (step 3); "
                                "lower lr, check the data, or raise max_nonfinite_steps")
    assert list_checkpoints(tmp_path / "nan") == []


def _children(pid: int) -> list[int]:
    """Every descendant process of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_children(int(child))]
    return found


def _rank_of(pid: int) -> int | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [entry.split(b"=", 1)[1] for entry in environ if entry.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.multiprocess
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    args = TINY_TRM + [f"data_paths=[{data}]", "global_batch_size=16", "epochs=100", "eval_interval=100",
                       "lr=1e-3", f"+checkpoint_path={run_dir}"]
    torchrun = subprocess.Popen(
        [*helpers.torchrun_command(29533), str(REPO / "pretrain.py"), *args],
        cwd=tmp_path, env=helpers.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, torchrun, "two logged steps")
    rank1 = [pid for pid in _children(torchrun.pid) if _rank_of(pid) == 1]
    assert len(rank1) == 1, "expected one worker process with RANK=1"
    os.kill(rank1[0], signal.SIGTERM)  # as a scheduler preempting one node would
    out, err = torchrun.communicate(timeout=120)
    assert torchrun.returncode == 0, err[-3000:]

    match = re.search(r"stopped by a stop signal on another rank after step (\d+); checkpoint (\S+)\n"
                      r"resume with the same command plus \+load_checkpoint=(\S+)\n", out)
    assert match, out[-2000:]
    step = int(match.group(1))
    assert Path(match.group(2)) == run_dir / f"step_{step}" and Path(match.group(3)) == run_dir
    assert [path.name for path in list_checkpoints(run_dir)] == [f"step_{step}"]
    assert step < 300  # stopped early, not at the end of the run
    checkpoint = read_checkpoint(run_dir / f"step_{step}")
    assert checkpoint.train_state["step"] == step and checkpoint.train_state["world_size"] == 2
    assert sorted(checkpoint.rng) == ["rank0.cpu", "rank1.cpu"]
    assert next(iter(checkpoint.carry.values())).shape[0] == 16  # both ranks' slots, gathered
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged[-1] == step  # rank 0 logged the step at which both stopped


def _partial_save(run_dir: Path) -> bool:
    return any(entry.name.startswith(".step_") and ".partial-" in entry.name for entry in os.scandir(run_dir))


@pytest.mark.slow
def test_sigkill_during_the_save_of_the_newest_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    data = make_puzzle_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    # Wide enough (about 3M parameters, 36 MB per checkpoint) that a save lasts long enough to be caught midway.
    overrides = TINY_TRM + [f"data_paths=[{data}]", "global_batch_size=16", "epochs=8", "eval_interval=1", "lr=1e-3",
                            "arch.hidden_size=512", "checkpoint_keep_last=1", f"+checkpoint_path={run_dir}"]
    killed = subprocess.Popen([sys.executable, str(REPO / "pretrain.py"), *overrides], cwd=tmp_path, env=helpers.subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(list_checkpoints(run_dir)), killed, "its first checkpoint")
    _wait_for(lambda: _partial_save(run_dir), killed, "the save of its second checkpoint")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    killed.stderr.close()
    assert _partial_save(run_dir), "the save had finished before the kill"
    survivors = list_checkpoints(run_dir)
    assert len(survivors) == 1 and read_checkpoint(survivors[0]).train_state["step"] == 3
    assert sorted(path.name for path in run_dir.glob("step_*")) == ["step_3"]

    monkeypatch.chdir(tmp_path)
    launch(compose_config(overrides + ["resume=auto", "max_steps=9"]))
    assert "resumed from step_3 of" in capsys.readouterr().out
    logged = sorted(helpers.step_values(read_metrics(run_dir), "train/lm_loss"))
    assert logged == list(range(1, 10))  # steps 4-9 trained again after the resume, none twice
    # One checkpoint left, and nothing of the killed save (hidden leftovers are cleared by the next save).
    assert sorted(path.name for path in run_dir.iterdir() if path.name.startswith((".", "step_"))) == ["step_9"]


def test_keep_last_keeps_the_newest_and_the_best_by_the_eval_metric(tmp_path, capsys):
    data = make_puzzle_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    # "Best" is the highest loss here (checkpoint_best_mode=max), so that it is an old checkpoint, not a newest one.
    launch(compose_config(TINY_TRM + [
        f"data_paths=[{data}]", "global_batch_size=16", "epochs=8", "eval_interval=1", "lr=1e-3",
        "checkpoint_keep_last=2", "checkpoint_keep_best=all/lm_loss", "checkpoint_best_mode=max",
        f"+checkpoint_path={run_dir}",
    ]))
    evaluated = helpers.step_values(read_metrics(run_dir), "all/lm_loss")
    assert sorted(evaluated) == [3, 6, 9, 12, 15, 18, 21, 24]
    best = max(evaluated, key=evaluated.get)
    assert best not in (21, 24)
    kept = {f"step_{step}" for step in (21, 24, best)}
    assert {path.name for path in list_checkpoints(run_dir)} == kept
    assert {path.name for path in run_dir.glob("step_*")} == kept
    assert read_checkpoint(run_dir / f"step_{best}").train_state["eval_metrics"]["all/lm_loss"] == pytest.approx(
        evaluated[best])
    out = capsys.readouterr().out
    assert f"best checkpoint by all/lm_loss (max): {run_dir / f'step_{best}'} ({evaluated[best]:.6g})" in out
    # Evaluation progress when stdout is not a terminal: a line at the start and one per set.
    assert "evaluating at step 24\n" in out and re.search(r"eval at step 24: set all done, 1 batch\(es\) in [\d.]+ s\n", out)
