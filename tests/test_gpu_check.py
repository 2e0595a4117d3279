"""`benchmarks/gpu_check.sh`, the GPU acceptance script: its Python half (which carried
wheels to install, the results file with its verdict and targets) and, marked slow, the
whole script's CPU dry run, as CI runs it (no ../shared, no GPU)."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest

from benchmarks import gpu_check
from tests.helpers import REPO, subprocess_env


def _wheel(folder, name: str, files: list[str], requires: tuple[str, ...] = ()):
    path = folder / f"{name}-1.0-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        for file in files:
            archive.writestr(file, "")
        archive.writestr(f"{name}-1.0.dist-info/METADATA", metadata)
        archive.writestr(f"{name}-1.0.dist-info/RECORD", "")
    return path


def test_only_the_wheels_whose_packages_do_not_import_are_installed(tmp_path):
    present = _wheel(tmp_path, "json", ["json/__init__.py", "json/decoder.py"])  # the machine has it: skipped
    package = _wheel(tmp_path, "absent_package_gpu_check", ["absent_package_gpu_check/__init__.py"])
    module = _wheel(tmp_path, "absent_module_gpu_check", ["absent_module_gpu_check.py"])
    half = _wheel(tmp_path, "half_there", ["json/__init__.py", "absent_half_gpu_check/__init__.py"])
    assert gpu_check.wheel_modules(present) == {"json"}
    assert gpu_check.wheel_modules(module) == {"absent_module_gpu_check"}
    assert gpu_check.missing_wheels(tmp_path) == (sorted([package, module, half]), [])


def test_a_package_that_imports_is_installed_when_a_wheel_needs_a_newer_one(tmp_path):
    needs = _wheel(tmp_path, "needs_gpu_check", ["needs_gpu_check/__init__.py"],
                   ("pytest>=999", "pluggy>=0.1", "colorama>=999; extra == 'windows'", "absent-dist-gpu-check>=1"))
    newer_pytest = _wheel(tmp_path, "pytest", ["pytest/__init__.py"])
    _wheel(tmp_path, "pluggy", ["pluggy/__init__.py"])  # the machine's pluggy satisfies >=0.1: stays
    wheels, problems = gpu_check.missing_wheels(tmp_path)
    assert wheels == sorted([needs, newer_pytest])
    assert problems == ["absent-dist-gpu-check>=1 is needed, and this machine has none: carry its wheel"]


def _write_figures(work, step_id: str, medians: dict) -> None:
    (work / f"{step_id}.json").write_text(json.dumps({"some table": medians}))


def test_the_results_file_gives_the_verdict_the_steps_and_the_targets(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "steps.tsv").write_text("a\tok\t1\tnothing to install\ne_base\tok\t80\t\n"
                                    "g_sudoku\tfailed (exit 1)\t30\t\ng_arc\tok\t70\t\nf\tskipped: time budget\t0\t\n")
    _write_figures(work, "e_base", {"this project, full rows": {"tokens_per_s": 700_000.0},
                                    "transformers, full rows": {"tokens_per_s": 250_000.0}})
    _write_figures(work, "g_arc", {"this project": {"examples_per_s": 120.0},
                                   "this project, eager": {"examples_per_s": 100.0}})
    (work / "e_base.md").write_text("### bert_train: base\n\n| table |\n")
    (work / "e_base.log").write_text("building\nround 1 ok\n### bert_train: base\n\n| table |\n")
    output = tmp_path / "out" / "gpu_check.md"
    gpu_check.write_report(work, output, "bash benchmarks/gpu_check.sh", 330, 200, comparable=True, finished=True)
    text = output.read_text()
    assert "Result: **FAIL: 1 step(s) failed (g_sudoku)**; 200 s of a 330 s budget." in text
    assert "| g_sudoku | TRM, Sudoku recipe: compiled vs eager vs reference | failed (exit 1) | 30 |  |" in text
    assert "| e_large | BERT-Large, length 512: compiled vs eager vs transformers | not run | - |  |" in text
    assert "| BERT-Base, length 128, bf16: this project on full rows, real tokens/s | 700,000 | >= 600,000 | yes |" in text
    assert "| BERT-Base, length 128: this project / transformers eager SDPA, both on full rows | 2.80x | >= 2.00x | yes |" in text
    assert "| TRM Sudoku recipe: this project compiled / eager | not measured | >= 1.50x | - |" in text
    assert "| TRM ARC recipe: this project compiled / eager | 1.20x | >= 1.50x | NO |" in text
    assert "Output (2 of 2 lines):\n\n```\nbuilding\nround 1 ok\n```" in text  # the log up to the section it printed
    assert text.count("### bert_train: base") == 1
    assert not list(output.parent.glob("*.partial"))

    gpu_check.write_report(work, output, "bash benchmarks/gpu_check.sh --tiny", 330, 200, comparable=False,
                           finished=True)
    assert "| 700,000 | >= 600,000 | n/a (tiny sizes or CPU) |" in output.read_text()
    (work / "steps.tsv").write_text("a\tok\t1\t\nf\tskipped: time budget\t0\t\n")
    gpu_check.write_report(work, output, "bash benchmarks/gpu_check.sh", 330, 20, comparable=True, finished=True)
    assert "Result: **PASS (1 step(s) skipped: f)**" in output.read_text()


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_step_and_writes_its_results_file(tmp_path):
    """The done-when line of issue 11: `--device cpu --tiny` end to end, without ../shared
    (`--demo-data`: BERT on the standard library's docstrings) and without a GPU."""
    output = tmp_path / "gpu_check.md"
    env = {**subprocess_env(), "TMPDIR": str(tmp_path)}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny",
                           "--demo-data", "--output", str(output)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = output.read_text()
    assert "Result: **PASS**" in text
    for step_id, title in gpu_check.STEPS:
        assert f"| {step_id} | {title} | ok |" in text, step_id
    assert "PASS: resumed from step" in text  # the resume compared losses
    assert "fastest: sdpa" in text or "fastest: nested" in text  # the ablation timed and picked
    assert "--vocab 8k" in text and "stdlib-docs" in text  # the BERT data came from the standard library
