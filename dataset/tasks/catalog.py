"""The downstream tasks a pretrained BERT is judged by, as their distributions lay them out:
GLUE's nine tasks (one folder each, GLUE's own file names and columns), SQuAD v1.1/v2.0
JSON and CoNLL-2003.

For each task: where its files are, the columns it reads, the flags of its builder
(`dataset/build_{text_cls,token_cls,qa}_dataset.py`) and the dev metrics that score it.
`task_files` checks a task's folder before anything is built: a missing file or a header
without the task's columns is one `UserError` naming the file and what it should hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.errors import UserError

TaskKind = Literal["classification", "regression", "token_classification", "question_answering"]
ARCH_OF_KIND = {"classification": "bert_cls", "regression": "bert_cls", "token_classification": "bert_ner",
                "question_answering": "bert_qa"}
"""The fine-tuning preset (`config/arch/*.yaml`) of each kind of task."""


@dataclass(frozen=True)
class TaskSpec:
    """One downstream task: its files, columns and official dev metrics."""

    name: str
    """Short name on the command line (`cola`, `mnli`, `squad`)."""
    title: str
    """The name papers print (`CoLA`, `MNLI`)."""
    kind: TaskKind
    folder: str = ""
    """GLUE: the task's folder in the GLUE distribution; empty for SQuAD and CoNLL."""
    dev_sets: tuple[str, ...] = ("dev",)
    """Evaluation sets: GLUE file names without `.tsv` (MNLI has two)."""
    text_columns: tuple[str, ...] = ()
    """Header names (or 0-based indices without a header) of the sentence (pair)."""
    label_column: str = ""
    labels: tuple[str, ...] = ()
    """Class names in id order (class 1 is F1's positive class); empty for regression."""
    header: bool = True
    skip_short_lines: bool = False
    """Skip lines with too few columns, as every GLUE reader does for QQP's few malformed ones."""
    metrics: tuple[str, ...] = ()
    """`<set>/<metric>` keys of the evaluation log that the task reports, in print order."""
    percent: bool = True
    """Whether the metrics are fractions to print as percentages (SQuAD's already are)."""

    @property
    def arch(self) -> str:
        """The `arch=` preset that fine-tunes this task."""
        return ARCH_OF_KIND[self.kind]


def _glue(name, title, text_columns, label_column, labels, metrics, **extra) -> TaskSpec:
    kind = "regression" if not labels else "classification"
    return TaskSpec(name=name, title=title, kind=kind, folder=title, text_columns=tuple(text_columns),
                    label_column=label_column, labels=tuple(labels), metrics=tuple(metrics), **extra)


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    # CoLA has no header line: source, label, original label (if any), sentence.
    _glue("cola", "CoLA", ["3"], "1", ["0", "1"], ["dev/mcc"], header=False),
    _glue("sst2", "SST-2", ["sentence"], "label", ["0", "1"], ["dev/accuracy"]),
    _glue("mrpc", "MRPC", ["#1 String", "#2 String"], "Quality", ["0", "1"], ["dev/f1", "dev/accuracy"]),
    _glue("stsb", "STS-B", ["sentence1", "sentence2"], "score", [], ["dev/pearson", "dev/spearman"]),
    _glue("qqp", "QQP", ["question1", "question2"], "is_duplicate", ["0", "1"], ["dev/f1", "dev/accuracy"],
          skip_short_lines=True),
    _glue("mnli", "MNLI", ["sentence1", "sentence2"], "gold_label", ["contradiction", "entailment", "neutral"],
          ["dev_matched/accuracy", "dev_mismatched/accuracy"], dev_sets=("dev_matched", "dev_mismatched")),
    _glue("qnli", "QNLI", ["question", "sentence"], "label", ["entailment", "not_entailment"], ["dev/accuracy"]),
    _glue("rte", "RTE", ["sentence1", "sentence2"], "label", ["entailment", "not_entailment"], ["dev/accuracy"]),
    _glue("wnli", "WNLI", ["sentence1", "sentence2"], "label", ["0", "1"], ["dev/accuracy"]),
    TaskSpec(name="squad", title="SQuAD", kind="question_answering", metrics=("dev/exact_match", "dev/f1"),
             percent=False),
    TaskSpec(name="conll", title="CoNLL-2003", kind="token_classification", metrics=("dev/f1",)),
]}
"""Every task the suite knows, by short name."""
GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")
"""GLUE's nine tasks, in the order of the GLUE paper's tables."""

