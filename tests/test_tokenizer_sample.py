"""The vocabulary's training sample (dataset/text/sample.py): spread over the files by
bytes with a seeded choice, about `--tokenizer-sample-mb` read, not the first files."""

from __future__ import annotations

import gzip
import json

import numpy as np

from dataset.text import sample
from dataset.text.corpus import CorpusReader
from dataset.text.sample import sample_budgets, sample_documents
from tests.test_text_mlm_builder import build


def test_a_20_gb_corpus_gives_100_files_of_1_mb_spread_over_the_list():
    sizes = [10_000_000] * 2000  # 20 GB in 2,000 files
    budgets = sample_budgets(sizes, 100_000_000, seed=0)
    chosen = np.flatnonzero(budgets)
    assert len(chosen) == 100 and sum(budgets) == 100_000_000
    assert all(abs(budgets[index] - 1_000_000) <= 1 for index in chosen)
    assert chosen.min() < 200 and chosen.max() > 1800  # spread over the list, not the first files
    assert budgets == sample_budgets(sizes, 100_000_000, seed=0)
    assert budgets != sample_budgets(sizes, 100_000_000, seed=1)


def test_files_are_chosen_by_size_and_small_files_leave_their_share_to_others():
    sizes = [1_000_000_000] + [1_000_000] * 999  # one file holds half the bytes
    chosen_big = sum(sample_budgets(sizes, 10_000_000, seed)[0] > 0 for seed in range(40))
    assert chosen_big >= 35  # 10 draws by size: chosen with probability ~0.999
    sizes = [100] * 5 + [10_000_000] * 5
    budgets = sample_budgets(sizes, 3_000_000, seed=3)
    assert sum(budgets) == 3_000_000 and all(b <= s for b, s in zip(budgets, sizes))
    assert sample_budgets([5, 7], 100, seed=0) == [5, 7]  # a corpus no larger than the sample: all of it


def test_the_trained_vocabulary_comes_from_the_chosen_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sample, "SAMPLE_SHARE_BYTES", 1000)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for number in range(40):  # each file has its own word
        text = "\n\n".join(f"common words here plus w{number:03d}x{line}" for line in range(60)) + "\n"
        (folder / f"part{number:03d}.txt").write_text(text, encoding="utf-8")
    files = sorted(folder.iterdir())
    status, _, err = build(capsys, "--input-files", folder, "--output-dir", tmp_path / "out", "--tokenizer",
                           "whitespace", "--vocab-size", 5000, "--tokenizer-sample-mb", 0.01)  # fmt: skip
    assert status == 0, err
    vocab = set((tmp_path / "out" / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").split())
    sampled = {number for number in range(40) if any(word.startswith(f"w{number:03d}x") for word in vocab)}
    budgets = sample_budgets([path.stat().st_size for path in files], 10_000, seed=0)
    assert sampled == {number for number, budget in enumerate(budgets) if budget} and len(sampled) == 10
    assert max(sampled) >= 20  # not the first files
    metadata = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert metadata["num_documents"]["train"] + metadata["num_documents"]["test"] == 40 * 60  # all built


def test_a_compressed_file_in_the_sample_gives_every_document(tmp_path):
    lines = "\n\n".join(f"document number {n} " + "filler words " * 50 for n in range(400)) + "\n"
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(gzip.compress(lines.encode()))
    reader = CorpusReader([path])  # gzip reads ahead: the on-disk position passes the end early
    assert len(list(sample_documents(reader, [path.stat().st_size]))) == 400
