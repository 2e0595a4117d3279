"""What a run prints: one progress line per log interval in a log file, and no wandb or DDP
noise (a missing wandb login is one line, exit status 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY_TRM, make_puzzle_dataset
from training.metrics import LineProgress

RUN = [arg for arg in TINY_TRM if not arg.startswith(("log_interval=", "wandb="))]


def _pretrain(args: list[str], cwd, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, str(REPO / "pretrain.py"), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_a_log_file_gets_one_progress_line_per_log_interval(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")  # 48 puzzles / batch 8 = 6 steps per epoch
    result = _pretrain([*RUN, f"data_paths=[{data}]", "global_batch_size=8", "epochs=4", "eval_interval=4",
                        "log_interval=5", "wandb=disabled", f"+checkpoint_path={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    progress = re.findall(r"^step (\d+)/24: loss=\S+ lr=\S+ examples/s=\d+ \(\S+ elapsed, \S+ left\)$", output, re.M)
    assert progress == ["5", "10", "15", "20", "24"]  # every 5th step and the last; nothing per step
    assert "\r" not in output and "it/s" not in output  # no progress bar redraws in the file


def test_line_progress_counts_steps_and_estimates_the_time_left(capsys, monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr("training.metrics.time.perf_counter", lambda: next(clock))
    progress = LineProgress(total=30, initial=10)  # a resumed run: 10 steps done before
    progress.update(5)
    progress.set_postfix({"loss": "1.5000"})
    assert capsys.readouterr().out == "step 15/30: loss=1.5000 (00:00:10 elapsed, 00:00:30 left)\n"


def test_wandb_online_without_a_login_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("wandb")  # CI installs .[dev], which leaves wandb out
    data = make_puzzle_dataset(tmp_path / "data")
    home = tmp_path / "home"  # no ~/.netrc, no wandb settings
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": "", "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
           "WANDB_DIR": str(tmp_path), "NETRC": str(home / ".netrc")}
    result = _pretrain([*RUN, f"data_paths=[{data}]", "wandb=online", f"+checkpoint_path={tmp_path / 'run'}"],
                       tmp_path, **env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().count("\n") == 0 and result.stdout == ""
    assert result.stderr.startswith("error: wandb=online but wandb finds no login") and "wandb login" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow  # wandb starts its service process: over a minute on a loaded 2-core machine
def test_wandb_auto_without_a_login_logs_offline_without_deprecation_warnings(tmp_path):
    pytest.importorskip("wandb")
    data = make_puzzle_dataset(tmp_path / "data")
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "WANDB_API_KEY": "", "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
           "NETRC": str(home / ".netrc")}
    result = _pretrain([*RUN, f"data_paths=[{data}]", "wandb=auto", "max_steps=2", "epochs=1", "eval_interval=1",
                        f"+checkpoint_path={tmp_path / 'run'}"], tmp_path, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: wandb is logging offline" in result.stdout
    assert "deprecated" not in result.stdout + result.stderr  # wandb.api's warning (wandb >= 0.30)


def test_a_wandb_key_in_the_environment_counts_as_a_login(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from training.metrics import check_wandb_login, wandb_logged_in

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert not wandb_logged_in(wandb)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789" * 4)  # read locally, never checked with the server here
    assert wandb_logged_in(wandb)
    check_wandb_login("online")  # no error
