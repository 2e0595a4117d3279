"""`utils.finetune_suite` end to end on CPU: a tiny pretrained BERT fine-tuned on a generated
GLUE-layout folder (all nine tasks, GLUE's headers and column orders, CoLA headerless, MNLI's
two dev files), every task scored, the GLUE score equal to the hand computation, predictions
written; a suite killed midway resumes without repeating a finished run; bad input is one
line before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.glue_data import write_glue_folder
from core.errors import UserError
from dataset.tasks.format import read_task_metadata
from pretrain import launch
from tests.helpers import REPO, TINY_BERT, compose_config, make_mlm_dataset, write_wordpiece_vocab
from training.metrics import read_metrics
from utils.finetune_suite import main, parse_args, run_suite
from utils.suite_runner import try_lock

GLUE = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
TINY_RUN = ["--lrs", "1e-3", "--seeds", "0", "--epochs", "1", "--batch-size", "8", "--max-seq-length", "16",
            "--wandb", "disabled", "--overrides", "log_interval=1"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny pretrained checkpoint (2 steps) and a generated GLUE folder of 16 training and 8 dev lines per task."""
    root = tmp_path_factory.mktemp("suite")
    make_mlm_dataset(root / "mlm")
    launch(compose_config(TINY_BERT + [f"data_paths=[{root / 'mlm'}]", f"+checkpoint_path={root / 'pre'}",
                                       "global_batch_size=8", "max_steps=2"]))
    write_glue_folder(root / "glue", num_train=16, num_dev=8)
    return root


def hand_glue_score(runs: list[dict]) -> float:
    """GLUE's rule computed here from each run's metrics: two-metric tasks and MNLI average, nine tasks."""
    by_task = {run["task"]: run["metrics"] for run in runs}
    scores = [np.mean(list(by_task[task].values())) for task in GLUE]
    assert by_task["mrpc"].keys() == {"dev/f1", "dev/accuracy"}
    assert by_task["mnli"].keys() == {"dev_matched/accuracy", "dev_mismatched/accuracy"}
    return float(sum(scores) / 9)


