"""Real corpora into the MLM builder: folders, detected formats (WikiExtractor, JSON lines,
parquet), compression, de-duplication, full packing and the corpus report.

The WikiExtractor test runs the real `wikiextractor` package on a MediaWiki dump that the
test writes itself; everything else is in-process and made of generated text whose
documents each start with a marker word (`zzdoca`, `zzdocb`, ...).
"""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from dataset.text import corpus
from dataset.text.corpus import detect_format
from dataset.text.format import read_mlm_metadata
from tests.test_text_mlm_builder import (
    BUILDER,
    SPECIAL_TOKENS,
    assert_no_output,
    build,
    decode_words,
    documents_by_marker,
    expected_words,
    make_documents,
    marker,
    read_split,
    vocabulary,
    write_text,
)

pyarrow = pytest.importorskip("pyarrow")
pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")


def all_documents(output: Path) -> dict[str, list[str]]:
    """Words of every document of both splits, by marker; a marker in both splits fails."""
    found: dict[str, list[str]] = {}
    for split in ("train", "test"):
        split_documents = documents_by_marker(decode_words(read_split(output, split).ravel(), vocabulary(output)))
        assert not set(split_documents) & set(found), "a document is in both splits"
        found.update(split_documents)
    return found


def metadata_of(output: Path) -> dict:
    return json.loads((output / "dataset.json").read_text())


def wiki_block(number: int, title: str, lines: list[str]) -> str:
    """A document as WikiExtractor writes it: tag, title line, blank line, paragraphs."""
    body = "\n".join(lines)
    return f'<doc id="{number}" url="https://x.org/wiki?curid={number}" title="{title}">\n{title}\n\n{body}\n\n</doc>\n'


def write_parquet(path: Path, documents: list[list[str]], with_title: bool, column: str = "text") -> Path:
    columns = {"id": [str(n) for n in range(len(documents))], column: ["\n".join(lines) for lines in documents]}
    if with_title:
        columns["title"] = [f"zztitle{n}" for n in range(len(documents))]
    pyarrow.parquet.write_table(pyarrow.table(columns), path, row_group_size=7)
    return path


# ---------------------------------------------------------------------- format detection


def test_format_is_detected_from_content_not_name(tmp_path):
    documents = make_documents(3)
    plain = "\n\n".join("\n".join(lines) for lines in documents) + "\n"
    rows = "".join(json.dumps({"text": "\n".join(lines)}) + "\n" for lines in documents)
    wiki = "".join(wiki_block(n, f"T{n}", lines) for n, lines in enumerate(documents))
    files = {"plain": ("text", plain.encode()), "rows.txt": ("jsonl", rows.encode()), "wiki_00": ("wikiextractor", wiki.encode()),
             "rows": ("jsonl", rows.encode()), "brace.txt": ("text", b"{not json at all\n")}  # fmt: skip
    write_parquet(tmp_path / "table", documents, with_title=False)
    parquet_bytes = (tmp_path / "table").read_bytes()
    files["table"] = ("parquet", parquet_bytes)
    compressors = {"": lambda data: data, ".gz": gzip.compress, ".bz2": bz2.compress,
                   ".zst": lambda data: zstandard.ZstdCompressor().compress(data)}  # fmt: skip
    for name, (expected, data) in files.items():
        for suffix, compress in compressors.items():
            for named in (f"{name}{suffix}", f"{name}-no-suffix{suffix.replace('.', '_')}"):
                path = tmp_path / "detect" / named
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(compress(data))
                assert detect_format(path) == expected, named


