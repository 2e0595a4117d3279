"""The text -> MLM dataset builder (dataset/build_text_mlm_dataset.py).

Most builds run in this process through `main(argv)` (wrapped like the command line);
two run as real commands to check the seed guide's command and the exit status.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from core.constants import IGNORE_LABEL_ID
from core.errors import UserError, run_cli
from dataset.build_text_mlm_dataset import main
from dataset.demo_corpus import module_paragraphs, write_demo_corpus
from dataset.text import format as text_format
from dataset.text.packing import pack_lines

REPO = Path(__file__).resolve().parents[1]
BUILDER = REPO / "dataset" / "build_text_mlm_dataset.py"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pu", "qua", "bri", "dow", "fen", "gil"]


def letters(number: int, base: int = 26) -> str:
    """A number in base `base` written with the first letters (a, b, ..., ba, bb, ...)."""
    text = ""
    while True:
        number, digit = divmod(number, base)
        text = chr(ord("a") + digit) + text
        if number == 0:
            return text


def number_of(text: str) -> int:
    """The inverse of `letters(number, 16)`."""
    return int(text.translate(str.maketrans("abcdefghijklmnop", "0123456789abcdef")), 16)


def marker(document: int) -> str:
    return f"zzdoc{letters(document)}"


def make_documents(num_documents: int, seed: int = 0, long_every: int = 0) -> list[list[str]]:
    """Documents of made-up words; each starts with its own marker word."""
    rng = np.random.default_rng(seed)
    documents = []
    for number in range(num_documents):
        lines = [f"{marker(number)} Héllo, WORLD!"]
        for _ in range(int(rng.integers(1, 7))):
            words = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(rng.integers(2, 12))]
            lines.append(" ".join(words) + rng.choice([".", "?", "", " ;  (x)"]))
        if long_every and number % long_every == 0:
            lines.append(" ".join(rng.choice(SYLLABLES, size=90)))  # longer than a whole sequence
        documents.append(lines)
    return documents


def write_text(path: Path, documents: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(lines) for lines in documents) + "\n", encoding="utf-8")
    return path


def build(capsys, *args: str) -> tuple[int, str, str]:
    """Run the builder in this process like the command line; (exit status, stdout, stderr)."""
    status = 0
    try:
        run_cli(lambda: main([str(arg) for arg in args]))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_split(root: Path, split: str, kind: str = "") -> np.ndarray:
    metadata = json.loads((root / "dataset.json").read_text())
    suffix = f".{kind}.npy" if kind else ".npy"
    arrays = [np.load(root / split / name.replace(".npy", suffix)) for name in metadata["shards"][split]]
    width = () if kind in ("nsp", "lengths") else (metadata["seq_len"],)
    return np.concatenate(arrays) if arrays else np.zeros((0, *width), dtype=np.int64)


def vocabulary(root: Path) -> list[str]:
    return (root / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]


def decode_words(token_ids, vocab: list[str]) -> list[str]:
    """Words of a token stream, specials but [UNK] dropped, `##` pieces joined to the word before."""
    words: list[str] = []
    for token_id in token_ids:
        token = vocab[int(token_id)]
        if token in SPECIAL_TOKENS and token != "[UNK]":
            continue
        if token.startswith("##") and words:
            words[-1] += token[2:]
        else:
            words.append(token)
    return words


def expected_words(root: Path, lines: list[str]) -> list[str]:
    """The words of some lines after the saved tokenizer's normaliser and pre-tokenizer."""
    tokenizer = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
    words = []
    for line in lines:
        normalised = tokenizer.normalizer.normalize_str(line)
        words.extend(word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalised))
    return words


def documents_by_marker(words: list[str]) -> dict[str, list[str]]:
    """Cut a word stream at the marker words."""
    documents: dict[str, list[str]] = {}
    current = None
    for word in words:
        if re.fullmatch(r"zzdoc[a-z]+", word):
            assert word not in documents, f"document {word} appears twice"
            current = documents[word] = []
        current.append(word)
    return documents


def assert_no_output(status: int, err: str, output: Path, expected: str) -> None:
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert re.search(expected, lines[0]), lines[0]
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")], "temporary folder left"


# --------------------------------------------------------------------------- packing


