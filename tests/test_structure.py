"""The structure of the code base: layers, plugins, packaging, and defaults that follow the data."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import tomllib
import torch
from torch import nn

from dataset.kinds import DATA_KINDS
from models import registry
from models.interface import ArchConfig, ArchPlugin, ParamGroups, StepOutput, TrainModule, decay_groups
from pretrain import launch
from tests.helpers import REPO, TINY_TRM, compose_config, make_puzzle_dataset
from tests.test_arc_dataset import build_synthetic
from training.checkpoint import find_latest
from training.metrics import progress_fields, read_metrics

PACKAGES = ("core", "dataset", "models", "evaluators", "training", "utils", "benchmarks")


def _lint_imports(root) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([lint, "--config", str(root / "pyproject.toml")], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}, timeout=120)


def test_import_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "0 broken" in result.stdout


def test_a_wrong_way_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the packages where the data side imports the engine."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", ".cache"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    stream = tmp_path / "dataset" / "stream.py"
    stream.write_text(stream.read_text() + "\nfrom training import loop  # wrong way: data -> engine\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "dataset.stream -> training.loop" in result.stdout


def test_requirements_txt_agrees_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert sorted(line for line in lines if line) == sorted(project["dependencies"])
    for heavy in ("wandb", "transformers", "pyarrow", "matplotlib"):
        assert not any(requirement.startswith(heavy) for requirement in project["dependencies"]), heavy


def test_no_script_edits_sys_path():
    offenders = [str(path.relative_to(REPO)) for package in PACKAGES for path in (REPO / package).rglob("*.py")
                 if "sys.path" in path.read_text(encoding="utf-8")]
    assert offenders == []


# ------------------------------------------------------------- an architecture is a plugin


class ToyConfig(ArchConfig):
    """A throwaway architecture: one embedding and a linear read-out per position."""

    name: str = "toy"
    width: int = 16


class Toy(TrainModule):
    def __init__(self, config: ToyConfig, metadata):
        super().__init__()
        self.embed = nn.Embedding(metadata.vocab_size, config.width)
        self.head = nn.Linear(config.width, metadata.vocab_size)

    def forward(self, carry, batch) -> StepOutput:
        logits = self.head(self.embed(batch["inputs"].long()))  # (B, L, V)
        labels = batch["labels"].long()
        valid = labels != -100
        losses = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        pair = (losses.sum(), valid.sum())
        return StepOutput(carry={}, losses={"token_loss": pair})


def _toy_plugin() -> ArchPlugin:
    return ArchPlugin(
        name="toy", config_class=ToyConfig, build=Toy, data_kind="puzzle",
        param_groups=lambda model, weight_decay: ParamGroups(dense=decay_groups(model, weight_decay)),
        main_loss="token_loss", count_batch=lambda batch: {"examples": len(batch["inputs"]), "tokens": 0},
    )


def test_a_new_architecture_needs_no_engine_edit(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.ARCHITECTURES, "toy", _toy_plugin())
    data = make_puzzle_dataset(tmp_path / "data")
    raw = compose_config(TINY_TRM + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}",
                                     "global_batch_size=16", "epochs=10", "eval_interval=10", "lr=1e-2", "lr_warmup_steps=1"])
    raw["arch"] = {"name": "toy", "width": 8}
    launch(raw)
    losses = [r["train/token_loss"] for r in read_metrics(tmp_path / "run") if "train/token_loss" in r]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # it trains
    assert find_latest(tmp_path / "run").name == "step_30"
    # It resumes like any other architecture.
    raw = compose_config(TINY_TRM + [f"data_paths=[{data}]", f"+load_checkpoint={tmp_path / 'run'}",
                                     "global_batch_size=16", "epochs=12", "eval_interval=12"])
    raw["arch"] = {"name": "toy", "width": 8}
    launch(raw)
    assert find_latest(tmp_path / "run").name == "step_36"


def test_progress_bar_shows_the_architectures_main_loss():
    metrics = {"train/token_loss": 1.25, "train/lr": 1e-3, "train/examples_per_s": 10.0}
    assert progress_fields(metrics, "token_loss") == {"loss": "1.2500", "lr": "1.00e-03", "examples/s": "10"}


def test_every_architecture_declares_a_known_data_kind_and_main_loss():
    for name, plugin in registry.ARCHITECTURES.items():
        assert plugin.name == name and plugin.data_kind in DATA_KINDS
        assert issubclass(plugin.config_class, ArchConfig)


# ----------------------------------------------------------- defaults follow the data


def test_default_evaluators_follow_the_data(tmp_path):
    puzzle = DATA_KINDS["puzzle"]
    sudoku_like = make_puzzle_dataset(tmp_path / "sudoku")
    arc_data = build_synthetic(tmp_path, num_aug=1)
    assert puzzle.default_evaluators([str(sudoku_like)]) == []
    assert puzzle.default_evaluators([str(arc_data)]) == [{"name": "arc"}]
    assert DATA_KINDS["mlm"].default_evaluators(["anything"]) == []


def test_a_non_arc_trm_run_needs_no_evaluators_flag(tmp_path):
    data = make_puzzle_dataset(tmp_path / "data")
    overrides = [o for o in TINY_TRM if not o.startswith("evaluators")]
    launch(compose_config(overrides + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}",
                                       "global_batch_size=16", "epochs=1", "eval_interval=1"]))
    final = [r for r in read_metrics(tmp_path / "run") if "all/exact_accuracy" in r]
    assert final and not any(key.startswith("ARC/") for key in final[-1])


def test_an_arc_run_votes_by_default(tmp_path):
    data = build_synthetic(tmp_path, num_aug=1)
    overrides = [o for o in TINY_TRM if not o.startswith("evaluators")]
    launch(compose_config(overrides + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}",
                                       "global_batch_size=8", "max_steps=2", "arch.hidden_size=16"]))
    final = [r for r in read_metrics(tmp_path / "run") if "ARC/pass@1" in r]
    assert final and 0.0 <= final[-1]["ARC/pass@1"] <= 1.0
    assert (tmp_path / "run" / "submission.json").is_file()


def test_bert_presets_extend_bert_and_state_only_their_sizes():
    base = compose_config(["arch=bert"])
    for preset in ("bert_large", "bert_tiny"):
        text = (REPO / "config" / "arch" / f"{preset}.yaml").read_text()
        assert "- bert" in text and "optimizer" not in text and "masking" not in text
        composed = compose_config([f"arch={preset}"])
        differing = {key for key in base["arch"] if base["arch"][key] != composed["arch"][key]}
        assert differing == {"num_layers", "hidden_size", "num_heads"}
        assert {k: v for k, v in composed.items() if k != "arch"} == {k: v for k, v in base.items() if k != "arch"}


def test_no_torch_in_the_data_side():
    code = "import sys, dataset.kinds, dataset.puzzles.builder, dataset.text.corpus; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
    assert torch.__version__  # the test process itself has torch; the child did not load it
