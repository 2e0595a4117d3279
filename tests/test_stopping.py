"""Stop requests are honoured even in the middle of a long evaluation, on every rank.

The runs are real CLI runs (`python pretrain.py`, or `torchrun` with 2 gloo processes) of
a tiny TRM whose evaluation takes minutes on purpose: 4,000 test examples in batches of
16, each batch run for 128 ACT steps (evaluation always runs `halt_max_steps`), so one
evaluation batch takes about a second and the whole evaluation several minutes.

- SIGTERM during the evaluation: the evaluation is abandoned (nothing of it is logged),
  the last finished step is saved, the exit status is 0 and the resume line is printed,
  within 30 s of the signal; an `eval_only` run stops too, records nothing and exits 143.
- A second SIGINT ends the process at once with status 130 and one line saying that no
  checkpoint was written, even when the main thread is stuck in a collective.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_TRM, make_puzzle_dataset, subprocess_env, torchrun_command
from tests.test_kill_resume import _children, _rank_of, _wait_for
from training.checkpoint import list_checkpoints, read_checkpoint
from training.metrics import read_metrics

STOP_WITHIN_S = 30.0
"""What schedulers wait between SIGTERM and SIGKILL by default (Kubernetes, Slurm's KillWait)."""


def _slow_evaluation_run(tmp_path: Path) -> tuple[list[str], Path]:
    """Overrides of a 2-step run whose first evaluation (after step 2) takes minutes, and its run folder."""
    data = make_puzzle_dataset(tmp_path / "data", num_train=32, num_test=4000)
    run_dir = tmp_path / "run"
    overrides = TINY_TRM + [f"data_paths=[{data}]", "global_batch_size=16", "epochs=2", "eval_interval=1",
                            "lr=1e-3", "arch.halt_max_steps=128", f"+checkpoint_path={run_dir}"]
    return overrides, run_dir


def _start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1)


def _read_until(stream, marker: str, process: subprocess.Popen, timeout: float = 180.0) -> list[str]:
    """Lines of `stream` up to and including the first that contains `marker`."""
    deadline = time.monotonic() + timeout
    lines = []
    for line in stream:
        lines.append(line)
        if marker in line:
            return lines
        if time.monotonic() > deadline:
            break
    process.kill()
    pytest.fail(f"no line with {marker!r} (status {process.poll()}): {''.join(lines)[-2000:]}")


def _finish(process: subprocess.Popen, timeout: float, workers: tuple[int, ...] = ()) -> tuple[str, str, float]:
    """(rest of stdout, rest of stderr, seconds until the process ended); on a timeout the
    process and its `workers` (torchrun starts them in sessions of their own) are killed."""
    started = time.monotonic()
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"still running {timeout:.0f} s after the signal: {out[-1500:]} {err[-1500:]}")
    return out, err, time.monotonic() - started


def _assert_saved_step_2_without_eval(run_dir: Path, world_size: int) -> None:
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_2"]
    saved = read_checkpoint(run_dir / "step_2").train_state
    assert saved["step"] == 2 and saved["world_size"] == world_size and saved["eval_metrics"] == {}
    records = read_metrics(run_dir)
    assert [record["step"] for record in records] == [1, 2]
    assert all(key in ("step", "time") or key.startswith("train/") for record in records for key in record)


def test_sigterm_during_evaluation_saves_the_last_step_and_exits_0(tmp_path):
    overrides, run_dir = _slow_evaluation_run(tmp_path)
    run = _start([sys.executable, str(REPO / "pretrain.py"), *overrides], tmp_path)
    _read_until(run.stdout, "evaluating at step 2", run)
    run.send_signal(signal.SIGTERM)
    out, err, seconds = _finish(run, STOP_WITHIN_S)
    assert run.returncode == 0, err[-2000:]
    assert seconds < STOP_WITHIN_S
    assert "evaluation at step 2 abandoned after" in out and "its metrics are not logged" in out
    assert f"stopped by SIGTERM after step 2; checkpoint {run_dir / 'step_2'}\n" in out
    assert f"resume with the same command plus +load_checkpoint={run_dir}\n" in out
    _assert_saved_step_2_without_eval(run_dir, world_size=1)

    # eval_only stops on the first signal as well, and records nothing.
    evaluation = _start([sys.executable, str(REPO / "pretrain.py"), "eval_only=true", f"+load_checkpoint={run_dir}"],
                        tmp_path)
    _read_until(evaluation.stdout, "evaluating at step 2", evaluation)
    evaluation.send_signal(signal.SIGTERM)
    out, err, seconds = _finish(evaluation, STOP_WITHIN_S)
    assert evaluation.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "abandoned" in out and "Traceback" not in err
    assert not (run_dir / "evaluations.jsonl").exists()


