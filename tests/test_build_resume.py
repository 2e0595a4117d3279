"""Resumable MLM builds (dataset/text/resume.py): a build killed (SIGKILL) or stopped
(SIGTERM, SIGINT) at several points and finished with `--resume` gives the same files,
byte for byte, as an uninterrupted build.

The builds run as real processes (a SIGKILL must really kill), with chunks of 3,000
characters instead of 1 MB so that a corpus of ~150 kB makes ~50 chunks and, with shards
of 16 sequences, dozens of commits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.text.resume import KILL_ENV, partial_folder
from tests.test_text_mlm_builder import build, make_documents, write_text

REPO = Path(__file__).resolve().parents[1]
RUNNER = (
    "import sys; from core.errors import run_cli; from dataset.text import builder; "
    "builder.CHUNK_CHARACTERS = 3000; from dataset.text import units; units.UNIT_BYTES = 3000; "
    "from dataset.build_text_mlm_dataset import main; run_cli(lambda: main(sys.argv[1:]))"
)
PACKINGS = {
    "nsp-static": ["--nsp", "--static-masking"],
    "full": ["--packing", "full"],
    "two-lengths": ["--nsp", "--max-seq-length", 32, 64],  # the last --max-seq-length wins
}


def run_builder(args: list, kill: str | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    environment.pop(KILL_ENV, None)
    if kill:
        environment[KILL_ENV] = kill
    return subprocess.run([sys.executable, "-c", RUNNER, *map(str, args)], capture_output=True, text=True,
                          env=environment, cwd=REPO, timeout=300)  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume-corpus")
    write_text(folder / "a.txt", make_documents(400, seed=1, long_every=7))
    documents = make_documents(300, seed=2)
    write_text(folder / "b.txt", documents + documents[:40])  # repeats: de-duplication state matters
    return folder


def arguments(corpus: Path, output: Path, packing: str) -> list:
    return ["--input-files", corpus, "--output-dir", output, "--max-seq-length", 32, "--shard-size", 16,
            "--tokenizer", "whitespace", "--vocab-size", 500, *PACKINGS[packing]]  # fmt: skip


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """The uninterrupted build of each packing."""
    trees = {}
    for packing in PACKINGS:
        output = tmp_path_factory.mktemp("reference") / packing
        result = run_builder(arguments(corpus, output, packing))
        assert result.returncode == 0, result.stderr
        trees[packing] = tree(output)
        assert len([name for name in trees[packing] if "train/shard_" in name]) > 20
    return trees


@pytest.mark.slow
@pytest.mark.parametrize(("packing", "kills"), [
    ("nsp-static", ["after:1"]),
    ("nsp-static", ["before:4", "after:3"]),  # killed twice: between a shard and its commit, then after one
    ("full", ["before:1", "after:7"]),
    ("two-lengths", ["after:5"]),
])  # fmt: skip
def test_killed_build_resumes_to_the_same_bytes(corpus, reference, tmp_path, packing, kills):
    output = tmp_path / "out"
    args = arguments(corpus, output, packing)
    for number, kill in enumerate(kills):
        result = run_builder(args + (["--resume"] if number else []), kill=kill)
        assert result.returncode == -9, result.stderr
        assert not output.exists() and (partial_folder(output) / "resume.json").is_file()
    result = run_builder(args + ["--resume", "--num-workers", "2"])
    assert result.returncode == 0, result.stderr
    assert not partial_folder(output).exists()
    assert tree(output) == reference[packing]


@pytest.mark.slow
def test_a_killed_part_resumes_to_the_same_bytes_with_its_document_index(corpus, tmp_path):
    """`--part`/`--num-parts` with the per-document index (`--packing documents`): the
    index's records spilled after the last commit are dropped, and the rest carried on."""
    base = tmp_path / "base"
    assert run_builder(arguments(corpus, base, "full")).returncode == 0
    args = ["--input-files", corpus, "--max-seq-length", 32, "--shard-size", 16, "--tokenizer", base / "tokenizer",
            "--part", 1, "--num-parts", 2]  # fmt: skip
    result = run_builder([*args, "--output-dir", tmp_path / "reference"])
    assert result.returncode == 0, result.stderr
    reference = tree(tmp_path / "reference")
    assert len([name for name in reference if "train/shard_" in name]) > 8 and "train/documents.npy" in reference
    output = tmp_path / "out"
    assert run_builder([*args, "--output-dir", output], kill="after:3").returncode == -9
    result = run_builder([*args, "--output-dir", output, "--resume"])
    assert result.returncode == 0, result.stderr
    assert tree(output) == reference


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_build_cleanly_and_resume_finishes_it(corpus, reference, tmp_path, signal_name):
    output = tmp_path / "out"
    args = arguments(corpus, output, "full")
    result = run_builder(args, kill=f"{signal_name}:2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: build stopped by {signal_name}") and "--resume" in lines[0]
    assert not output.exists()
    assert (partial_folder(output) / "journal.pkl").is_file()
    result = run_builder(args + ["--resume"])
    assert result.returncode == 0, result.stderr
    assert tree(output) == reference["full"]


def test_resume_refuses_what_it_cannot_finish(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 3, encoding="utf-8")
    output = tmp_path / "out"
    args = ["--input-files", tmp_path / "in.txt", "--output-dir", output, "--tokenizer", "whitespace"]
    status, _, err = build(capsys, *args, "--resume")
    assert status == 2 and "no stopped build" in err and not partial_folder(output).exists()
    partial_folder(output).mkdir()
    (partial_folder(output) / "resume.json").write_text('{"options": {"seed": 5}, "tokenizer": {}}')
    status, _, err = build(capsys, *args)
    assert status == 2 and "--resume" in err and "--overwrite" in err
    status, _, err = build(capsys, *args, "--resume")
    assert status == 2 and "other options" in err and "seed" in err
    assert (partial_folder(output) / "resume.json").is_file()  # a refused resume keeps the stopped build
    status, _, err = build(capsys, *args, "--overwrite")
    assert status == 0, err
    assert output.is_dir() and not partial_folder(output).exists()