def test_pack_lines_keeps_every_token_and_respects_capacity():
    rng = np.random.default_rng(0)
    lines = [np.arange(n) + 100 * i for i, n in enumerate(rng.integers(0, 25, size=200))]
    for capacity in (1, 5, 10, 30):
        segments = pack_lines(lines, capacity)
        np.testing.assert_array_equal(np.concatenate(segments), np.concatenate(lines))
        assert all(0 < len(segment) <= capacity for segment in segments)
        # A line that fits in a segment is never split.
        bounds = set(np.cumsum([len(s) for s in segments]).tolist())
        start = 0
        for line in lines:
            if len(line) <= capacity:
                assert not any(start < b < start + len(line) for b in bounds), "a short line was split"
            start += len(line)


# ------------------------------------------------------------------------ round trip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A WordPiece build of 80 documents (some with lines longer than a sequence), one document per sequence."""
    root = tmp_path_factory.mktemp("corpus")
    documents = make_documents(80, long_every=7)
    source = write_text(root / "corpus.txt", documents)
    output = root / "mlm"
    argv = ["--input-files", source, "--output-dir", output, "--vocab-size", 300, "--max-seq-length", 32,
            "--packing", "documents"]
    run_cli(lambda: main([str(a) for a in argv + ["--test-split", 0.25, "--seed", 5]]))
    return documents, source, output


def test_round_trip_gives_back_the_normalised_text(corpus):
    documents, _, output = corpus
    metadata = json.loads((output / "dataset.json").read_text())
    vocab = vocabulary(output)
    found = {}
    for split in ("train", "test"):
        ids = read_split(output, split)
        assert ids.dtype == np.uint16 and metadata["dtype"] == "uint16"
        assert ids.shape == (metadata["num_sequences"][split], 32)
        assert (ids[:, 0] == 2).all()
        assert int((ids != 0).sum()) == metadata["num_tokens"][split]
        lengths = read_split(output, split, "lengths")
        assert lengths.dtype == np.uint16
        np.testing.assert_array_equal(lengths, (ids != 0).sum(axis=1))
        split_documents = documents_by_marker(decode_words(ids.ravel(), vocab))
        assert not set(split_documents) & set(found), "a document is in both splits"
        found.update(split_documents)
        assert metadata["num_documents"][split] == len(split_documents)
    assert set(found) == {marker(n) for n in range(len(documents))}
    for number, lines in enumerate(documents):
        assert found[marker(number)] == expected_words(output, lines), f"document {number} changed"
    assert "hello" in found[marker(0)] and "world" in found[marker(0)]  # lowercased, accent stripped


def test_sequences_are_packed_from_one_document(corpus):
    _, _, output = corpus
    vocab = vocabulary(output)
    ids = read_split(output, "train")
    for row in ids:
        length = int((row != 0).sum())
        assert row[length - 1] == 3 and (row[1 : length - 1] != 3).all()  # [CLS] A [SEP] [PAD]...
        words = decode_words(row, vocab)
        # A document always starts a new sequence, so a marker can only come first.
        assert not [w for w in words[1:] if w.startswith("zzdoc")], "two documents in one sequence"
    fill = (ids != 0).mean()
    assert fill > 0.6, f"packing leaves {1 - fill:.0%} padding"


def test_test_split_is_per_document_and_seeded(tmp_path, capsys):
    source = write_text(tmp_path / "docs.txt", make_documents(400, seed=1))

    def test_markers(seed: int, name: str) -> set[str]:
        output = tmp_path / name
        status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--tokenizer",
                               "whitespace", "--max-seq-length", 64, "--test-split", 0.25, "--seed", seed)  # fmt: skip
        assert status == 0, err
        return set(documents_by_marker(decode_words(read_split(output, "test").ravel(), vocabulary(output))))

    first, again, other = test_markers(1, "a"), test_markers(1, "b"), test_markers(2, "c")
    assert first == again
    assert first != other
    assert 0.18 < len(first) / 400 < 0.32  # 0.25 +- 3.3 standard deviations
    assert marker(0) not in first | other  # the first document always trains


# -------------------------------------------------------------------------------- NSP


def nsp_documents(num_documents: int) -> list[list[str]]:
    """Documents whose words name their document: word j of document n is `w<n>x<j>`."""
    rng = np.random.default_rng(3)
    documents, counter = [], 0
    for number in range(num_documents):
        lines = []
        for _ in range(int(rng.integers(3, 11))):
            words = []
            for _ in range(int(rng.integers(1, 3))):
                words.append(f"w{letters(number, 16)}x{letters(counter, 16)}")
                counter += 1
            lines.append(" ".join(words))
        documents.append(lines)
    return documents


