"""The fine-tuning builders: round trips, labels and spans on the right tokens, windows
that cover every answer, and one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from core.constants import IGNORE_LABEL_ID
from dataset import build_qa_dataset, build_text_cls_dataset, build_token_cls_dataset
from dataset.tasks.format import load_split, read_examples, read_task_metadata
from tests.helpers import REPO, run_builder, write_wordpiece_vocab


@pytest.fixture
def vocab(tmp_path):
    return write_wordpiece_vocab(tmp_path / "vocab")


def _tokenizer(folder) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer" / "tokenizer.json"))


def _decode(tokenizer: Tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def _normalised(tokenizer: Tokenizer, text: str) -> str:
    """What decoding gives back: lower case, words joined by single spaces."""
    words = [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))]
    return tokenizer.decode(tokenizer.encode(" ".join(words), add_special_tokens=False).ids)


# ------------------------------------------------------------------ classification


def test_sentence_pairs_round_trip_with_token_types_and_labels(tmp_path, vocab):
    lines = ["index\tsentence1\tsentence2\tlabel", '0\tAlice went to Paris .\tWho went ?\tentailment',
             '1\tThe "big dog\tA cat sat on the mat\tnot_entailment', "2\tbob lives in London\tthe river\tentailment"]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    output = tmp_path / "pairs"
    assert run_builder(build_text_cls_dataset.main, "--train-files", tmp_path / "train.tsv", "--validation-files",
                       tmp_path / "train.tsv", "--validation-names", "dev", "--text-columns", "sentence1", "sentence2",
                       "--tokenizer", vocab, "--max-seq-length", 32, "--output-dir", output) == 0
    metadata = read_task_metadata(output)
    assert metadata.task == "classification" and metadata.labels == ["entailment", "not_entailment"]
    arrays = load_split(output, metadata, "train")
    assert arrays["labels"].tolist() == [0, 1, 0]
    tokenizer = _tokenizer(output)
    for row, line in enumerate(lines[1:]):
        _, first, second, _ = line.split("\t")
        ids, types = arrays["input_ids"][row], arrays["token_type_ids"][row]
        sep = np.flatnonzero(ids == metadata.sep_id)
        assert ids[0] == metadata.cls_id and len(sep) == 2
        assert _decode(tokenizer, ids[1 : sep[0]]) == _normalised(tokenizer, first)  # quotes are text in a TSV
        assert _decode(tokenizer, ids[sep[0] + 1 : sep[1]]) == _normalised(tokenizer, second)
        assert (types[: sep[0] + 1] == 0).all() and (types[sep[0] + 1 : sep[1] + 1] == 1).all()
        assert (ids[sep[1] + 1 :] == metadata.pad_id).all() and (types[sep[1] + 1 :] == 0).all()
    assert read_examples(output, "dev")[1]["label"] == "not_entailment"


def test_cola_layout_without_header_and_regression_and_jsonl(tmp_path, vocab):
    (tmp_path / "cola.tsv").write_text("gj04\t1\t\tthe cat sat .\ngj04\t0\t*\tcat the sat on .\n")
    output = tmp_path / "cola"
    assert run_builder(build_text_cls_dataset.main, "--train-files", tmp_path / "cola.tsv", "--no-header",
                       "--text-columns", "3", "--label-column", "1", "--tokenizer", vocab, "--output-dir", output) == 0
    metadata = read_task_metadata(output)
    assert metadata.labels == ["0", "1"] and load_split(output, metadata, "train")["labels"].tolist() == [1, 0]

    rows = [{"s1": "the cat", "s2": "a cat", "score": "4.750"}, {"s1": "a dog", "s2": "the tree", "score": "0.0"}]
    (tmp_path / "sts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "sts"
    assert run_builder(build_text_cls_dataset.main, "--train-files", tmp_path / "sts.jsonl", "--text-columns", "s1", "s2",
                       "--label-column", "score", "--tokenizer", vocab, "--output-dir", output) == 0
    metadata = read_task_metadata(output)
    assert metadata.task == "regression" and metadata.num_labels == 1
    assert load_split(output, metadata, "train")["labels"].tolist() == [4.75, 0.0]


def test_classification_refusals_are_one_line(tmp_path, vocab, capsys):
    (tmp_path / "a.tsv").write_text("sentence\tlabel\nthe cat\t1\n")
    common = ["--tokenizer", vocab, "--output-dir", tmp_path / "out"]
    assert run_builder(build_text_cls_dataset.main, "--train-files", tmp_path / "a.tsv", "--text-columns", "text", *common) == 2
    assert "has no column 'text'; its columns are: sentence, label" in capsys.readouterr().err
    assert run_builder(build_text_cls_dataset.main, "--train-files", tmp_path / "a.tsv", *common) == 2
    assert "only the label ['1']" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("x")
    assert run_builder(build_text_cls_dataset.main, "--train-files", tmp_path / "a.txt", *common) == 2
    err = capsys.readouterr().err
    assert "unknown format '.txt'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_builders_show_their_defaults_in_help():
    for script, length in (("build_text_cls_dataset", 128), ("build_token_cls_dataset", 128), ("build_qa_dataset", 384)):
        result = subprocess.run([sys.executable, f"dataset/{script}.py", "--help"], cwd=REPO, capture_output=True,
                                text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": ""})
        text = " ".join(result.stdout.split())
        assert result.returncode == 0 and f"(default: {length})" in text, result.stdout[-500:]


# ------------------------------------------------------------ token classification


def test_conll_tags_land_on_first_word_pieces(tmp_path, vocab):
    conll = ("-DOCSTART- -X- O\n\nAlice NNP B-PER\nruns VBZ O\nto TO O\nNew NNP B-LOC\nYork NNP I-LOC\n. . O\n\n"
             "Bob S-PER\nlives O\n")
    (tmp_path / "train.conll").write_text(conll)
    output = tmp_path / "ner"
    assert run_builder(build_token_cls_dataset.main, "--train-files", tmp_path / "train.conll", "--validation-files",
                       tmp_path / "train.conll", "--validation-names", "dev", "--tokenizer", vocab,
                       "--max-seq-length", 16, "--output-dir", output) == 0
    metadata = read_task_metadata(output)
    assert metadata.labels == ["O", "B-LOC", "B-PER", "I-LOC", "S-PER"]
    arrays = load_split(output, metadata, "train")
    tokenizer = _tokenizer(output)
    pieces = [tokenizer.id_to_token(int(i)) for i in arrays["input_ids"][0]][:10]
    assert pieces == ["[CLS]", "alice", "run", "##s", "to", "new", "york", ".", "[SEP]", "[PAD]"]
    labels = [metadata.labels[i] if i != IGNORE_LABEL_ID else None for i in arrays["labels"][0][:9]]
    assert labels == [None, "B-PER", "O", None, "O", "B-LOC", "I-LOC", "O", None]
    assert arrays["word_ids"][0][:9].tolist() == [-1, 0, 1, -1, 2, 3, 4, 5, -1]
    assert read_examples(output, "dev")[1] == {"words": ["Bob", "lives"], "tags": ["S-PER", "O"]}


def test_conll_refuses_unknown_tags(tmp_path, vocab, capsys):
    (tmp_path / "bad.conll").write_text("Alice PERSON\n")
    assert run_builder(build_token_cls_dataset.main, "--train-files", tmp_path / "bad.conll", "--tokenizer", vocab,
                       "--output-dir", tmp_path / "out") == 2
    assert "bad.conll:1: tag 'PERSON' is not O or B-/I-/E-/S-" in capsys.readouterr().err


# ---------------------------------------------------------------- question answering


def _squad(path, questions):
    paragraphs = [{"context": context, "qas": [{"id": qid, "question": question, "is_impossible": not answers,
                                                "answers": [{"text": text, "answer_start": context.index(text)}
                                                            for text in answers]}]}
                  for qid, question, context, answers in questions]
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": paragraphs}]}))


def test_windows_cover_every_answer_and_spans_land_on_its_tokens(tmp_path, vocab):
    rng = np.random.default_rng(0)
    words = "the a cat dog sat on mat tree house river city".split()
    questions = []
    for index in range(12):
        filler = [str(w) for w in rng.choice(words, size=60)]
        position = int(rng.integers(0, 55))
        answer = "alice went to new york"
        context = " ".join(filler[:position] + answer.split() + filler[position:])
        questions.append((f"q{index}", "who went where ?", context, [answer]))
    questions.append(("none", "what is it ?", "the cat sat on the mat", []))
    _squad(tmp_path / "train.json", questions)
    output = tmp_path / "qa"
    assert run_builder(build_qa_dataset.main, "--train-files", tmp_path / "train.json", "--validation-files",
                       tmp_path / "train.json", "--validation-names", "dev", "--tokenizer", vocab, "--max-seq-length", 24,
                       "--max-query-length", 8, "--doc-stride", 6, "--output-dir", output) == 0
    metadata = read_task_metadata(output)
    assert metadata.options["version_2_with_negative"] is True
    arrays = load_split(output, metadata, "train")
    tokenizer = _tokenizer(output)
    for index, (_, _, context, answers) in enumerate(questions):
        windows = np.flatnonzero(arrays["example_index"] == index)
        assert len(windows) > 1 or not answers
        labelled = [w for w in windows if arrays["start_positions"][w] > 0]
        if not answers:
            assert not labelled and (arrays["end_positions"][windows] == 0).all()
            continue
        assert labelled, f"no window holds the answer of question {index}"
        for window in labelled:
            start, end = arrays["start_positions"][window], arrays["end_positions"][window]
            assert _decode(tokenizer, arrays["input_ids"][window][start : end + 1]) == answers[0]
            offsets = arrays["offsets"][window]
            assert context[offsets[start, 0] : offsets[end, 1]] == answers[0]
            assert (arrays["token_type_ids"][window][start : end + 1] == 1).all()
        # Consecutive windows start doc-stride tokens apart and together cover the context.
        covered = {int(o) for w in windows for o in arrays["offsets"][w][:, 0] if o >= 0}
        expected = {s for s, _ in tokenizer.encode(context, add_special_tokens=False).offsets}
        assert covered == expected
    assert read_examples(output, "dev")[-1] == {"id": "none", "context": "the cat sat on the mat", "answers": [],
                                                "is_impossible": True}


def test_qa_refuses_a_stride_that_skips_text(tmp_path, vocab, capsys):
    _squad(tmp_path / "t.json", [("q", "who ?", "alice went", ["alice"])])
    assert run_builder(build_qa_dataset.main, "--train-files", tmp_path / "t.json", "--tokenizer", vocab,
                       "--max-seq-length", 32, "--max-query-length", 8, "--doc-stride", 30,
                       "--output-dir", tmp_path / "out") == 2
    assert "--doc-stride 30 must be positive and at most the context room (21)" in capsys.readouterr().err
