"""One build, several sequence lengths (`--max-seq-length 128 512`): one pass over the
corpus writes `OUTPUT/seq<length>/`, each the same dataset, byte for byte, as a build of
that length alone."""

from __future__ import annotations

import pytest

from tests.test_build_resume import tree
from tests.test_text_mlm_builder import build, make_documents, write_text


@pytest.mark.parametrize("extra", [["--nsp", "--static-masking"], ["--packing", "full"]])
def test_two_lengths_in_one_pass_equal_two_builds(tmp_path, capsys, extra):
    corpus = write_text(tmp_path / "corpus.txt", make_documents(150, seed=4, long_every=9))
    common = ["--input-files", corpus, "--tokenizer", "whitespace", "--vocab-size", 400, "--shard-size", 64, *extra]
    status, out, err = build(capsys, *common, "--output-dir", tmp_path / "both", "--max-seq-length", 32, 96)
    assert status == 0, err
    assert out.count(" MB/s) -> ") == 2 and f"-> {tmp_path / 'both' / 'seq96'}" in out
    for length in (32, 96):
        status, _, err = build(capsys, *common, "--output-dir", tmp_path / f"alone{length}", "--max-seq-length", length)
        assert status == 0, err
        alone = tree(tmp_path / f"alone{length}")
        assert len(alone) >= 8 and tree(tmp_path / "both" / f"seq{length}") == alone
    assert sorted(path.name for path in (tmp_path / "both").iterdir()) == ["seq32", "seq96"]


def test_a_length_given_twice_is_refused(tmp_path, capsys):
    corpus = write_text(tmp_path / "corpus.txt", make_documents(5))
    status, _, err = build(capsys, "--input-files", corpus, "--output-dir", tmp_path / "out", "--max-seq-length", 64, 64)
    assert status == 2 and "give each length once" in err and not (tmp_path / "out").exists()
