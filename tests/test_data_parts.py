"""Datasets at scale: start-up that opens no shard, datasets in parts read as one, and
de-duplication across parts (issue 19)."""

from __future__ import annotations

import builtins
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pretrain import launch
from tests.helpers import TINY_BERT, compose_config, make_mlm_dataset, step_values
from training.metrics import read_metrics

NUM_SHARDS = 10_000


def _split_into_one_row_shards(root: Path, num_shards: int) -> None:
    """Rewrite the train split of a built dataset as `num_shards` shards of one row each."""
    metadata = json.loads((root / "dataset.json").read_text())
    train = root / "train"
    rows = np.concatenate([np.load(train / name) for name in metadata["shards"]["train"]])
    for path in train.glob("*.npy"):
        path.unlink()
    names = [f"shard_{index:05d}.npy" for index in range(num_shards)]
    for index, name in enumerate(names):
        np.save(train / name, rows[index % len(rows)][None])
    metadata["shards"]["train"], metadata["shard_rows"]["train"] = names, [1] * num_shards
    metadata["num_sequences"]["train"] = num_shards
    (root / "dataset.json").write_text(json.dumps(metadata))


def test_ten_thousand_shards_start_without_opening_them(tmp_path, monkeypatch):
    data = make_mlm_dataset(tmp_path / "data", num_documents=20, max_seq_length=16)
    _split_into_one_row_shards(data, NUM_SHARDS)
    opened = Counter()  # opens per file under the dataset folder
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        path = Path(str(file))
        if data in path.parents:
            opened[path.relative_to(data).as_posix()] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # what pathlib's read_text and read_bytes call
    launch(compose_config(TINY_BERT + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}",
                                       "global_batch_size=8", "epochs=1", "max_steps=1", "checkpoint_every_eval=false"]))
    # One step of 8 rows reads at most 8 one-row train shards (np.load and its memory map
    # open each a few times); evaluation reads the test split; nothing scans the 10,000.
    train_shards = [name for name in opened if name.startswith("train/")]
    assert 0 < len(train_shards) <= 8, opened
    assert sum(opened[name] for name in train_shards) <= 3 * 8, opened
    # Once per process: model sizing, the stream, the evaluation and the checkpoint's copy share one read.
    assert opened["dataset.json"] == 1, opened



def test_read_once_reads_again_only_a_changed_file(tmp_path, monkeypatch):
    from core import files

    path = tmp_path / "dataset.json"
    path.write_text('{"a": 1}')
    reads, real_open = [], builtins.open

    def counting_open(file, *args, **kwargs):
        reads.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert files.read_once(path) == files.read_once(str(path)) == b'{"a": 1}' and len(reads) == 1
    path.write_bytes(b'{"a": 22}')  # another size
    assert files.read_once(path) == b'{"a": 22}' and len(reads) == 2
    stat = path.stat()
    path.write_bytes(b'{"a": 33}')  # the same size, another modification time
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert files.read_once(path) == b'{"a": 33}' and len(reads) == 3


WORDS = "the cat dog sat on a mat ran fast slow big small red blue green tree house".split()