def test_nsp_pairs_are_balanced_and_stay_in_their_split(tmp_path, capsys):
    documents = nsp_documents(250)
    source = write_text(tmp_path / "nsp.txt", documents)
    output = tmp_path / "nsp"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--nsp", "--test-split", 0.3,
                           "--vocab-size", 400, "--max-seq-length", 40)  # fmt: skip
    assert status == 0, err
    metadata = json.loads((output / "dataset.json").read_text())
    assert metadata["nsp"] is True
    vocab = vocabulary(output)
    document_words = {n: [w for line in lines for w in line.split()] for n, lines in enumerate(documents)}

    def owner(word: str) -> int:
        return number_of(re.fullmatch(r"w([a-p]+)x[a-p]+", word).group(1))

    pairs, splits_of = {}, {}
    for split in ("train", "test"):
        ids, labels = read_split(output, split), read_split(output, split, "nsp")
        assert labels.dtype == np.int8 and len(labels) == len(ids)
        rows = []
        for row, label in zip(ids, labels):
            seps = np.flatnonzero(row == 3)
            segment_a = decode_words(row[1 : seps[0]], vocab)
            segment_b = decode_words(row[seps[0] + 1 : seps[1]], vocab) if len(seps) > 1 else []
            assert len(seps) == (1 if label == IGNORE_LABEL_ID else 2)
            document_a = {owner(w) for w in segment_a}
            assert len(document_a) == 1
            splits_of.setdefault(document_a.pop(), set()).add(split)
            rows.append((segment_a, segment_b, int(label)))
        pairs[split] = rows
    assert all(len(s) == 1 for s in splits_of.values()), "a document is in both splits"
    counts = {0: 0, 1: 0}
    for split, rows in pairs.items():
        for segment_a, segment_b, label in rows:
            if label == IGNORE_LABEL_ID:
                continue
            counts[label] += 1
            document_a, document_b = owner(segment_a[0]), owner(segment_b[0])
            words_b = document_words[document_b]
            start = words_b.index(segment_b[0])
            assert words_b[start : start + len(segment_b)] == segment_b, "B is not a run of its document"
            assert splits_of[document_b] == {split}, "B was drawn from the other split"
            if label == 0:
                words_a = document_words[document_a]
                first = words_a.index(segment_a[0])
                assert words_a[first : first + len(segment_a) + len(segment_b)] == segment_a + segment_b
            else:
                assert document_b != document_a
    total = counts[0] + counts[1]
    assert total > 300
    assert abs(counts[1] / total - 0.5) < 4 * (0.25 / total) ** 0.5 + 0.02


# ---------------------------------------------------------------- static masking, files