def test_directories_globs_and_compressed_forms_read_every_document_once(tmp_path, capsys):
    documents = make_documents(24, seed=2)
    groups = [documents[i : i + 4] for i in range(0, 24, 4)]  # six files of four documents
    root = tmp_path / "corpus"
    write_text(root / "a" / "plain", groups[0])
    (root / "a" / "docs.txt.gz").write_bytes(gzip.compress(write_text(tmp_path / "g.txt", groups[1]).read_bytes()))
    (root / "b" / "c").mkdir(parents=True)
    (root / "b" / "c" / "rows.bz2").write_bytes(bz2.compress(
        "".join(json.dumps({"text": "\n".join(lines)}) + "\n" for lines in groups[2]).encode()))  # fmt: skip
    wiki = "".join(wiki_block(n, f"Title {n}", lines) for n, lines in enumerate(groups[3]))
    (root / "b" / "wiki_00.zst").write_bytes(zstandard.ZstdCompressor().compress(wiki.encode()))
    write_parquet(root / "b" / "c" / "part-0", groups[4], with_title=True)
    write_text(root / "z.txt", groups[5])
    write_text(root / ".hidden" / "x.txt", make_documents(30, seed=9)[25:])  # never read
    write_text(root / "a" / ".cache.txt", make_documents(30, seed=9)[25:])
    output = tmp_path / "out"
    status, out, err = build(capsys, "--input-files", root, "--output-dir", output, "--vocab-size", 300,
                             "--max-seq-length", 48, "--test-split", 0.3)  # fmt: skip
    assert status == 0, err
    found = all_documents(output)
    assert set(found) == {marker(n) for n in range(24)}
    for number, lines in enumerate(documents):
        assert found[marker(number)] == expected_words(output, lines), f"document {number} changed"
    report = metadata_of(output)["report"]
    assert report["files_by_format"] == {"text": 3, "jsonl": 1, "wikiextractor": 1, "parquet": 1}
    assert sum(report["documents"].values()) == 24 and "input: 1 jsonl, 1 parquet, 3 text, 1 wikiextractor" in out
    assert "title" not in " ".join(w for words in found.values() for w in words)
    # A folder and the glob of its files give the same dataset; the order is stable.
    again = tmp_path / "again"
    pattern = str(root / "**" / "*")
    status, _, err = build(capsys, "--input-files", pattern, "--output-dir", again, "--tokenizer",
                           output / "tokenizer", "--max-seq-length", 48, "--test-split", 0.3)  # fmt: skip
    assert status == 0, err
    for split in ("train", "test"):
        np.testing.assert_array_equal(read_split(again, split), read_split(output, split))


def test_expand_input_files_order_and_errors(tmp_path):
    for name in ("AB/wiki_00", "AA/wiki_01", "AA/wiki_00", "AA/.wiki_02", ".git/config"):
        (tmp_path / "wiki" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "wiki" / name).write_text("x\n")
    files = corpus.expand_input_files([str(tmp_path / "wiki"), str(tmp_path / "wiki" / "AA" / "wiki_00")])
    assert [str(path.relative_to(tmp_path / "wiki")) for path in files] == ["AA/wiki_00", "AA/wiki_01", "AB/wiki_00"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(corpus.UserError, match="folder .*empty holds no file"):
        corpus.expand_input_files([str(tmp_path / "empty")])


# -------------------------------------------------------------------------------- parquet


@pytest.mark.parametrize("with_title", [True, False])
def test_parquet_rows_are_documents(tmp_path, capsys, with_title):
    documents = make_documents(30, seed=3)
    source = write_parquet(tmp_path / "train-00000-of-00001.parquet", documents, with_title)
    output = tmp_path / "out"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--vocab-size", 300,
                           "--max-seq-length", 40, "--test-split", 0.2)  # fmt: skip
    assert status == 0, err
    found = all_documents(output)
    assert len(found) == 30 and metadata_of(output)["report"]["files_by_format"] == {"parquet": 1}
    for number, lines in enumerate(documents):
        assert found[marker(number)] == expected_words(output, lines)
    assert not any(word.startswith("zztitle") for words in found.values() for word in words)
    # Another column through --text-field; a missing one is named with the columns there are.
    write_parquet(tmp_path / "body.parquet", documents, with_title, column="body")
    status, _, err = build(capsys, "--input-files", tmp_path / "body.parquet", "--output-dir", tmp_path / "body",
                           "--text-field", "body", "--tokenizer", output / "tokenizer", "--max-seq-length", 40,
                           "--test-split", 0.2)  # fmt: skip
    assert status == 0, err
    for split in ("train", "test"):
        np.testing.assert_array_equal(read_split(tmp_path / "body", split), read_split(output, split))
    status, _, err = build(capsys, "--input-files", tmp_path / "body.parquet", "--output-dir", tmp_path / "x")
    assert_no_output(status, err, tmp_path / "x", r"has no column 'text' \(columns: id, body.*--text-field")


