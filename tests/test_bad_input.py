"""Bad input ends with one clear line, exit status 2, no traceback and nothing half-written.

One row per mistake. The dataset builders run in-process through `run_cli` (the same
wrapper their `__main__` uses), so each row checks the exit status, the exact stderr
line and that the output folder was neither created nor touched; `pretrain.py` mistakes
are raised by `check_overrides` / `launch` in-process, and a few rows run the real CLIs
as subprocesses to check what a user sees end to end.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import UserError, run_cli
from dataset import build_arc_dataset, build_sudoku_dataset, build_text_mlm_dataset
from pretrain import launch
from tests import helpers
from tests.helpers import REPO, TINY_BERT, TINY_TRM, compose_config, make_mlm_dataset, make_puzzle_dataset
from training import checkpoint as checkpoint_module
from training.build import setup
from training.checkpoint import find_latest, read_checkpoint
from training.config import PretrainConfig, check_overrides, validate
from training.distributed import DistContext

SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
"""A valid Sudoku grid; the puzzle below blanks its last two cells."""
PUZZLE = SOLUTION[:79] + ".."
CSV_HEADER = "source,question,answer,rating\n"
GRID = [[1, 2], [3, 4]]





# ------------------------------------------------------------------------ builders


def _text(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _mlm(tmp: Path, inputs: list[str], *extra: str) -> list[str]:
    return ["--input-files", *inputs, "--output-dir", str(tmp / "out"), "--tokenizer", "whitespace", *extra]


def _sudoku_dir(tmp: Path, train: bytes | None) -> Path:
    folder = tmp / "sudoku"
    folder.mkdir()
    if train is not None:
        (folder / "train.csv").write_bytes(train)
        (folder / "test.csv").write_bytes(train)
    return folder


def _sudoku(folder: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--source-dir", str(folder), "--output-dir", str(tmp / "out"), "--num-workers", "1", *extra]


def _arc_dir(tmp: Path, evaluation: bytes) -> Path:
    source = tmp / "arc"
    for subset in ("training", "evaluation"):
        (source / subset).mkdir(parents=True)
    puzzle = {"train": [{"input": GRID, "output": GRID}], "test": [{"input": GRID, "output": GRID}]}
    (source / "training" / "a.json").write_text(json.dumps(puzzle))
    (source / "evaluation" / "b.json").write_bytes(evaluation)
    return source


def _arc(source: Path, tmp: Path) -> list[str]:
    return ["--source", str(source), "--output-dir", str(tmp / "out"), "--num-aug", "1"]


BIG = json.dumps({"train": [{"input": [[1] * 31] * 31, "output": GRID}], "test": [{"input": GRID}]}).encode()
MALFORMED_CSV = f"{CSV_HEADER}x,{PUZZLE},{SOLUTION},1\nx,short,short,1\nx,{PUZZLE},{SOLUTION},oops\n".encode()

# (id, builder module, tmp -> argv, expected stderr line as a regex); every row must exit 2.
BUILDER_CASES = [
    ("mlm-missing-file", build_text_mlm_dataset, lambda t: _mlm(t, [str(t / "nope.txt")]),
     r"error: --input-files .*nope\.txt does not exist"),
    ("mlm-empty-file", build_text_mlm_dataset, lambda t: _mlm(t, [str(_text(t, "empty.txt", b""))]),
     r"error: no text in --input-files .*empty\.txt; they are empty"),
    ("mlm-binary-file", build_text_mlm_dataset, lambda t: _mlm(t, [str(_text(t, "a.bin", b"ab\x00\x01"))]),
     r"error: .*a\.bin looks binary \(NUL byte at byte offset 2\); pass text files only"),
    ("mlm-not-utf8", build_text_mlm_dataset, lambda t: _mlm(t, [str(_text(t, "l.txt", b"ok\ncaf\xe9\n"))]),
     r"error: .*l\.txt is not UTF-8 text \(byte offset 6, line 2\); convert it, e\.g\. with iconv -t utf-8, or pass --on-bad-line skip"),
    ("mlm-glob-matches-nothing", build_text_mlm_dataset, lambda t: _mlm(t, [str(t / "none" / "*.txt")]),
     r"error: --input-files pattern '.*none/\*\.txt' matches no file; check the path and the quoting"),
    ("mlm-vocab-too-small", build_text_mlm_dataset,
     lambda t: _mlm(t, [str(_text(t, "a.txt", b"a b c\n"))], "--vocab-size", "5"),
     r"error: --vocab-size 5 leaves no room next to the 5 special tokens; use more"),
    ("mlm-max-seq-length-under-8", build_text_mlm_dataset,
     lambda t: _mlm(t, [str(_text(t, "a.txt", b"a b c\n"))], "--max-seq-length", "7"),
     r"error: --max-seq-length 7 is too short; use 8 or more \(BERT uses 128 or 512\)"),
    ("mlm-malformed-jsonl-row", build_text_mlm_dataset,
     lambda t: _mlm(t, [str(_text(t, "d.jsonl", b'{"text": "a b"}\nnot json\n'))]),
     r"error: .*d\.jsonl:2: row is not valid JSON \(Expecting value\); fix it or pass --on-bad-line skip"),
    ("sudoku-missing-csv", build_sudoku_dataset, lambda t: _sudoku(_sudoku_dir(t, None), t),
     r"error: .*sudoku/train\.csv not found; --source-dir must hold train\.csv and test\.csv"),
    ("sudoku-empty-csv", build_sudoku_dataset, lambda t: _sudoku(_sudoku_dir(t, b""), t),
     r"error: .*train\.csv is empty; it needs the header source,question,answer,rating and one puzzle per line"),
    ("sudoku-not-utf8", build_sudoku_dataset, lambda t: _sudoku(_sudoku_dir(t, CSV_HEADER.encode() + b"\xff\xfe\n"), t),
     r"error: .*train\.csv is not UTF-8 text \(invalid start byte\); is it a binary file\? convert text with iconv -t utf-8"),
    ("sudoku-malformed-row-strict", build_sudoku_dataset, lambda t: _sudoku(_sudoku_dir(t, MALFORMED_CSV), t, "--strict"),
     r"error: .*train\.csv line 3: question and answer must have 81 characters, found 5 and 5 "
     r"\(drop --strict to skip such rows\)"),
    ("arc-grid-over-30x30", build_arc_dataset, lambda t: _arc(_arc_dir(t, BIG), t),
     r"error: puzzle b in subset evaluation has a 31x31 grid, larger than 30x30; remove it or pass --skip-oversized"),
    ("arc-malformed-json", build_arc_dataset, lambda t: _arc(_arc_dir(t, b'{"train": ['), t),
     r"error: .*b\.json is not valid JSON \(Expecting value: line 1 column 12 \(char 11\)\); fix or replace the file"),
    ("arc-binary-json", build_arc_dataset, lambda t: _arc(_arc_dir(t, b"\x89PNG\xff"), t),
     r"error: .*b\.json is not UTF-8 text \(byte offset 0\); is it a binary file\?"),
]


def _run_builder(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `python dataset/<module>.py ARGV`, in-process."""
    capsys.readouterr()
    try:
        run_cli(lambda: module.main(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders that a failed build would have left behind."""
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(".out"))


@pytest.mark.parametrize("case", BUILDER_CASES, ids=[case[0] for case in BUILDER_CASES])
def test_builder_bad_input(case, tmp_path, capsys):
    _, module, make_argv, expected = case
    code, _, err = _run_builder(module, make_argv(tmp_path), capsys)
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]  # progress bars aside
    assert code == 2 and len(lines) == 1, err
    assert re.fullmatch(expected, lines[0]), lines[0]
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("module, make_argv", [
    (build_text_mlm_dataset, lambda t: _mlm(t, [str(_text(t, "a.txt", b"a b c\n"))])),
    (build_sudoku_dataset, lambda t: _sudoku(_sudoku_dir(t, MALFORMED_CSV), t)),
    (build_arc_dataset, lambda t: _arc(_arc_dir(t, json.dumps({"train": [], "test": []}).encode()), t)),
], ids=["mlm", "sudoku", "arc"])
def test_builder_keeps_an_existing_output_folder(module, make_argv, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    code, _, err = _run_builder(module, make_argv(tmp_path), capsys)
    assert code == 2
    assert err.strip() == f"error: output folder {tmp_path / 'out'} already exists; choose another --output-dir or pass --overwrite"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_malformed_rows_are_skipped_and_counted(tmp_path, capsys):
    code, _, err = _run_builder(build_sudoku_dataset, _sudoku(_sudoku_dir(tmp_path, MALFORMED_CSV), tmp_path), capsys)
    assert code == 0
    assert f"{tmp_path / 'sudoku' / 'train.csv'}: skipped 2 malformed rows (use --strict to fail instead)" in err
    assert json.loads((tmp_path / "out" / "train" / "dataset.json").read_text())["total_puzzles"] == 1
    rows = b'{"text": "a b"}\nnot json\n{"text": "c d e"}\n[1]\n'
    argv = _mlm(tmp_path, [str(_text(tmp_path, "d.jsonl", rows))], "--on-bad-line", "skip", "--test-split", "0")
    (tmp_path / "out").rename(tmp_path / "sudoku-out")
    code, out, _ = _run_builder(build_text_mlm_dataset, argv, capsys)
    assert code == 0 and "skipped 2 malformed rows" in out
    metadata = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert metadata["num_documents"]["train"] == 2 and metadata["num_tokens"]["train"] == 4 + 5  # [CLS] a b [SEP], [CLS] c d e [SEP]


# ------------------------------------------------------------------------ pretrain.py


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny TRM dataset and run, a tiny BERT dataset and run (TRM checkpoints at steps 3 and 6)."""
    root = tmp_path_factory.mktemp("runs")
    trm_data = make_puzzle_dataset(root / "trm-data")
    bert_data = make_mlm_dataset(root / "bert-data")
    launch(compose_config(TINY_TRM + [f"data_paths=[{trm_data}]", f"+checkpoint_path={root / 'trm'}",
                                      "global_batch_size=16", "epochs=2", "eval_interval=1", "lr=1e-3"]))
    launch(compose_config(TINY_BERT + [f"data_paths=[{bert_data}]", f"+checkpoint_path={root / 'bert'}",
                                       "global_batch_size=8", "epochs=2", "eval_interval=1", "lr=1e-3"]))
    return root


def _trm(runs: Path, *extra: str) -> list[str]:
    """Overrides of a tiny TRM run on the fixture's data (add `+checkpoint_path` to run it)."""
    return TINY_TRM + [f"data_paths=[{runs / 'trm-data'}]", "global_batch_size=16", "epochs=2", "eval_interval=1",
                       "lr=1e-3", *extra]


def _copy_run(runs: Path, name: str, target: Path) -> Path:
    shutil.copytree(runs / name, target)
    return target


def _flip_bytes(path: Path) -> None:
    """Damage a file in place, keeping its size (what a bad disk or a bad copy does)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(255 - b for b in data[len(data) // 2 : len(data) // 2 + 8])
    path.write_bytes(bytes(data))


# (id, runs, tmp -> overrides, expected message regex). `launch` raises the UserError that
# pretrain.py prints as "error: <message>" before exiting with status 2.
PRETRAIN_CASES = [
    ("plus-misspelled-key", lambda r, t: _trm(r, "+lrr=1"),
     r"unknown config key 'lrr'; check the spelling \(known keys are in config/\*\.yaml\); did you mean 'lr'\?"),
    ("wrong-type", lambda r, t: _trm(r, "lr=abc"),
     r"config key 'lr': Input should be a valid number, unable to parse string as a number \(got 'abc'\)"),
    ("data-path-missing", lambda r, t: _trm(r, f"data_paths=[{t / 'nope'}]"),
     r"dataset folder .*nope not found; build it with dataset/build_\*_dataset\.py or fix the path"),
    ("data-path-not-a-dataset", lambda r, t: _trm(r, f"data_paths=[{t}]"),
     r".*/train/dataset\.json not found: is .* a dataset built by dataset/build_\*\.py\?"),
    ("bert-dataset-with-trm", lambda r, t: _trm(r, f"data_paths=[{r / 'bert-data'}]"),
     r".*bert-data is a text \(MLM\) dataset, for arch=bert; this arch needs a puzzle dataset built by "
     r"dataset/build_\{sudoku,maze,arc\}_dataset\.py"),
    ("trm-dataset-with-bert", lambda r, t: TINY_BERT + [f"data_paths=[{r / 'trm-data'}]", "global_batch_size=8",
                                                       "epochs=2", "eval_interval=1", "lr=1e-3"],
     r".*trm-data is not an MLM dataset \(no dataset\.json at its root\); build one with: "
     r"python dataset/build_text_mlm_dataset\.py --input-files \.\.\. --output-dir \.\.\."),
    ("max-position-embeddings-below-seq-len", lambda r, t: TINY_BERT + [
        f"data_paths=[{r / 'bert-data'}]", "global_batch_size=8", "epochs=2", "lr=1e-3", "eval_interval=1",
        "arch.max_position_embeddings=16"],
     r"arch\.max_position_embeddings \(16\) is smaller than the dataset's sequence length \(32\); "
     r"set arch\.max_position_embeddings>=32"),
    ("epochs-not-multiple-of-eval-interval", lambda r, t: _trm(r, "epochs=3", "eval_interval=2"),
     r"epochs \(3\) must be a multiple of eval_interval \(2\); change one of them"),
    ("checkpoint-of-another-arch", lambda r, t: _trm(r, f"+load_checkpoint={r / 'bert'}"),
     r"checkpoint .*bert/step_\d+ was written by arch=bert, not arch=trm; use arch=bert or another checkpoint"),
    ("checkpoint-of-another-size", lambda r, t: _trm(r, "arch.hidden_size=64", "arch.num_heads=4",
                                                     f"+load_checkpoint={r / 'trm'}"),
     r"checkpoint .*trm/step_6 does not fit this model \(size mismatch for .*\); "
     r"use the arch\.\* settings of the run that wrote it"),
    ("checkpoint-truncated", lambda r, t: _trm(r, f"+load_checkpoint={_truncated(r, t)}"),
     r"checkpoint .*step_6 is incomplete or corrupted; resume from its run folder to use the newest complete one"),
    ("checkpoint-corrupted", lambda r, t: _trm(r, f"+load_checkpoint={_corrupted(r, t)}"),
     r"checkpoint .*step_6 cannot be read: optimizer\.pt does not match its checksum \(corrupted\); "
     r"resume from an earlier one"),
    ("checkpoint-latest-without-run-name", lambda r, t: _trm(r, "+load_checkpoint=latest"),
     r"\+load_checkpoint=latest needs the run: pass \+run_name=NAME \(and \+project_name=\) or a folder"),
]


def _truncated(runs: Path, tmp: Path) -> Path:
    step = _copy_run(runs, "trm", tmp / "run") / "step_6"
    data = (step / "model.safetensors").read_bytes()
    (step / "model.safetensors").write_bytes(data[: len(data) // 2])
    return step


def _corrupted(runs: Path, tmp: Path) -> Path:
    step = _copy_run(runs, "trm", tmp / "run") / "step_6"
    _flip_bytes(step / "optimizer.pt")
    return step


@pytest.mark.parametrize("case", PRETRAIN_CASES, ids=[case[0] for case in PRETRAIN_CASES])
def test_pretrain_bad_input(case, runs, tmp_path):
    _, make_overrides, expected = case
    with pytest.raises(UserError) as error:
        launch(compose_config(make_overrides(runs, tmp_path)))
    assert re.fullmatch(expected, str(error.value)), str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, expected", [
    (["arch=foo"], "unknown arch 'foo'; choose one of: bert, bert_cls, bert_large, bert_ner, bert_qa, bert_tiny, trm"),
    (["lrr=1"], "unknown config key 'lrr'; check the spelling (known keys are in config/*.yaml); did you mean 'lr'?"),
    (["arch=bert_tiny", "data.masking.mask_pro=0.1"], "unknown config key 'data.masking.mask_pro'; check the spelling "
     "(known keys are in config/*.yaml); did you mean 'data.masking.mask_prob'?"),
    (["arch=bert_tiny", "arch.masking.mask_prob=0.1"], "'arch.masking' is now 'data.masking' (data settings live "
     "with the data): write data.masking.mask_prob=..."),
    (["lr=["], "cannot parse override 'lr=[' (no viable alternative at input '['); write overrides as key=value"),
], ids=["unknown-arch", "misspelled-key", "misspelled-nested-key", "moved-key", "unparsable-override"])
def test_hydra_override_errors(overrides, expected):
    with pytest.raises(UserError) as error:
        check_overrides(overrides)
    assert str(error.value) == expected
    check_overrides(["arch=bert_tiny", "+run_name=x", "hydra.run.dir=."])  # valid ones pass


def test_batch_not_divisible_by_ranks(runs):
    config = validate(PretrainConfig, compose_config(_trm(runs, "global_batch_size=15")))
    two_ranks = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(UserError) as error:
        setup(config, two_ranks)
    assert str(error.value) == ("global_batch_size (15) is not divisible by the number of processes (2); "
                                "pick a multiple of 2")


def test_disk_full_keeps_the_previous_checkpoint(runs, tmp_path, monkeypatch):
    real_save_file = checkpoint_module.save_file

    def save_file_until_full(tensors, path):
        if Path(path).parent.name.startswith(".step_6."):
            Path(path).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file_until_full)
    run_dir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        launch(compose_config(_trm(runs, f"+checkpoint_path={run_dir}")))
    assert str(error.value) == (f"disk full while saving checkpoint step_6 in {run_dir}; the previous checkpoint "
                                f"{run_dir / 'step_3'} is intact; free space and resume")
    assert sorted(p.name for p in run_dir.iterdir()) == ["banner.txt", "config.json", "environment.json", "metrics.jsonl",
                                                         "step_3"]
    assert find_latest(run_dir) == run_dir / "step_3"
    assert read_checkpoint(run_dir / "step_3").train_state["step"] == 3


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=helpers.subprocess_env(), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["pretrain.py", "arch=foo"], "error: unknown arch 'foo'; choose one of: bert, bert_cls, bert_large, bert_ner, bert_qa, bert_tiny, trm"),
    (["pretrain.py", "arch=trm", "data_paths=[/nonexistent/sudoku]", "evaluators=[]", "epochs=10", "eval_interval=5"],
     "error: dataset folder /nonexistent/sudoku not found; build it with dataset/build_*_dataset.py or fix the path"),
    (["dataset/build_sudoku_dataset.py", "--source-dir", "/nonexistent"],
     "error: --source-dir /nonexistent is not a folder; point it at the folder with train.csv"),
], ids=["pretrain-hydra", "pretrain-launch", "builder"])
def test_cli_prints_one_line_and_exits_2(args, expected):
    result = _cli(args, REPO)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == expected and "Traceback" not in result.stdout


class _Evil:
    """Unpickling this prints: proof that code ran."""

    def __reduce__(self):
        return (print, ("code ran on load",))


def test_dataset_arrays_never_run_code(runs, tmp_path, capsys):
    data = shutil.copytree(runs / "trm-data", tmp_path / "data")
    np.save(data / "train" / "all__labels.npy", np.array([_Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(UserError) as error:
        launch(compose_config(_trm(runs, f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}")))
    assert str(error.value) == (f"{data / 'train' / 'all__labels.npy'} cannot be read (Array can't be memory-mapped: "
                                f"Python objects in dtype.); rebuild {data} with dataset/build_*_dataset.py")
    assert "code ran on load" not in capsys.readouterr().out