def test_static_masking_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(text_format, "STATIC_MASK_BLOCK_ROWS", 5)  # several blocks per shard
    source = write_text(tmp_path / "docs.txt", make_documents(30))
    output = tmp_path / "static"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--static-masking", "--vocab-size",
                           300, "--max-seq-length", 40, "--mask-prob", 0.2, "--shard-size", 16)  # fmt: skip
    assert status == 0, err
    metadata = json.loads((output / "dataset.json").read_text())
    assert metadata["static_masking"] and metadata["mask_prob"] == 0.2
    assert len(metadata["shards"]["train"]) == -(-metadata["num_sequences"]["train"] // 16)
    ids, masked, labels = (read_split(output, "train", kind) for kind in ("", "masked", "labels"))
    assert masked.dtype == np.uint16 and labels.dtype == np.int32
    selected = labels != IGNORE_LABEL_ID
    maskable = ids > 4
    assert not (selected & ~maskable).any()
    np.testing.assert_array_equal(labels[selected], ids[selected])
    np.testing.assert_array_equal(masked[~selected], ids[~selected])
    expected = [max(1, round(n * 0.2)) for n in maskable.sum(axis=1)]
    assert selected.sum(axis=1).tolist() == expected


def test_tokenizer_files_load_with_transformers(corpus, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    documents, source, output = corpus
    cased = tmp_path / "cased"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", cased, "--no-lowercase",
                           "--vocab-size", 300, "--max-seq-length", 64, "--test-split", 0)  # fmt: skip
    assert status == 0, err
    for folder in (output, cased):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        ids = read_split(folder, "train")
        text = " ".join(documents[0][:2])
        encoded = tokenizer(text)["input_ids"]
        assert encoded[0] == 2 and encoded[-1] == 3
        assert tokenizer.decode(encoded[1:-1]).replace(" ", "") == "".join(expected_words(folder, [text]))
        # The shards hold exactly what the tokenizer gives, line by line.
        body = [t for line in documents[0] for t in tokenizer(line, add_special_tokens=False)["input_ids"]]
        stream = [int(t) for row in ids for t in row if t > 4]
        assert stream[: len(body)] == body
    cased_words = decode_words(read_split(cased, "train").ravel(), vocabulary(cased))
    assert cased_words[1:4] == ["Héllo", ",", "WORLD"]  # neither lowercased nor accent-stripped
    assert cased_words == expected_words(cased, [line for lines in documents for line in lines])


# ------------------------------------------------------------------ tokenizer choices


def test_reusing_a_vocab_txt(tmp_path, capsys):
    vocab = SPECIAL_TOKENS + ["the", "cat", "sat", "on", "mat", "##s", ".", "dog"]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    source = tmp_path / "text.txt"
    source.write_text("The cat sat on the mats.\nThe dog sat.\n\nA bird.\n", encoding="utf-8")
    output = tmp_path / "out"
    status, out, err = build(capsys, "--input-files", source, "--output-dir", output, "--tokenizer",
                             tmp_path / "tok", "--test-split", 0, "--max-seq-length", 16, "--packing", "documents")  # fmt: skip
    assert status == 0, err
    assert "uncased" in out
    ids = read_split(output, "train")
    the, cat, sat, on, mat, s, dot, dog = range(5, 13)
    first = [2, the, cat, sat, on, the, mat, s, dot, the, dog, sat, dot, 3]
    assert ids[0].tolist() == first + [0, 0]
    assert ids[1].tolist() == [2, 1, 1, dot, 3] + [0] * 11  # unknown words -> [UNK]
    assert vocabulary(output) == vocab
    metadata = json.loads((output / "dataset.json").read_text())
    assert metadata["vocab_size"] == len(vocab) and metadata["lowercase"] is True
    # A reused tokenizer.json that pads and truncates (as many saved ones do) changes nothing.
    saved = Tokenizer.from_file(str(output / "tokenizer" / "tokenizer.json"))
    saved.enable_padding(length=12)
    saved.enable_truncation(max_length=3)
    saved.save(str(tmp_path / "padded.json"))
    again = tmp_path / "again"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", again, "--tokenizer",
                           tmp_path / "padded.json", "--test-split", 0, "--max-seq-length", 16, "--packing", "documents")  # fmt: skip
    assert status == 0, err
    np.testing.assert_array_equal(read_split(again, "train"), ids)


def test_large_reused_vocabulary_is_stored_as_int32(tmp_path, capsys):
    vocab = SPECIAL_TOKENS + [f"t{letters(i)}" for i in range(70_000)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    source = tmp_path / "text.txt"
    source.write_text(f"ta {vocab[-1]} tb\n", encoding="utf-8")
    output = tmp_path / "out"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--tokenizer",
                           tmp_path / "vocab.txt", "--max-seq-length", 8)  # fmt: skip
    assert status == 0, err
    ids = read_split(output, "train")
    assert ids.dtype == np.int32
    assert ids[0].tolist() == [2, 5, len(vocab) - 1, 6, 3, 0, 0, 0]


def test_whitespace_mode_keeps_the_most_frequent_words(tmp_path, capsys):
    frequencies = {"alpha": 9, "beta": 7, "gamma": 5, "delta": 3, "omega": 1}
    words = [w for w, n in frequencies.items() for _ in range(n)]
    rng = np.random.default_rng(0)
    rng.shuffle(words)
    source = tmp_path / "words.txt"
    source.write_text(" ".join(words[:12]) + "\n" + " ".join(words[12:]) + "\n", encoding="utf-8")
    output = tmp_path / "out"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output, "--tokenizer", "whitespace",
                           "--vocab-size", 8, "--max-seq-length", 32, "--test-split", 0)  # fmt: skip
    assert status == 0, err
    assert vocabulary(output) == SPECIAL_TOKENS + ["alpha", "beta", "gamma"]
    ids = read_split(output, "train")
    decoded = decode_words(ids.ravel(), vocabulary(output))
    assert decoded == [w if w in ("alpha", "beta", "gamma") else "[UNK]" for w in words]
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(output / "tokenizer"))
    assert tokenizer("Alpha gamma omega")["input_ids"] == [2, 5, 7, 1, 3]