@pytest.mark.parametrize(("module", "make", "install"), [
    ("pyarrow", lambda path: write_parquet(path, [["a b"]], False), r"pip install pyarrow \(or pip install -e \"\.\[corpora\]\"\)"),
    ("zstandard", lambda path: path.write_bytes(zstandard.ZstdCompressor().compress(b"a b\n")), r"pip install zstandard"),
])  # fmt: skip
def test_missing_optional_package_is_one_line_naming_the_install(tmp_path, capsys, monkeypatch, module, make, install):
    source = tmp_path / "data"
    make(source)
    for name in [name for name in sys.modules if name == module or name.startswith(f"{module}.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, module, None)
    status, _, err = build(capsys, "--input-files", source, "--output-dir", tmp_path / "out", "--tokenizer", "whitespace")
    assert_no_output(status, err, tmp_path / "out", install)


# ---------------------------------------------------------------------- de-duplication


def test_dedup_removes_repeats_before_the_split(tmp_path, capsys):
    documents = make_documents(60, seed=5)
    repeats = [1 + number % 3 for number in range(60)]  # 1, 2 or 3 copies of each document
    copies = [lines for number, lines in enumerate(documents) for _ in range(repeats[number])]
    np.random.default_rng(0).shuffle(copies)
    write_text(tmp_path / "in" / "a.txt", copies[:70])
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps({"text": "\n".join(lines)}) + "\n" for lines in copies[70:]))
    common = ["--input-files", tmp_path / "in", "--tokenizer", "whitespace", "--vocab-size", 5000,
              "--max-seq-length", 64, "--test-split", 0.4]  # fmt: skip
    status, out, err = build(capsys, *common, "--output-dir", tmp_path / "dedup")
    assert status == 0, err
    found = all_documents(tmp_path / "dedup")  # fails if a document is in both splits or twice in one
    assert set(found) == {marker(n) for n in range(60)}
    metadata = metadata_of(tmp_path / "dedup")
    assert metadata["dedup"] == "documents"
    assert metadata["report"]["duplicates_removed"] == {"documents": len(copies) - 60, "paragraphs": 0}
    assert sum(metadata["num_documents"].values()) == 60
    assert f"duplicates removed (--dedup documents): {len(copies) - 60} documents" in out
    status, _, err = build(capsys, *common, "--output-dir", tmp_path / "kept", "--dedup", "none")
    assert status == 0, err
    kept = metadata_of(tmp_path / "kept")
    assert sum(kept["num_documents"].values()) == len(copies) and kept["report"]["duplicates_removed"]["documents"] == 0


def test_dedup_paragraphs_keeps_the_first_occurrence(tmp_path, capsys):
    shared = "the same boilerplate paragraph ."
    documents = [[f"{marker(n)} first line {n}", shared, f"last line {n}"] for n in range(10)]
    documents.append([shared])  # left empty: dropped as a whole
    write_text(tmp_path / "docs.txt", documents)
    status, _, err = build(capsys, "--input-files", tmp_path / "docs.txt", "--output-dir", tmp_path / "out",
                           "--tokenizer", "whitespace", "--dedup", "paragraphs", "--test-split", 0,
                           "--max-seq-length", 64)  # fmt: skip
    assert status == 0, err
    found = all_documents(tmp_path / "out")
    assert sum(" ".join(words).count("boilerplate") for words in found.values()) == 1
    assert "boilerplate" in found[marker(0)]
    assert metadata_of(tmp_path / "out")["report"]["duplicates_removed"] == {"documents": 1, "paragraphs": 10}


# ------------------------------------------------------------------------- full packing