@pytest.mark.slow
def test_suite_scores_every_glue_task_writes_predictions_and_reruns_nothing(start, capsys):
    out = start / "out"
    argv = ["--init-from", str(start / "pre"), "--glue-dir", str(start / "glue"), "--output-dir", str(out),
            "--parallel", "2", *TINY_RUN]
    main(argv)
    summary = json.loads((out / "results.json").read_text())
    assert [task["task"] for task in summary["tasks"]] == GLUE
    assert len(summary["runs"]) == 9 and summary["failed"] == []
    assert summary["glue_score"] == pytest.approx(hand_glue_score(summary["runs"]), abs=1e-9)
    assert f"GLUE score: {summary['glue_score']:.2f}" in (out / "results.md").read_text()
    for run in summary["runs"]:
        run_dir = Path(run["run_dir"])
        final = read_metrics(run_dir)[-1]  # the last record is the final evaluation
        assert run["metrics"] == {key: pytest.approx(final[key] * 100) for key in run["metrics"]}
        assert not list(run_dir.glob("step_*"))  # checkpoints of finished runs are deleted
        for dev_set in {key.split("/")[0] for key in run["metrics"]}:
            lines = (run_dir / "predictions" / f"{dev_set}.tsv").read_text().splitlines()
            assert lines[0] == "index\tprediction" and len(lines) == 1 + 8
    assert (out / "runs/mnli/lr0.001-seed0/predictions/dev_mismatched.tsv").is_file()
    assert read_task_metadata(out / "data" / "qqp").num_examples["train"] == 16  # the short line is skipped
    cola = (out / "runs/cola/lr0.001-seed0/predictions/dev.tsv").read_text().splitlines()[1:]
    assert {line.split("\t")[1] for line in cola} <= {"0", "1"}

    # The same command again: every run is finished, nothing starts, the table is the same.
    capsys.readouterr()
    main(argv)
    printed = capsys.readouterr().out
    assert "9 runs, 9 already finished, 0 to run" in printed and "start " not in printed
    assert json.loads((out / "results.json").read_text())["glue_score"] == summary["glue_score"]
    # Settings that change the runs are refused in the same folder.
    with pytest.raises(UserError, match="holds a suite with other settings \\(epochs: 1 there, 2 now\\)"):
        main([*argv[:-len(TINY_RUN)], *TINY_RUN[:5], "2", *TINY_RUN[6:]])


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_suite_resumes_without_repeating_finished_runs_and_rte_starts_from_mnli(start):
    out = start / "killed"
    argv = ["--init-from", str(start / "pre"), "--glue-dir", str(start / "glue"), "--output-dir", str(out),
            "--tasks", "mnli", "rte", "--from-mnli", *TINY_RUN]
    argv[argv.index("--epochs") + 1] = "2"  # an evaluation and a checkpoint after each epoch
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    suite = subprocess.Popen([sys.executable, "-m", "utils.finetune_suite", *argv], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = lambda: list(out.glob("runs/*/*/result.json"))  # noqa: E731
    # Kill once one run is finished and the next has saved a checkpoint (its first epoch).
    in_progress = lambda: [p for p in out.glob("runs/*/*/step_*") if not (p.parent / "result.json").exists()]  # noqa: E731
    _wait_for(lambda: results() and in_progress(), timeout=300)
    suite.send_signal(signal.SIGKILL)
    suite.wait()
    finished_before = {path: path.read_text() for path in results()}
    interrupted = {path.parent for path in in_progress()} - {path.parent for path in finished_before}
    assert interrupted

    run_suite(parse_args(argv))  # waits for the orphaned run to checkpoint and exit, then resumes it
    summary = json.loads((out / "results.json").read_text())
    assert [(task["task"], task["from_mnli"]) for task in summary["tasks"]] == [
        ("mnli", False), ("rte", False), ("rte", True)] and summary["failed"] == []
    assert "RTE (from MNLI)" in (out / "results.md").read_text()
    for path, text in finished_before.items():
        assert path.read_text() == text  # not run again
        log = out / "logs" / f"{path.parent.parent.name}-{path.parent.name}.log"
        assert log.read_text().count("=== ") == 1
    for run_dir in interrupted:
        log = (out / "logs" / f"{run_dir.parent.name}-{run_dir.name}.log").read_text()
        assert log.count("=== ") == 2 and "resumed from step_" in log
    # RTE from MNLI: the MNLI encoder and pooler are loaded, the 2-class head starts fresh.
    log = (out / "logs" / "rte-from-mnli-lr0.001-seed0.log").read_text()
    assert f"initialised from {out}/mnli-start/lr0.001-seed0/step_" in log
    assert "fresh: classifier.weight, classifier.bias; dropped: none" in log


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(UserError) as caught:
        run_suite(parse_args(argv))
    return str(caught.value)


def test_bad_input_is_one_line_and_writes_nothing(start, tmp_path, capsys):
    glue = tmp_path / "glue"
    shutil.copytree(start / "glue", glue)
    out = tmp_path / "out"
    base = ["--init-from", str(start / "pre"), "--glue-dir", str(glue), "--output-dir", str(out), *TINY_RUN]
    assert _error(capsys, [*base, "--tasks", "sst"]).startswith("unknown task 'sst'; known tasks: cola, sst2")
    (glue / "RTE" / "dev.tsv").unlink()
    assert "RTE/dev.tsv is missing" in _error(capsys, base)
    shutil.copy(start / "glue" / "RTE" / "dev.tsv", glue / "RTE" / "dev.tsv")
    mrpc = glue / "MRPC" / "train.tsv"
    mrpc.write_text(mrpc.read_text().replace("#1 String", "String1", 1))
    assert "MRPC/train.tsv has no column '#1 String'" in _error(capsys, base)
    shutil.copy(start / "glue" / "MRPC" / "train.tsv", mrpc)
    cola = glue / "CoLA" / "train.tsv"
    cola.write_text("source\tlabel\tauthor\tsentence\n" + cola.read_text())
    assert "GLUE's CoLA has no header line" in _error(capsys, base)
    shutil.copy(start / "glue" / "CoLA" / "train.tsv", cola)
    other_vocab = write_wordpiece_vocab(tmp_path / "other")
    assert "does not match the starting point" in _error(capsys, [*base, "--tokenizer", str(other_vocab)])
    assert not out.exists()  # nothing was written for any of them
    held = try_lock(tmp_path / ".suite.lock")
    busy = [*base[:4], "--output-dir", str(tmp_path), *base[6:]]
    assert _error(capsys, busy).startswith(f"another finetune_suite is running in {tmp_path}")
    os.close(held)


@pytest.mark.slow
def test_suite_starts_from_a_transformers_folder(start, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "hf-bert"
    shutil.copytree(start / "mlm" / "tokenizer", model_dir)
    vocab_size = len((model_dir / "vocab.txt").read_text().splitlines())
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(model_dir)
    out = tmp_path / "out"
    base = ["--init-from-hf", str(model_dir), "--glue-dir", str(start / "glue"), "--output-dir", str(out),
            "--tasks", "rte", *TINY_RUN]
    other_vocab = write_wordpiece_vocab(tmp_path / "other")
    assert "does not match the starting point" in _error(capsys, [*base, "--tokenizer", str(other_vocab)])
    main(base)
    summary = json.loads((out / "results.json").read_text())
    assert [run["task"] for run in summary["runs"]] == ["rte"] and summary["glue_score"] is None
    assert f"+init_from_hf={model_dir}" in (out / "logs" / "rte-lr0.001-seed0.log").read_text()
    assert "Mean of the 1 GLUE tasks scored" in (out / "results.md").read_text()