# ---------------------------------------------------------------------- input formats


def test_jsonl_gz_and_globs_give_the_same_dataset_as_text(tmp_path, capsys):
    documents = make_documents(25, seed=4)
    text = write_text(tmp_path / "a" / "docs.txt", documents)
    nested = tmp_path / "b" / "deep" / "docs.jsonl.gz"
    nested.parent.mkdir(parents=True)
    with gzip.open(nested, "wt", encoding="utf-8") as handle:
        for lines in documents:
            handle.write(json.dumps({"text": "\n".join(lines), "id": 1}) + "\n")
    with gzip.open(tmp_path / "b" / "docs.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write(text.read_text(encoding="utf-8"))
    common = ["--max-seq-length", 24, "--test-split", 0.2]
    outputs = {"txt": tmp_path / "txt"}
    status, _, err = build(capsys, "--input-files", text, "--output-dir", outputs["txt"], "--vocab-size", 300, *common)
    assert status == 0, err
    # The same vocabulary for all three (WordPiece training may break count ties differently).
    common += ["--tokenizer", outputs["txt"] / "tokenizer"]
    sources = {"jsonl": [str(tmp_path / "b" / "**" / "*.jsonl.gz")], "gz": [tmp_path / "b" / "docs.txt.gz"]}
    for name, inputs in sources.items():
        outputs[name] = tmp_path / name
        status, _, err = build(capsys, "--input-files", *inputs, "--output-dir", outputs[name], *common)
        assert status == 0, err
    for name in ("jsonl", "gz"):
        for split in ("train", "test"):
            np.testing.assert_array_equal(read_split(outputs[name], split), read_split(outputs["txt"], split))


def test_malformed_jsonl_rows(tmp_path, capsys):
    source = tmp_path / "rows.jsonl"
    source.write_text('{"text": "good row"}\nnot json\n{"body": "x"}\n{"text": "also good"}\n', encoding="utf-8")
    output = tmp_path / "out"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", output)
    assert_no_output(status, err, output, rf"{re.escape(str(source))}:2: .*not valid JSON")
    status, out, err = build(capsys, "--input-files", source, "--output-dir", output, "--on-bad-line", "skip")
    assert status == 0, err
    assert "skipped 2 malformed rows" in out
    metadata = json.loads((output / "dataset.json").read_text())
    assert metadata["num_documents"]["train"] + metadata["num_documents"]["test"] == 2
    assert metadata["report"]["dropped"]["malformed"] == 2


def test_worker_processes_give_the_same_shards(corpus, tmp_path, capsys):
    _, source, output = corpus
    parallel = tmp_path / "parallel"
    status, _, err = build(capsys, "--input-files", source, "--output-dir", parallel, "--tokenizer",
                           output / "tokenizer", "--max-seq-length", 32, "--test-split", 0.25, "--seed", 5,
                           "--num-workers", 2, "--packing", "documents")  # fmt: skip
    assert status == 0, err
    for split in ("train", "test"):
        np.testing.assert_array_equal(read_split(parallel, split), read_split(output, split))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("setup", "extra", "expected"),
    [
        ("missing", [], r"missing\.txt does not exist"),
        ("glob", [], r"matches no file"),
        ("empty", [], r"no text"),
        ("binary", [], r"looks binary \(NUL byte at byte offset 3\)"),
        ("latin1", [], r"not UTF-8 text \(byte offset 8, line 2\)"),
        ("exists", [], r"already exists.*--overwrite"),
        ("good", ["--vocab-size", 12], r"--vocab-size 12 is too small.*need"),
        ("good", ["--max-seq-length", 4], r"--max-seq-length 4"),
        ("good", ["--mask-prob", 1.5], r"--mask-prob"),
        ("good", ["--test-split", 1.0], r"--test-split"),
    ],
)
def test_user_errors_leave_nothing_behind(tmp_path, capsys, setup, extra, expected):
    inputs = {
        "missing": tmp_path / "missing.txt",
        "glob": tmp_path / "nothing" / "*.txt",
        "empty": tmp_path / "empty.txt",
        "binary": tmp_path / "binary.txt",
        "latin1": tmp_path / "latin1.txt",
        "exists": tmp_path / "good.txt",
        "good": tmp_path / "good.txt",
    }
    (tmp_path / "empty.txt").write_text("\n  \n\n", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"abc\x00\x01\x02")
    (tmp_path / "latin1.txt").write_bytes(b"fine\ncaf\xe9 ok\n")  # \xe9: latin-1, not UTF-8
    (tmp_path / "good.txt").write_text("The quick brown fox jumps over the lazy dog.\n", encoding="utf-8")
    output = tmp_path / "out"
    if setup == "exists":
        output.mkdir()
        (output / "keep.txt").write_text("mine")
    status, _, err = build(capsys, "--input-files", inputs[setup], "--output-dir", output, *extra)
    if setup == "exists":
        assert status == 2 and re.search(expected, err) and (output / "keep.txt").read_text() == "mine"
        return
    assert_no_output(status, err, output, expected)