def test_full_packing_fills_sequences_and_keeps_every_document(tmp_path, capsys):
    documents = make_documents(80, seed=6, long_every=7)
    source = write_text(tmp_path / "docs.txt", documents)
    outputs = {}
    for packing in ("documents", "full"):
        outputs[packing] = tmp_path / packing
        status, _, err = build(capsys, "--input-files", source, "--output-dir", outputs[packing], "--packing", packing,
                               "--tokenizer", "whitespace", "--vocab-size", 5000, "--max-seq-length", 32,
                               "--test-split", 0.25)  # fmt: skip
        assert status == 0, err
    assert all_documents(outputs["full"]) == all_documents(outputs["documents"])
    metadata = metadata_of(outputs["full"])
    assert metadata["packing"] == "full"
    for split in ("train", "test"):
        ids = read_split(outputs["full"], split)
        lengths = (ids != 0).sum(axis=1)
        assert (ids[:, 0] == 2).all() and (ids[np.arange(len(ids)), lengths - 1] == 3).all()
        assert set(lengths[:-1].tolist()) <= {31, 32}, "a sequence before the last is not full"
        contents = [row[1 : length - 1] for row, length in zip(ids, lengths)]
        assert all(content[0] != 3 and content[-1] != 3 for content in contents), "a separator at a sequence edge"
        # Documents are separated by exactly one [SEP], or by the end of a sequence.
        boundaries = sum(int((content == 3).sum()) for content in contents) + int((lengths[:-1] == 31).sum())
        assert boundaries <= metadata["num_documents"][split] - 1
        assert metadata["num_tokens"][split] == int(lengths.sum())
        assert metadata["report"]["fill_rate"][split] == pytest.approx(lengths.sum() / ids.size)
    full_rows = sum(metadata["num_sequences"].values())
    document_rows = sum(metadata_of(outputs["documents"])["num_sequences"].values())
    assert full_rows < 0.8 * document_rows
    assert metadata["report"]["fill_rate"]["train"] > 0.97


def test_full_packing_with_nsp_is_refused(tmp_path, capsys):
    source = write_text(tmp_path / "docs.txt", make_documents(3))
    status, _, err = build(capsys, "--input-files", source, "--output-dir", tmp_path / "out", "--nsp", "--packing", "full")
    assert_no_output(status, err, tmp_path / "out", r"--packing full cannot make next-sentence pairs")


# ------------------------------------------------------------------------------- report


