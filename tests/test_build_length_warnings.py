"""The MLM builder warns, in one line, when `--max-seq-length` is longer than the BERT
presets' 512 positions or leaves most positions as padding, naming a better length
measured on the built sequences; training refuses a dataset longer than the model's
positions with the rebuild as the first fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from dataset.build_text_mlm_dataset import main
from dataset.text.report import DocumentSample
from models.bert.model import build_bert
from tests.helpers import run_builder, tiny_bert_config

WORDS = "the cat dog sat on a mat ran fast slow big small red blue green tree house".split()


def _corpus(path: Path, words_per_line: int, num_documents: int = 60) -> Path:
    """Documents of 3 lines of `words_per_line` words (one token each with `whitespace`)."""
    rng = np.random.default_rng(0)
    documents = ["\n".join(" ".join(rng.choice(WORDS, size=words_per_line)) for _ in range(3))
                 for _ in range(num_documents)]
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def _build(tmp_path: Path, capsys, corpus: Path, length: int, *flags) -> tuple[list[str], float]:
    """(warning lines on stderr, the training fill rate) of a build at `length`."""
    output = tmp_path / f"out-{length}-{'-'.join(flags)}"
    assert run_builder(main, "--input-files", corpus, "--output-dir", output, "--tokenizer", "whitespace",
                       "--max-seq-length", length, "--test-split", 0.2, *flags) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    report = json.loads((output / "dataset.json").read_text())["report"]
    assert [f"warning: {line}" for line in report["warnings"]] == warnings  # the same lines in dataset.json
    return warnings, report["fill_rate"]["train"]


def test_a_length_past_512_is_named_with_a_measured_better_length(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.txt", words_per_line=40)  # 120 text tokens per document
    warnings, fill = _build(tmp_path, capsys, corpus, 1024)
    assert fill < 0.15 and len(warnings) == 1
    match = re.fullmatch(r"warning: --max-seq-length 1024 is longer than the 512 positions of the BERT presets "
                         r"\(training refuses it unless arch.max_position_embeddings>=1024\) and leaves 88% of the "
                         r"positions as padding; rebuild with --max-seq-length 128 \(about (\d+)% of the positions "
                         r"filled, estimated from the documents' line lengths\)", warnings[0])
    assert match, warnings[0]
    # The estimate is what the suggested length really gives.
    no_warnings, real_fill = _build(tmp_path, capsys, corpus, 128)
    assert no_warnings == [] and int(match.group(1)) == pytest.approx(100 * real_fill, abs=1)


def test_low_fill_alone_is_warned_and_short_documents_point_to_full_packing(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.txt", words_per_line=8)  # 24 text tokens per document
    warnings, fill = _build(tmp_path, capsys, corpus, 256)
    assert fill < 0.5 and len(warnings) == 1
    assert warnings[0].startswith(f"warning: --max-seq-length 256 leaves {1 - fill:.0%} of the positions as padding; "
                                  "with one document per sequence no length fills 90% (median document 24 tokens): "
                                  "rebuild with --packing full ")
    match = re.search(r"or --max-seq-length 64 \(about (\d+)% of the positions filled", warnings[0])
    assert match, warnings[0]
    _, real_fill = _build(tmp_path, capsys, corpus, 64)
    assert int(match.group(1)) == pytest.approx(100 * real_fill, abs=1)
    full_warnings, full_fill = _build(tmp_path, capsys, corpus, 256, "--packing", "full")
    assert full_warnings == [] and full_fill > 0.9


def test_the_fill_estimate_replays_the_packing():
    sample = DocumentSample()
    sample.add("train", [np.zeros(30), np.zeros(30), np.zeros(30)])
    sample.add("train", [np.zeros(100)])
    sample.add("test", [np.zeros(5)])  # only training documents count
    # At 64 (62 tokens of text a row): 30 + 30 | 30 -> 2 rows; 100 -> 62 | 38 -> 2 rows; 2 specials a row.
    assert sample.fill(64, nsp=False) == pytest.approx((90 + 100 + 2 * 4) / (4 * 64))
    # With NSP, segments of (64 - 3) // 2 = 30 tokens, two a row: 3 segments -> 2 rows; 100 -> 4 segments -> 2 rows.
    assert sample.fill(64, nsp=True) == pytest.approx((90 + 100 + 3 * 4) / (4 * 64))
    assert sample.median_document() == 95


def test_positions_shorter_than_the_dataset_name_the_rebuild_first():
    metadata = type("Metadata", (), {"seq_len": 1024, "vocab_size": 40, "pad_id": 0, "nsp": False})()
    with pytest.raises(UserError) as error:
        build_bert(tiny_bert_config(max_position_embeddings=512), metadata)
    assert str(error.value) == (
        "arch.max_position_embeddings (512) is smaller than the dataset's sequence length (1024); rebuild the "
        "dataset with --max-seq-length 512 or shorter (BERT pretrains at 128, then 512), or set "
        "arch.max_position_embeddings=1024 to train a model with that many positions (more parameters; a "
        "pretrained checkpoint's positions cannot grow)"
    )
