"""What a fine-tuning suite (`utils.finetune_suite`) will do, checked before anything runs:
the starting point and its tokenizer, the tasks and their files, the datasets (built once
per task with that tokenizer, then reused), and one planned `pretrain.py` run per
(task, learning rate, seed).

Output folder layout:

    <out>/suite.json                       the settings every run shares (a rerun must match them)
    <out>/data/<task>/                     the task's dataset (built once, reused)
    <out>/runs/<task>/lr<lr>-seed<seed>/   one ordinary run folder; result.json once finished
    <out>/runs/<task>-from-mnli/...        RTE/MRPC/STS-B started from the MNLI model (--from-mnli)
    <out>/mnli-start/lr<lr>-seed<seed>/    the MNLI runs' encoders for --from-mnli
    <out>/logs/<task>-lr<lr>-seed<seed>.log   each run's output, appended on every attempt
    <out>/results.md, results.json         the table
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.files import write_json
from dataset import build_qa_dataset, build_text_cls_dataset, build_token_cls_dataset
from dataset.tasks.catalog import GLUE_TASKS, TASKS, TaskFiles, TaskSpec, builder_flags, task_files
from dataset.tasks.format import read_task_metadata
from dataset.text.tokenizer import load_tokenizer, save_tokenizer
from training.checkpoint import resolve_checkpoint

BUILDERS = {"classification": build_text_cls_dataset.main, "regression": build_text_cls_dataset.main,
            "token_classification": build_token_cls_dataset.main, "question_answering": build_qa_dataset.main}


@dataclass(frozen=True)
class StartingPoint:
    """The weights every run starts from and the tokenizer their datasets must use."""

    override: str
    """`+init_from=<step folder>` or `+init_from_hf=<folder>`, pinned for every run."""
    tokenizer: Path
    vocab_sha256: str


def vocab_sha256(tokenizer: Path) -> str:
    """SHA-256 of the vocabulary as a dataset records it (`dataset.json`'s `vocab_sha256`)."""
    choice = load_tokenizer(str(tokenizer))
    with tempfile.TemporaryDirectory() as folder:
        return save_tokenizer(choice, Path(folder) / "tokenizer", 512)


def resolve_start(init_from: str | None, init_from_hf: str | None, tokenizer: str | None) -> StartingPoint:
    """Check the starting point and pick its tokenizer; `--tokenizer` must hold the same vocabulary."""
    if (init_from is None) == (init_from_hf is None):
        raise UserError("name one starting point: --init-from RUN_OR_STEP_FOLDER or --init-from-hf TRANSFORMERS_FOLDER")
    if init_from is not None:
        folder = resolve_checkpoint(init_from, None).resolve()
        own = folder / "tokenizer"
        expected = json.loads((folder / "dataset.json").read_text(encoding="utf-8")).get("vocab_sha256")
        override = f"+init_from={folder}"
    else:
        folder = Path(init_from_hf).resolve()
        if not (folder / "config.json").is_file():
            raise UserError(f"--init-from-hf {init_from_hf} is not a transformers model folder (no config.json)")
        own = folder
        expected = None
        override = f"+init_from_hf={folder}"
    has_own = (own / "vocab.txt").is_file() or (own / "tokenizer.json").is_file()
    if tokenizer is None and not has_own:
        raise UserError(f"{folder} holds no tokenizer (vocab.txt or tokenizer.json); pass --tokenizer with the one "
                        "it was trained with")
    chosen = Path(tokenizer).resolve() if tokenizer is not None else own
    sha = vocab_sha256(chosen)
    if has_own and expected is None:
        expected = vocab_sha256(own)
    if expected is not None and sha != expected:
        raise UserError(f"--tokenizer {tokenizer} does not match the starting point: its vocabulary differs from the "
                        f"one {folder} was trained with; leave --tokenizer out to use {own}")
    if init_from_hf is not None:
        _check_hf_vocab_size(folder, chosen)
    return StartingPoint(override, chosen, sha)


def _check_hf_vocab_size(folder: Path, tokenizer: Path) -> None:
    size = load_tokenizer(str(tokenizer)).tokenizer.get_vocab_size(with_added_tokens=True)
    expected = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    if expected is not None and size != expected:
        raise UserError(f"--tokenizer {tokenizer} does not match the starting point: {size} tokens, but "
                        f"{folder}/config.json has vocab_size {expected}")


def check_tasks(names: list[str], glue_dir: str | None, squad_dir: str | None,
                conll_dir: str | None) -> list[tuple[TaskSpec, TaskFiles]]:
    """The tasks in order with their checked files; an unknown name or a missing folder is a `UserError`."""
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise UserError(f"--tasks names a task twice: {' '.join(names)}")
    roots = {"squad": squad_dir, "conll": conll_dir}
    flag = {"squad": "--squad-dir", "conll": "--conll-dir"}
    checked = []
    for name in names:
        root = roots.get(name, glue_dir)
        if root is None:
            raise UserError(f"task {name} needs {flag.get(name, '--glue-dir')} (the folder holding its files)")
        if not Path(root).is_dir():
            raise UserError(f"{flag.get(name, '--glue-dir')} {root} is not a folder")
        checked.append((TASKS[name], task_files(TASKS[name], Path(root))))
    return checked


def default_tasks(glue_dir: str | None, squad_dir: str | None, conll_dir: str | None) -> list[str]:
    """GLUE's nine tasks with --glue-dir, SQuAD with --squad-dir, CoNLL with --conll-dir."""
    names = list(GLUE_TASKS) if glue_dir else []
    return names + (["squad"] if squad_dir else []) + (["conll"] if conll_dir else [])


def pin_settings(out: Path, settings: dict) -> None:
    """Write `suite.json`, or check that a rerun into the same folder uses the same settings."""
    path = out / "suite.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in sorted(set(saved) | set(settings)) if saved.get(key) != settings.get(key)]
        if changed:
            raise UserError(f"{out} holds a suite with other settings ({', '.join(changed)}: "
                            f"{saved.get(changed[0])!r} there, {settings.get(changed[0])!r} now); rerun with the "
                            "same ones to resume it, or choose another --output-dir")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


def build_dataset(spec: TaskSpec, files: TaskFiles, start: StartingPoint, max_seq_length: int, out: Path) -> Path:
    """The task's dataset folder under `<out>/data/`, built with the starting point's tokenizer
    unless an earlier run of the suite built it (the builder writes it atomically)."""
    folder = out / "data" / spec.name
    if (folder / "dataset.json").is_file():
        if read_task_metadata(folder).vocab_sha256 != start.vocab_sha256:
            raise UserError(f"{folder} was built with another tokenizer; remove it or choose another --output-dir")
        return folder
    print(f"building the {spec.title} dataset -> {folder}", flush=True)
    flags = builder_flags(spec, files, max_seq_length) + ["--tokenizer", str(start.tokenizer), "--output-dir", str(folder)]
    BUILDERS[spec.kind](flags)
    return folder