# ------------------------------------------------------------------ the real commands


def test_seed_guide_command_works_as_written(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [
        "This is a sample sentence for BERT training.",
        "BERT learns bidirectional representations from unlabeled text.",
        "Masked language modeling is the key pre-training task.",
    ]
    (tmp_path / "data" / "sample.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    command = [sys.executable, str(BUILDER), "--input-files", "data/sample.txt", "--output-dir", "data/sample-mlm",
               "--vocab-size", "30000", "--max-seq-length", "512", "--mask-prob", "0.15"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = tmp_path / "data" / "sample-mlm"
    metadata = json.loads((output / "dataset.json").read_text())
    assert metadata["num_sequences"] == {"train": 1, "test": 0} and metadata["seq_len"] == 512
    words = decode_words(read_split(output, "train")[0], vocabulary(output))
    assert words == expected_words(output, lines)
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "error: output folder data/sample-mlm already exists; choose another --output-dir or pass --overwrite"
    ]


# ------------------------------------------------------------------------ demo corpus


def test_module_paragraphs_takes_every_docstring_one_paragraph_per_line():
    source = (
        '"""Module doc.\n\nSecond   paragraph\n  continues."""\n'
        "class A:\n"
        '    """Class doc."""\n'
        "    def f(self):\n"
        '        """Method\n        doc."""\n'
        "def g():\n"
        "    return 1\n"
    )
    assert module_paragraphs(source) == ["Module doc.", "Second paragraph continues.", "Class doc.", "Method doc."]


def test_demo_corpus_is_deterministic_and_capped(tmp_path):
    first = write_demo_corpus(tmp_path / "a.txt", max_mb=0.05)
    write_demo_corpus(tmp_path / "b.txt", max_mb=0.05)
    text = (tmp_path / "a.txt").read_bytes()
    assert text == (tmp_path / "b.txt").read_bytes()
    assert first["bytes"] == len(text) <= 50_000
    documents = text.decode("utf-8").split("\n\n")[:-1]
    assert len(documents) == first["documents"] >= 2
    lines = [line for document in documents for line in document.split("\n")]
    assert len(lines) == first["lines"]
    assert all(line and line == " ".join(line.split()) for line in lines)
    with pytest.raises(UserError, match="--max-mb"):
        write_demo_corpus(tmp_path / "c.txt", max_mb=1e-6)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no partial file


def test_library_builds_the_same_files_as_the_command_line(tmp_path, capsys):
    """`build_mlm_dataset(MLMBuildOptions(...))` is what the command line runs: same bytes."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    source = write_text(tmp_path / "docs.txt", make_documents(40))
    status, _, err = build(capsys, "--input-files", source, "--output-dir", tmp_path / "cli", "--tokenizer", "whitespace",
                           "--max-seq-length", 24, "--nsp", "--static-masking", "--shard-size", 16, "--seed", 5)  # fmt: skip
    assert status == 0, err
    build_mlm_dataset(MLMBuildOptions(input_files=[str(source)], output_dir=str(tmp_path / "library"),
                                      tokenizer="whitespace", max_seq_length=24, nsp=True, static_masking=True,
                                      shard_size=16, seed=5))  # fmt: skip
    files = sorted(path.relative_to(tmp_path / "cli") for path in (tmp_path / "cli").rglob("*") if path.is_file())
    assert len(files) > 10
    assert files == sorted(path.relative_to(tmp_path / "library") for path in (tmp_path / "library").rglob("*")
                           if path.is_file())  # fmt: skip
    for name in files:
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "library" / name).read_bytes(), name