def test_a_second_sigint_ends_the_run_at_once_with_130(tmp_path):
    overrides, run_dir = _slow_evaluation_run(tmp_path)
    run = _start([sys.executable, str(REPO / "pretrain.py"), *overrides], tmp_path)
    _read_until(run.stdout, "evaluating at step 2", run)
    run.send_signal(signal.SIGINT)
    # Acknowledged at once; the evaluation batch in progress takes about a second more.
    _read_until(run.stderr, "SIGINT: stopping after the current step or evaluation batch", run)
    run.send_signal(signal.SIGINT)
    _out, err, seconds = _finish(run, 10.0)
    assert run.returncode == 130
    said = [line for line in err.splitlines() if "second SIGINT" in line]
    assert said == ["second SIGINT: stopped at once; no checkpoint was written (the run folder keeps the earlier ones)"]
    assert "Traceback" not in err
    assert list_checkpoints(run_dir) == []


def _torchrun(args: list[str], cwd: Path, port: int) -> subprocess.Popen:
    return _start([*torchrun_command(port), str(REPO / "pretrain.py"), *args], cwd)


def _worker(torchrun: subprocess.Popen, rank: int) -> int:
    workers = [pid for pid in _children(torchrun.pid) if _rank_of(pid) == rank]
    assert len(workers) == 1, f"expected one worker process with RANK={rank}"
    return workers[0]


@pytest.mark.multiprocess
def test_sigterm_to_one_rank_during_evaluation_stops_both(tmp_path):
    overrides, run_dir = _slow_evaluation_run(tmp_path)
    torchrun = _torchrun(overrides, tmp_path, 29561)
    _read_until(torchrun.stdout, "evaluating at step 2", torchrun)
    workers = (_worker(torchrun, 0), _worker(torchrun, 1))
    os.kill(workers[1], signal.SIGTERM)  # rank 0 hears of it through the per-batch vote
    out, err, seconds = _finish(torchrun, STOP_WITHIN_S, workers)
    assert torchrun.returncode == 0, err[-3000:]
    assert seconds < STOP_WITHIN_S
    assert "evaluation at step 2 abandoned after" in out
    assert f"stopped by a stop signal on another rank after step 2; checkpoint {run_dir / 'step_2'}\n" in out
    _assert_saved_step_2_without_eval(run_dir, world_size=2)


@pytest.mark.multiprocess
def test_two_sigints_end_a_rank_stuck_in_a_collective(tmp_path):
    overrides, run_dir = _slow_evaluation_run(tmp_path)
    torchrun = _torchrun(overrides, tmp_path, 29562)
    _read_until(torchrun.stdout, "evaluating at step 2", torchrun)
    rank0, rank1 = _worker(torchrun, 0), _worker(torchrun, 1)
    os.kill(rank1, signal.SIGSTOP)  # rank 0 soon waits for it in the evaluation's stop vote and cannot go on
    try:
        os.kill(rank0, signal.SIGINT)
        time.sleep(0.5)  # two signals sent too close together may reach the process as one
        os.kill(rank0, signal.SIGINT)
        _wait_for(lambda: not Path(f"/proc/{rank0}").exists() or _is_zombie(rank0), torchrun, "rank 0 to end",
                  timeout=10.0)
    finally:
        os.kill(rank1, signal.SIGCONT)
    _out, err, _seconds = _finish(torchrun, 60.0, (rank0, rank1))
    said = [line for line in err.splitlines() if "second SIGINT" in line]
    assert said == ["second SIGINT: stopped at once; no checkpoint was written (the run folder keeps the earlier ones)"]
    assert "exitcode  : 130" in err  # torchrun's report of rank 0
    assert torchrun.returncode != 0
    assert list_checkpoints(run_dir) == []


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