SQUAD_FILES = (("train-v1.1.json", "dev-v1.1.json"), ("train-v2.0.json", "dev-v2.0.json"), ("train.json", "dev.json"))
"""(train, dev) names a SQuAD folder may hold: the official v1.1 and v2.0 names, or plain ones."""
CONLL_FILES = (("train.txt", "valid.txt"), ("eng.train", "eng.testa"), ("train.conll", "dev.conll"))
"""(train, dev) names a CoNLL-2003 folder may hold: the common copies' and the original distribution's."""


@dataclass(frozen=True)
class TaskFiles:
    """The files one task is built from."""

    train: Path
    dev: dict[str, Path]
    """Evaluation set name -> file."""


def task_files(spec: TaskSpec, root: Path) -> TaskFiles:
    """The checked files of `spec` under `root` (the GLUE folder, or the SQuAD/CoNLL folder)."""
    if spec.kind in ("classification", "regression"):
        folder = root / spec.folder
        files = TaskFiles(folder / "train.tsv", {name: folder / f"{name}.tsv" for name in spec.dev_sets})
        for file in [files.train, *files.dev.values()]:
            if not file.is_file():
                expected = ", ".join(["train.tsv", *(f"{name}.tsv" for name in spec.dev_sets)])
                raise UserError(f"{spec.title}: {file} is missing; the {spec.folder}/ folder of GLUE holds {expected}")
            check_columns(spec, file)
        return files
    pairs = SQUAD_FILES if spec.kind == "question_answering" else CONLL_FILES
    for train, dev in pairs:
        if (root / train).is_file() and (root / dev).is_file():
            return TaskFiles(root / train, {"dev": root / dev})
    names = " or ".join(f"{train} + {dev}" for train, dev in pairs)
    raise UserError(f"{spec.title}: {root} holds no training and dev files; expected {names}")


def check_columns(spec: TaskSpec, file: Path) -> None:
    """Refuse a GLUE file whose first line lacks the task's columns (or, for CoLA, is a header)."""
    with open(file, encoding="utf-8-sig") as handle:  # MRPC's files start with a byte-order mark
        first = handle.readline().rstrip("\r\n").split("\t")
    if not spec.header:
        needed = max(int(spec.label_column), *(int(column) for column in spec.text_columns)) + 1
        if len(first) < needed or first[int(spec.label_column)] not in spec.labels:
            raise UserError(f"{spec.title}: {file} should start with a data line of {needed} tab-separated columns, "
                            f"the label ({'/'.join(spec.labels)}) in column {spec.label_column} (GLUE's CoLA has no "
                            f"header line); its first line has {len(first)} columns: {first[:4]}")
        return
    missing = [column for column in [*spec.text_columns, spec.label_column] if column not in first]
    if missing:
        raise UserError(f"{spec.title}: {file} has no column {', '.join(repr(m) for m in missing)} in its header "
                        f"({', '.join(first[:12])}); GLUE's {spec.folder} files have "
                        f"{', '.join([*spec.text_columns, spec.label_column])}")


def builder_flags(spec: TaskSpec, files: TaskFiles, max_seq_length: int) -> list[str]:
    """The task's builder flags but the tokenizer and output folder: files, columns, labels,
    length; SQuAD's windows as BERT's `run_squad.py` at 384 tokens (questions of 64, stride
    128), scaled down for shorter rows."""
    flags = ["--max-seq-length", str(max_seq_length)]
    if spec.kind == "question_answering":
        query = min(64, max(4, max_seq_length // 6))
        flags += ["--max-query-length", str(query), "--doc-stride", str(min(128, (max_seq_length - query - 3) // 2))]
    flags += ["--train-files", str(files.train), "--validation-files", *map(str, files.dev.values()),
             "--validation-names", *files.dev]
    if spec.kind == "classification":
        flags += ["--text-columns", *spec.text_columns, "--label-column", spec.label_column, "--labels", *spec.labels]
    elif spec.kind == "regression":
        flags += ["--text-columns", *spec.text_columns, "--label-column", spec.label_column,
                  "--label-type", "regression"]
    if not spec.header:
        flags.append("--no-header")
    if spec.skip_short_lines:
        flags.append("--skip-short-lines")
    return flags
