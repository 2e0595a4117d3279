"""A generated folder laid out exactly as the GLUE distribution is, for tests and timing of
`utils.finetune_suite` (the real files cannot be downloaded here):

    python -m benchmarks.glue_data --output-dir data/tiny-glue --train 64 --dev 24

Nine folders (`CoLA/` ... `WNLI/`) with `train.tsv` and `dev.tsv` (MNLI: `dev_matched.tsv`
and `dev_mismatched.tsv`), each with GLUE's header line and column order (CoLA without a
header: source, label, original judgement, sentence) and GLUE's label values (and, as in
GLUE's QQP `train.tsv`, one QQP training line cut short). Sentences
are random words; the label follows a simple rule (a pair shares its first word, a
sentence holds "cat"), so a model can learn it. Also `squad/` (SQuAD v1.1 JSON) and
`conll/` (CoNLL-2003 columns) with the same words.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.cli import argument_parser
from core.errors import run_cli
from core.files import atomic_folder

WORDS = "the cat dog sat on a mat ran fast slow big small red blue green tree house".split()
MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))


def _pair(rng: np.random.Generator) -> tuple[str, str, bool]:
    """Two sentences and whether they share their first word (the pair tasks' rule)."""
    first, second = _sentence(rng), _sentence(rng)
    same = bool(rng.random() < 0.5)
    if same:
        second = first.split()[0] + " " + second
    return first, second, same


def _glue_rows(task: str, index: int, rng: np.random.Generator, dev: bool) -> list[str]:
    """One line of `task`'s file, GLUE's columns in GLUE's order."""
    sentence = _sentence(rng)
    cat = int("cat" in sentence.split())
    first, second, same = _pair(rng)
    if task == "CoLA":
        return [f"gj0{index % 10}", str(cat), "" if cat else "*", sentence]
    if task == "SST-2":
        return [sentence, str(cat)]
    if task == "MRPC":
        return [str(int(same)), str(1000 + index), str(2000 + index), first, second]
    if task == "STS-B":
        score = f"{(4.0 if same else 1.0) + rng.random():.3f}"
        return [str(index), "main-captions", "MSRvid", "2012test", str(index), "none", "none", first, second, score]
    if task == "QQP":
        return [str(index), str(2 * index), str(2 * index + 1), first, second, str(int(same))]
    if task == "MNLI":
        label = "entailment" if same else ["neutral", "contradiction"][index % 2]
        parses = ["( x )"] * 4
        labels = [label] * (5 if dev else 1)
        return [str(index), str(index), f"{index}e", "fiction", *parses, first, second, *labels, label]
    label = "entailment" if same else "not_entailment"
    if task == "WNLI":
        label = str(int(same))
    return [str(index), first, second, label]


HEADERS = {
    "SST-2": ["sentence", "label"],
    "MRPC": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
    "STS-B": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"],
    "QQP": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
    "QNLI": ["index", "question", "sentence", "label"],
    "RTE": ["index", "sentence1", "sentence2", "label"],
    "WNLI": ["index", "sentence1", "sentence2", "label"],
}


def _tsv(task: str, count: int, rng: np.random.Generator, dev: bool) -> str:
    lines = [] if task == "CoLA" else ["\t".join(HEADERS.get(task) or _mnli_header(dev))]
    lines += ["\t".join(_glue_rows(task, index, rng, dev)) for index in range(count)]
    if task == "QQP" and not dev:  # GLUE's QQP train.tsv has a few lines cut short, which readers skip
        lines.insert(len(lines) // 2, f"{count}\t{2 * count}\t{2 * count + 1}\tan unpaired question")
    return "\n".join(lines) + "\n"


def _mnli_header(dev: bool) -> list[str]:
    labels = [f"label{i}" for i in range(1, 6)] if dev else ["label1"]
    return [*MNLI_HEAD, *labels, "gold_label"]


def _squad(count: int, rng: np.random.Generator) -> dict:
    """SQuAD v1.1: the question asks for the word after 'on'; the context always has one."""
    paragraphs = []
    for index in range(count):
        context = f"{_sentence(rng)} on {rng.choice(WORDS)} {_sentence(rng)}"
        answer_start = context.index(" on ") + 4
        answer = context[answer_start:].split()[0]
        paragraphs.append({"context": context, "qas": [{"id": f"q{index}", "question": "what is on",
                                                        "answers": [{"text": answer, "answer_start": answer_start}]}]})
    return {"version": "1.1", "data": [{"title": "generated", "paragraphs": paragraphs}]}


def _conll(count: int, rng: np.random.Generator) -> str:
    """CoNLL-2003 columns (word, POS, chunk, tag), IOB1 as the original: colours are `I-MISC`."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(count):
        for word in _sentence(rng).split():
            tag = "I-MISC" if word in ("red", "blue", "green") else "O"
            lines.append(f"{word} NN I-NP {tag}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_glue_folder(output_dir: Path, num_train: int = 64, num_dev: int = 24, seed: int = 0) -> Path:
    """Write the generated GLUE, SQuAD and CoNLL folders into `output_dir` (atomically)."""
    rng = np.random.default_rng(seed)
    with atomic_folder(output_dir, overwrite=True) as folder:
        for task in ["CoLA", *HEADERS, "MNLI"]:
            (folder / task).mkdir()
            (folder / task / "train.tsv").write_text(_tsv(task, num_train, rng, dev=False), encoding="utf-8")
            for name in (["dev_matched", "dev_mismatched"] if task == "MNLI" else ["dev"]):
                (folder / task / f"{name}.tsv").write_text(_tsv(task, num_dev, rng, dev=True), encoding="utf-8")
        (folder / "squad").mkdir()
        for name, count in (("train-v1.1.json", num_train), ("dev-v1.1.json", num_dev)):
            (folder / "squad" / name).write_text(json.dumps(_squad(count, rng)), encoding="utf-8")
        (folder / "conll").mkdir()
        for name, count in (("train.txt", num_train), ("valid.txt", num_dev)):
            (folder / "conll" / name).write_text(_conll(count, rng), encoding="utf-8")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    """Command line: the folder and the number of training and dev lines per task."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train", type=int, default=64, help="training lines per task")
    parser.add_argument("--dev", type=int, default=24, help="dev lines per task (and per MNLI dev file)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_glue_folder(Path(args.output_dir), args.train, args.dev, args.seed)
    print(f"wrote {args.output_dir}")


if __name__ == "__main__":
    run_cli(main)