def test_report_counts_a_corpus_with_known_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_LINE_CHARACTERS", 200)
    vocab = SPECIAL_TOKENS + ["the", "cat", "sat", "on", "mat", "##s", ".", "a"]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    lines = [
        b"the cats sat. the cat sat on a mat.",  # 2 sentences; words the cats sat . the cat sat on a mat . (11), 1 split
        b"a cat sat on the mats",  # 1 sentence (no punctuation); 6 words, 1 split
        b"",
        b"the dog sat.",  # dog -> [UNK] (d, o, g unknown); 4 words
        b"bad \xff line",  # not UTF-8: dropped with --on-bad-line skip
        b"x" * 201,  # too long: dropped
        b"",
        b"the cat sat. the cat sat.",  # the same document twice: removed by --dedup
        b"",
        b"the cat sat. the cat sat.",
        b"",
    ]
    (tmp_path / "corpus.txt").write_bytes(b"\n".join(lines) + b"\n")
    rows = '{"text": ""}\n{"text": "a cat ."}\nnot json\n'
    (tmp_path / "rows.jsonl").write_text(rows, encoding="utf-8")
    output = tmp_path / "out"
    status, out, err = build(capsys, "--input-files", tmp_path / "corpus.txt", tmp_path / "rows.jsonl",
                             "--output-dir", output, "--tokenizer", tmp_path / "tok", "--test-split", 0,
                             "--max-seq-length", 16, "--on-bad-line", "skip", "--packing", "documents")  # fmt: skip
    assert status == 0, err
    metadata = read_mlm_metadata(output)
    report = metadata.report
    assert report.documents == {"train": 4, "test": 0}
    assert report.lines == {"train": 5, "test": 0}
    assert report.sentences == {"train": 2 + 1 + 1 + 2 + 1, "test": 0}
    # the cat ##s sat . the cat sat on a mat . | a cat sat on the mat ##s | the [UNK] sat . | the cat sat . ... | a cat .
    text_tokens = 12 + 7 + 4 + 8 + 3
    words = 11 + 6 + 4 + 8 + 3
    assert report.text_tokens == {"train": text_tokens, "test": 0}
    assert report.words == {"train": words, "test": 0}
    assert report.split_words == {"train": 2, "test": 0}
    assert report.unknown_tokens == {"train": 1, "test": 0}
    assert report.unknown_rate == pytest.approx(1 / text_tokens)
    assert report.pieces_per_word == pytest.approx(text_tokens / words)
    assert report.split_word_share == pytest.approx(2 / words)
    assert sorted(report.unknown_characters) == [("d", 1), ("g", 1), ("o", 1)]
    assert report.duplicates_removed == {"documents": 1, "paragraphs": 0}
    assert report.dropped == {"empty": 1, "binary": 1, "too long": 1, "malformed": 1}
    assert report.fill_rate["train"] == pytest.approx(metadata.num_tokens["train"] / (metadata.num_sequences["train"] * 16))
    assert report.files_by_format == {"text": 1, "jsonl": 1}
    # 2.6% [UNK] is above the warning threshold: one line on stderr, also in report.txt.
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "of the tokens are [UNK] (unknown characters: d o g" in warnings[0]
    text = (output / "report.txt").read_text()
    assert warnings[0] in text and "train: 4 documents, 5 lines, 7 sentences" in text and "train: 4 documents" in out
    assert "dropped: 1 empty, 1 binary, 1 too long, 1 malformed" in text


def test_pieces_per_word_warning_and_old_metadata_still_loads(tmp_path, capsys):
    source = write_text(tmp_path / "docs.txt", make_documents(40, seed=8))
    output = tmp_path / "out"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--vocab-size", 70,
                           "--max-seq-length", 32)  # fmt: skip
    assert status == 0, err
    report = read_mlm_metadata(output).report
    assert report.pieces_per_word > 1.5 and report.unknown_rate == 0.0
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        f"warning: {report.pieces_per_word:.2f} word pieces per word ({report.split_word_share:.0%} of the words "
        "split); a bigger --vocab-size, or a tokenizer made for this language, would fit better"
    ]
    stored = metadata_of(output)
    for name in ("packing", "dedup", "report"):
        del stored[name]
    (output / "dataset.json").write_text(json.dumps(stored))
    old = read_mlm_metadata(output)
    assert old.packing == "documents" and old.dedup == "none" and old.report is None


# ------------------------------------------------------------------ the real WikiExtractor


ARTICLES = [
    ("Alpha Zone", ["'''Alpha''' is the first [[letter]] of the ''alphabet''.", "", "It is used widely.",
                    "", "== History ==", "Alpha came from aleph."]),
    ("Beta Ridge", ["'''Beta''' is the second letter.", "", "Beta follows alpha in every list."]),
    ("Gamma Burst", ["Gamma rays carry much energy.", "", "They were found in 1900."]),
    ("Delta Shape", ["A '''delta wing''' is a wing shaped like a triangle.", "", "Many jets use one."]),
    ("Epsilon Field", ["Epsilon is small.", "", "Analysts use it for tiny numbers."]),
]  # fmt: skip


