"""What a run says at start when its settings would quietly waste it: the learning rate it
will really reach (and a warning when it stops inside warm-up or early in its schedule),
a fine-tuning run without pretrained weights, `arch.*` sizes replaced by the starting
checkpoint's, and `+init_from` where it cannot apply."""

from __future__ import annotations

import json

import pytest

from core.errors import ConfigError
from dataset import build_text_mlm_dataset
from pretrain import launch
from tests.helpers import (
    TINY_BERT,
    TINY_TRM,
    compose_config,
    make_cls_files,
    make_mlm_dataset,
    make_puzzle_dataset,
    run_builder,
)

PRESET_BERT = [item for item in TINY_BERT if not item.startswith("lr_warmup_steps")]
"""The tiny BERT with the presets' schedule: 10,000 warm-up steps, linear decay to 0."""


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny MLM dataset (23 training sequences, 2.875 steps per epoch at batch 8) and a
    1-step pretraining run on it."""
    root = tmp_path_factory.mktemp("start-notes")
    data = make_mlm_dataset(root / "mlm")
    assert json.loads((data / "dataset.json").read_text())["num_sequences"]["train"] == 23
    launch(compose_config(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={root / 'pre'}",
                                       "global_batch_size=8", "max_steps=1"]))
    return root


def _start(capsys, overrides: list[str]) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr `warning:`/`note:` lines) of a run."""
    launch(compose_config(overrides))
    captured = capsys.readouterr()
    return captured.out.splitlines(), [line for line in captured.err.splitlines()
                                       if line.startswith(("warning:", "note:"))]


def test_a_short_run_inside_warm_up_says_its_peak_rate_and_how_to_plan_it(pretrained, tmp_path, capsys):
    out, lines = _start(capsys, PRESET_BERT + [f"data_paths=[{pretrained / 'mlm'}]", f"+checkpoint_path={tmp_path}",
                                               "global_batch_size=8", "max_steps=30"])
    # epochs=100000 at 2.875 steps per epoch plans 287,500 steps; update 30 of a 10,000-step warm-up has 3e-7.
    assert ("learning rate: 10000 warm-up steps to lr=0.0001, linear decay to 0 at step 287500; this run peaks at "
            "3e-07 and ends at 3e-07 (step 30)") in out
    assert lines == ["warning: this run stops at step 30, inside the 10000-step warm-up: its learning rate peaks at "
                     "3e-07, 0.3% of lr=0.0001; plan the schedule for the run: total_steps=30 instead of max_steps=30, "
                     "with lr_warmup_ratio=0.1"]


def test_a_whole_run_shorter_than_its_warm_up_is_warned(pretrained, tmp_path, capsys):
    _, lines = _start(capsys, PRESET_BERT + [f"data_paths=[{pretrained / 'mlm'}]", f"+checkpoint_path={tmp_path}",
                                             "global_batch_size=8", "epochs=2"])
    assert lines == ["warning: this run stops at step 5, inside the 10000-step warm-up: its learning rate peaks at "
                     "5e-08, 0.1% of lr=0.0001; set lr_warmup_ratio=0.1 (or lr_warmup_steps below 5)"]


def test_a_planned_short_run_has_no_warning(pretrained, tmp_path, capsys):
    out, lines = _start(capsys, PRESET_BERT + [f"data_paths=[{pretrained / 'mlm'}]", f"+checkpoint_path={tmp_path}",
                                               "global_batch_size=8", "epochs=4", "lr_warmup_ratio=0.1"])
    assert lines == []
    assert ("learning rate: 1 warm-up steps to lr=0.0001, linear decay to 0 at step 11; this run peaks at 0.0001 "
            "and ends at 0 (step 11)") in out


@pytest.fixture(scope="module")
def cls_data(pretrained):
    train, dev = make_cls_files(pretrained / "files")
    output = pretrained / "cls"
    assert run_builder(__import__("dataset.build_text_cls_dataset", fromlist=["main"]).main, "--train-files", train,
                       "--validation-files", dev, "--tokenizer", pretrained / "mlm" / "tokenizer", "--max-seq-length",
                       16, "--output-dir", output) == 0
    return output


FINETUNE = ["arch=bert_cls", "wandb=disabled", "cpu_threads=1", "global_batch_size=8", "epochs=1"]


def test_fine_tuning_from_random_weights_is_noted(cls_data, tmp_path, capsys):
    _, lines = _start(capsys, FINETUNE + ["arch.num_layers=1", "arch.hidden_size=32", "arch.num_heads=2",
                                          f"data_paths=[{cls_data}]", f"+checkpoint_path={tmp_path}"])
    assert lines == ["note: arch=bert_cls starts from random weights, nothing pretrained; to fine-tune, pass "
                     "+init_from=RUN_FOLDER (a pretraining run of this project) or +init_from_hf=DIR (a transformers "
                     "BERT)"]


def test_arch_sizes_replaced_by_the_starting_checkpoint_are_noted(pretrained, cls_data, tmp_path, capsys):
    _, lines = _start(capsys, FINETUNE + ["arch.num_layers=2", f"data_paths=[{cls_data}]",
                                          f"+init_from={pretrained / 'pre'}", f"+checkpoint_path={tmp_path}"])
    assert lines == [f"note: the model is sized like +init_from={pretrained / 'pre'}, not by arch.*: num_layers=1 "
                     "(arch.num_layers=2 ignored), hidden_size=32 (arch.hidden_size=768 ignored), num_heads=2 "
                     "(arch.num_heads=12 ignored)"]


def test_pretraining_starts_from_another_runs_weights_on_another_dataset(pretrained, tmp_path, capsys):
    longer = tmp_path / "mlm-64"
    assert run_builder(build_text_mlm_dataset.main, "--input-files", pretrained / "mlm.txt", "--output-dir", longer,
                       "--tokenizer", pretrained / "mlm" / "tokenizer", "--max-seq-length", 64) == 0
    out, lines = _start(capsys, TINY_BERT + [f"data_paths=[{longer}]", f"+init_from={pretrained / 'pre'}",
                                             f"+checkpoint_path={tmp_path / 'phase2'}", "global_batch_size=8",
                                             "max_steps=1", "epochs=1", "lr_warmup_steps=0"])
    banner = next(line for line in out if line.startswith("initialised from"))
    assert "model weights" in banner and "fresh: none; dropped: none" in banner
    assert lines == [line for line in lines if "--max-seq-length 64 leaves" in line]  # only the builder's fill warning
    assert (tmp_path / "phase2" / "step_1").is_dir()


def test_init_from_where_it_cannot_apply_names_the_resume_route(tmp_path):
    data = make_puzzle_dataset(tmp_path / "puzzles")
    with pytest.raises(ConfigError) as error:
        launch(compose_config(TINY_TRM + [f"data_paths=[{data}]", f"+init_from={tmp_path}",
                                          f"+checkpoint_path={tmp_path / 'runs'}", "global_batch_size=16"]))
    assert str(error.value) == ("+init_from is not supported for arch trm: to start a new run from another run's "
                                "weights and optimiser state use +continue_from=RUN_FOLDER (same parameter shapes); "
                                "to resume that run, +load_checkpoint=RUN_FOLDER")
