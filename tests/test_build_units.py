"""The MLM builder's units of work (dataset/text/units.py): inputs cut into byte ranges at
safe places read back exactly as one pass over the files, and the array versions of the
per-document writers (rows, full packing, document index, de-duplication) write what the
one-by-one versions write."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from core.errors import UserError
from dataset.text.corpus import CorpusReader, Deduplicator, document_key, expand_input_files
from dataset.text.format import DocumentIndexWriter, ShardWriter, place_rows
from dataset.text.packing import FullPacker
from dataset.text.units import plan_units, unit_documents
from tests.test_text_mlm_builder import build, make_documents, write_text

SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Every format, with what makes cutting hard: a BOM, CRLF line ends, runs of blank and
    whitespace-only lines, lines longer than a sequence, repeats, a plain-text file without
    any blank line, empty JSON rows, WikiExtractor title lines, and a compressed file."""
    folder = tmp_path_factory.mktemp("units-corpus")
    write_text(folder / "a.txt", make_documents(300, seed=1, long_every=7))
    documents = make_documents(200, seed=2)
    text = "\n\n \t\n".join("\n".join(lines) for lines in documents + documents[:20])
    (folder / "b.txt").write_bytes(("\ufeff" + text).replace("\n", "\r\n").encode("utf-8"))
    (folder / "c.txt").write_text("\n".join(line for lines in make_documents(60, seed=3) for line in lines) + "\n")
    rows = [{"text": "\n".join(lines)} for lines in make_documents(150, seed=4)] + [{"text": " "}]
    (folder / "d.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    with gzip.open(folder / "e.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps({"text": "\n".join(lines)}) for lines in make_documents(80, seed=5)))
    blocks = [f'<doc id="{number}" title="T{number}">\nT{number}\n' + "\n".join(lines) + "\n  </doc> \n"
              for number, lines in enumerate(make_documents(120, seed=6))]  # fmt: skip
    (folder / "f.wiki").write_text("".join(blocks))
    return folder


@pytest.mark.parametrize("unit_bytes", [1, 97, 5000, 1 << 30])
def test_units_read_the_documents_of_one_pass(corpus, unit_bytes):
    files = expand_input_files([str(corpus)])
    whole = CorpusReader(files)
    expected = list(whole.documents())
    units = plan_units(files, unit_bytes=unit_bytes)
    reader = CorpusReader(files)
    got = [document for unit in units for document in unit_documents(reader, unit)]
    assert got == expected
    assert asdict(reader.counters) == asdict(whole.counters)
    splittable = sum(1 for unit in units if not unit.whole_file)
    if unit_bytes <= 97:  # every file that can be cut is cut many times; c.txt has no blank line
        assert splittable > 200
    assert [unit.path for unit in units if unit.whole_file] == [str(corpus / "e.jsonl.gz")]
    assert sum(1 for unit in units if unit.path.endswith("c.txt")) == 1


def test_parts_are_the_units_between_the_cuts_of_their_ends(corpus):
    files = expand_input_files([str(corpus)])
    expected = list(CorpusReader(files).documents())
    for num_parts in (2, 3, 7):
        parts = []
        for part in range(num_parts):
            reader = CorpusReader(files)
            parts.append([document for unit in plan_units(files, part, num_parts, unit_bytes=500)
                          for document in unit_documents(reader, unit)])  # fmt: skip
        assert [document for documents in parts for document in documents] == expected
        assert all(parts)


def test_an_error_in_a_later_unit_names_the_line_of_the_whole_file(tmp_path, capsys):
    lines = [json.dumps({"text": f"row {number}"}) for number in range(2000)]
    lines[1500] = "not json"
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    units = plan_units([source], unit_bytes=1000)
    assert len(units) > 10
    with pytest.raises(UserError, match=rf"{re.escape(str(source))}:1501: row is not valid JSON"):
        for unit in units:
            unit_documents(CorpusReader([source]), unit)
    status, _, err = build(capsys, "--input-files", source, "--output-dir", tmp_path / "out", "--num-workers", 2)
    assert status == 2 and ":1501: row is not valid JSON" in err, err
    assert not (tmp_path / "out").exists()


def writer(folder: Path, seq_len: int = 12) -> ShardWriter:
    return ShardWriter(folder, SPECIAL_IDS, np.uint16, shard_size=7, seq_len=seq_len, nsp=False, seed=0, masker=None)