def mediawiki_dump(articles: list[tuple[str, list[str]]]) -> str:
    """A MediaWiki XML export of `articles` (namespace 0), laid out as real dumps are."""
    pages = []
    for number, (title, lines) in enumerate(articles, start=1):
        text = "\n".join(lines).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        pages.append(
            f"  <page>\n    <title>{title}</title>\n    <ns>0</ns>\n    <id>{number}</id>\n    <revision>\n"
            f"      <id>{100 + number}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text)}" xml:space="preserve">{text}</text>\n    </revision>\n  </page>\n'
        )
    siteinfo = (
        "  <siteinfo>\n    <sitename>Testwiki</sitename>\n    <dbname>testwiki</dbname>\n"
        "    <base>https://test.example/wiki/Main_Page</base>\n    <generator>MediaWiki 1.39</generator>\n"
        "    <case>first-letter</case>\n    <namespaces>\n"
        '      <namespace key="0" case="first-letter" />\n'
        '      <namespace key="10" case="first-letter">Template</namespace>\n'
        '      <namespace key="828" case="first-letter">Module</namespace>\n'
        "    </namespaces>\n  </siteinfo>\n"
    )
    header = '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
    return header + siteinfo + "".join(pages) + "</mediawiki>\n"


@pytest.mark.parametrize("mode", ["plain", "json"])
def test_real_wikiextractor_output_builds_with_the_guides_commands(tmp_path, mode):
    pytest.importorskip("wikiextractor")
    (tmp_path / "data").mkdir()
    (tmp_path / "dump.xml").write_text(mediawiki_dump(ARTICLES), encoding="utf-8")
    flags = ["--json"] if mode == "json" else []
    extract = [sys.executable, "-m", "wikiextractor.WikiExtractor", "dump.xml", "-o", "data/wiki", "-q", *flags]
    result = subprocess.run(extract, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    extracted = sorted(path for path in (tmp_path / "data" / "wiki").rglob("*") if path.is_file())
    assert [path.name for path in extracted] == ["wiki_00"]  # no .txt name: the folder form reads it
    if mode == "json":  # the guide's glob, once the files carry a .txt name
        extracted[0].rename(extracted[0].with_name("wiki_00.txt"))
        inputs = ["data/wiki/**/*.txt"]
    else:
        inputs = ["data/wiki"]
    command = [sys.executable, str(BUILDER), "--input-files", *inputs, "--output-dir", "data/wiki-mlm",
               "--vocab-size", "400", "--max-seq-length", "64"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = tmp_path / "data" / "wiki-mlm"
    metadata = metadata_of(output)
    assert sum(metadata["num_documents"].values()) == len(ARTICLES)
    assert metadata["report"]["files_by_format"] == {("jsonl" if mode == "json" else "wikiextractor"): 1}
    tokenizer = Tokenizer.from_file(str(output / "tokenizer" / "tokenizer.json"))
    decoded = " ".join(tokenizer.decode(row.tolist()) for split in ("train", "test") for row in read_split(output, split))
    assert "<doc" not in decoded and "</doc" not in decoded and "< doc" not in decoded and "url" not in decoded
    for title, _ in ARTICLES:
        assert title.lower() not in decoded  # the title line is dropped
    assert "alpha came from aleph" in decoded and "many jets use one" in decoded


def test_a_format_added_to_FORMATS_is_detected_and_read(tmp_path, capsys, monkeypatch):
    """Adding a corpus format is one `CorpusFormat` entry: detection, reading and the report
    follow it (here a tab-separated `id<TAB>text` file, one document per row)."""

    def tsv_documents(reader: corpus.CorpusReader, path: Path):
        for _, line in reader._lines(path):
            yield from reader._paragraphs(line.partition("\t")[2])

    tsv = corpus.CorpusFormat(lambda file: file.uncompressed_name.endswith(".tsv"), tsv_documents)
    monkeypatch.setattr(corpus, "FORMATS", {"tsv": tsv, **corpus.FORMATS})
    documents = make_documents(6)
    source = tmp_path / "rows.tsv"
    source.write_text("".join(f"{number}\t{' '.join(lines)}\n" for number, lines in enumerate(documents)), encoding="utf-8")
    assert detect_format(source) == "tsv"
    output = tmp_path / "out"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--tokenizer", "whitespace",
                           "--max-seq-length", 64, "--test-split", 0)  # fmt: skip
    assert status == 0, err
    assert metadata_of(output)["report"]["files_by_format"] == {"tsv": 1}
    assert metadata_of(output)["num_documents"] == {"train": 6, "test": 0}
    assert set(all_documents(output)) == {marker(number) for number in range(6)}