def _write_corpus(folder: Path, num_files: int = 5, documents_per_file: int = 12, seed: int = 0,
                  repeats: int = 0) -> list[Path]:
    """Text files of documents (blank-line separated) of different sizes; with `repeats`,
    each file after the first also repeats that many documents of the files before it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    files, earlier = [], []
    for index in range(num_files):
        documents = ["\n".join(" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(rng.integers(1, 5)))
                     for _ in range(documents_per_file + index)]
        copies = [earlier[i] for i in rng.choice(len(earlier), size=repeats)] if earlier else []
        earlier += documents
        documents = documents[:3] + copies + documents[3:]
        files.append(folder / f"text_{index:02d}.txt")
        files[-1].write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return files


def _build(files: list[Path], output: Path, tokenizer: str = "whitespace", test_split: float = 0.5, **options) -> Path:
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    vocab = {"vocab_size": 40} if tokenizer == "whitespace" else {}
    build_mlm_dataset(MLMBuildOptions(input_files=[str(f) for f in files], output_dir=str(output), tokenizer=tokenizer,
                                      max_seq_length=16, test_split=test_split, shard_size=7, **vocab, **options))
    return output


def _rows(folder: Path, split: str) -> np.ndarray:
    """The stored token ids of a split, in row order (all shards)."""
    names = json.loads((folder / "dataset.json").read_text())["shards"][split]
    return np.concatenate([np.load(folder / split / name) for name in names] or [np.zeros((0, 16), np.uint16)])


def _tokenizer_and_whole(tmp_path: Path, files: list[Path], **options) -> tuple[str, Path]:
    """A tokenizer (from a build of the first file) and one build of all files with it."""
    tokenizer = str(_build(files[:1], tmp_path / "first") / "tokenizer")
    return tokenizer, _build(files, tmp_path / "whole", tokenizer, **options)


def test_parts_by_bytes_hold_the_documents_of_one_build(tmp_path):
    files = _write_corpus(tmp_path / "corpus")
    tokenizer, whole = _tokenizer_and_whole(tmp_path, files, dedup="none")
    parts = [_build(files, tmp_path / "parts" / f"part_{i}", tokenizer, dedup="none", part=i, num_parts=4)
             for i in range(4)]
    documents = [json.loads((part / "dataset.json").read_text())["num_documents"] for part in parts]
    assert all(d["train"] > 0 for d in documents)  # the bytes are cut into four non-empty slices
    for split in ("train", "test"):
        # Parts read in order are the one build's rows, in its order.
        np.testing.assert_array_equal(np.concatenate([_rows(part, split) for part in parts]), _rows(whole, split))


def test_part_options_are_checked(tmp_path):
    from core.errors import UserError
    from dataset.text.builder import MLMBuildOptions

    files = _write_corpus(tmp_path / "corpus", num_files=1)
    for options, message in (({"part": 3, "num_parts": 3}, "--part from 0 to 2"),
                             ({"part": 0, "num_parts": 2}, "needs one tokenizer")):
        try:
            MLMBuildOptions(input_files=[str(files[0])], output_dir=str(tmp_path / "out"), **options).check()
        except UserError as error:
            assert message in str(error)
        else:
            raise AssertionError(f"{options} accepted")


RUN = TINY_BERT + ["arch.hidden_dropout_prob=0", "arch.attention_dropout_prob=0", "global_batch_size=8",
                   "epochs=2", "eval_interval=2", "lr=1e-3"]


def _train_losses(data_paths: str, run_dir: Path, *extra: str) -> dict[int, float]:
    launch(compose_config(RUN + [f"data_paths={data_paths}", f"+checkpoint_path={run_dir}", *extra]))
    return step_values(read_metrics(run_dir), "train/mlm_loss")


def test_a_folder_or_glob_of_parts_trains_as_one_dataset_and_resumes_exactly(tmp_path):
    files = _write_corpus(tmp_path / "corpus")
    tokenizer = str(_build(files[:1], tmp_path / "first") / "tokenizer")
    parts = [_build(files, tmp_path / "parts" / f"part_{i}", tokenizer, part=i, num_parts=3) for i in range(3)]
    listed = _train_losses(f"[{','.join(map(str, parts))}]", tmp_path / "listed")
    folder = _train_losses(f"[{tmp_path / 'parts'}]", tmp_path / "folder")
    assert len(listed) > 6 and folder == listed  # the folder's parts, in name order: one global order
    _train_losses(f"[{tmp_path / 'parts'}/part_*]", tmp_path / "glob", "max_steps=5")
    resumed = _train_losses(f"[{tmp_path / 'parts'}/part_*]", tmp_path / "glob", f"+load_checkpoint={tmp_path / 'glob'}")
    for step in range(6, max(listed) + 1):
        assert resumed[step] == pytest.approx(listed[step], abs=1e-6), step


def test_data_paths_entries_resolve_to_dataset_folders(tmp_path):
    from core.errors import UserError
    from dataset.text.format import resolve_mlm_paths

    for name in ("b", "a", "c"):
        (tmp_path / "parts" / name).mkdir(parents=True)
        (tmp_path / "parts" / name / "dataset.json").write_text("{}")
        (tmp_path / "parts" / name / "tokenizer").mkdir()
    (tmp_path / "parts" / ".d.tmp-1" / "tokenizer").mkdir(parents=True)  # a build being written
    (tmp_path / "parts" / ".d.tmp-1" / "dataset.json").write_text("{}")
    (tmp_path / "parts" / "notes").mkdir()  # not a dataset: left out
    parts = [str(tmp_path / "parts" / name) for name in "abc"]
    assert resolve_mlm_paths([str(tmp_path / "parts")]) == parts
    assert resolve_mlm_paths([str(tmp_path / "parts" / "[ab]"), parts[2]]) == parts
    with pytest.raises(UserError, match="matches no dataset folder"):
        resolve_mlm_paths([str(tmp_path / "parts" / "x*")])


def test_parts_less_their_repeats_equal_one_deduplicated_build(tmp_path, capsys):
    from dataset.exclude_duplicate_documents import main as exclude
    from dataset.text.format import load_mlm_metadata, resolve_mlm_paths
    from dataset.text.loader import _SplitShards

    files = _write_corpus(tmp_path / "corpus", repeats=3)
    tokenizer, whole = _tokenizer_and_whole(tmp_path, files)  # --dedup documents, the default
    parts = [_build(files, tmp_path / "parts" / f"part_{i}", tokenizer, part=i, num_parts=4) for i in range(4)]
    stored = sum(len(_rows(part, split)) for part in parts for split in ("train", "test"))
    assert stored > sum(len(_rows(whole, split)) for split in ("train", "test"))  # repeats across parts
    capsys.readouterr()
    exclude([str(tmp_path / "parts")])
    assert "repeated documents" in capsys.readouterr().out
    metadata = load_mlm_metadata(resolve_mlm_paths([str(tmp_path / "parts")]))
    for split in ("train", "test"):
        served = _SplitShards(metadata, split)
        # The same documents, in the same order, hence the same sequences row for row.
        ids = served.take(np.arange(served.num_rows), ("ids",))["ids"]
        np.testing.assert_array_equal(ids, _rows(whole, split))
        kept_keys = np.concatenate([
            np.delete(np.load(part / split / "documents.npy")["key"], _excluded_documents(part, split))
            for part in parts
        ])
        np.testing.assert_array_equal(kept_keys, np.load(whole / split / "documents.npy")["key"])


def _excluded_documents(part: Path, split: str) -> np.ndarray:
    """Indices of the documents of a part's split whose rows are all excluded."""
    records = np.load(part / split / "documents.npy")
    excluded = set(np.load(part / split / "excluded_rows.npy").tolist())
    return np.array([i for i, r in enumerate(records) if set(range(r["first_row"], r["first_row"] + r["num_rows"])) <= excluded],
                    dtype=np.int64)


def test_exclusions_refuse_parts_without_document_rows(tmp_path, capsys):
    from dataset.build_text_mlm_dataset import main as build
    from dataset.exclude_duplicate_documents import main as exclude
    from tests.helpers import run_builder

    files = _write_corpus(tmp_path / "corpus", num_files=2)
    _build(files, tmp_path / "full", packing="full")
    assert run_builder(exclude, tmp_path / "full") == 2
    assert "--packing full" in capsys.readouterr().err
    flags = ["--input-files", files[0], "--output-dir", tmp_path / "out", "--tokenizer", "whitespace"]
    assert run_builder(build, *flags, "--part", 2, "--num-parts", 2) == 2
    assert "--part from 0 to 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