def written(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def random_rows(rng: np.random.Generator, count: int, capacity: int) -> list[np.ndarray]:
    return [rng.integers(5, 60, size=rng.integers(0, capacity + 1)).astype(np.int32) for _ in range(count)]


def test_rows_at_once_equal_rows_one_by_one(tmp_path):
    rows = random_rows(np.random.default_rng(0), 40, 10)
    one_by_one, at_once, laid_out = writer(tmp_path / "one"), writer(tmp_path / "many"), writer(tmp_path / "laid")
    for row in rows:
        one_by_one.add(row)
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    at_once.add_rows(np.concatenate(rows[:13]), lengths[:13])  # across a shard boundary, then the rest
    at_once.add_rows(np.concatenate(rows[13:]), lengths[13:])
    padded = np.full((len(rows), 12), SPECIAL_IDS["[PAD]"], dtype=np.uint16)
    place_rows(padded, np.concatenate(rows), lengths, SPECIAL_IDS["[CLS]"], SPECIAL_IDS["[SEP]"])
    laid_out.add_padded(padded[:9], lengths[:9])
    laid_out.add_padded(padded[9:], lengths[9:])
    for target in (one_by_one, at_once, laid_out):
        target.flush()
    assert (one_by_one.num_tokens, one_by_one.names) == (at_once.num_tokens, at_once.names)
    assert (one_by_one.num_tokens, one_by_one.names) == (laid_out.num_tokens, laid_out.names)
    assert written(tmp_path / "one") == written(tmp_path / "many") == written(tmp_path / "laid")


@pytest.mark.parametrize("seed", range(4))
def test_full_packing_at_once_equals_one_document_at_a_time(tmp_path, seed):
    rng = np.random.default_rng(seed)
    capacity = 10
    # Sizes that hit the rules: empty documents, ones that end a sequence one short, longer than a sequence.
    lengths = rng.choice([0, 1, 2, capacity - 2, capacity - 1, capacity, capacity + 1, 3 * capacity + 4], size=120)
    documents = [rng.integers(5, 60, size=length).astype(np.int32) for length in lengths]
    one_by_one = FullPacker(writer(tmp_path / "one"), capacity, SPECIAL_IDS["[SEP]"])
    at_once = FullPacker(writer(tmp_path / "many"), capacity, SPECIAL_IDS["[SEP]"])
    for document in documents:
        one_by_one.add([document[:1], document[1:]])
    for start, stop in ((0, 37), (37, 38), (38, 120)):  # several calls: the stream continues across them
        at_once.add_documents(np.concatenate(documents[start:stop]), lengths[start:stop].astype(np.int64))
    for packer in (one_by_one, at_once):
        packer.finish()
        packer.writer.flush()
    assert written(tmp_path / "one") == written(tmp_path / "many")
    rows = np.concatenate([np.load(path) for path in sorted((tmp_path / "many").glob("shard_?????.npy"))])
    filled = (rows != SPECIAL_IDS["[PAD]"]).sum(axis=1)[:-1]  # the last row is whatever is left
    assert len(rows) > 40 and (filled == capacity + 1).sum() > 0  # [CLS] + capacity - 1 + [SEP]: closed one short


def test_document_index_and_deduplication_at_once_equal_one_by_one(tmp_path):
    rng = np.random.default_rng(3)
    documents = [[f"line {rng.integers(30)}"] for _ in range(300)]  # many repeats
    keys = np.array([document_key(document) for document in documents], dtype=np.uint64)
    filtered = list(Deduplicator("documents").filter(iter(documents)))
    deduplicator = Deduplicator("documents")
    kept = np.concatenate([deduplicator.keep(keys[:100]), deduplicator.keep(keys[100:])])
    assert [documents[index] for index in np.flatnonzero(kept)] == filtered
    assert deduplicator.removed_documents == len(documents) - len(filtered)
    assert Deduplicator("none").keep(keys).all()
    (tmp_path / "one").mkdir(), (tmp_path / "many").mkdir()
    one_by_one, at_once = DocumentIndexWriter(tmp_path / "one"), DocumentIndexWriter(tmp_path / "many")
    rows = rng.integers(0, 4, size=len(keys))
    first_rows = np.cumsum(rows) - rows
    for key, first, count in zip(keys.tolist(), first_rows.tolist(), rows.tolist()):
        one_by_one.add(key, first, count)
    at_once.add(int(keys[0]), int(first_rows[0]), int(rows[0]))
    at_once.add_many(keys[1:], first_rows[1:], rows[1:])
    for index in (one_by_one, at_once):
        index.close()
    assert written(tmp_path / "one") == written(tmp_path / "many")
