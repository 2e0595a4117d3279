"""Small datasets, in-process runs and subprocess launches shared by the tests."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core.files import write_json
from dataset.puzzles.format import write_single_example_split

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "config")


def compose_config(overrides: list[str]) -> dict:
    """The plain dict that `pretrain.py` would see for these command-line overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return OmegaConf.to_container(compose("cfg_pretrain", overrides=overrides), resolve=True)


def subprocess_env() -> dict[str, str]:
    """The environment of a test's subprocess: one torch thread, this checkout first on the
    import path, and Hydra's one-line errors."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def torchrun_command(port: int) -> list[str]:
    """The command that starts a script on 2 processes (gloo on CPU); each test its own
    `port`, so that tests running side by side do not meet."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]


def run_one_and_two_processes(args: list[str], folder: Path, port: int) -> tuple[Path, Path]:
    """`pretrain.py args` in one process, then on two with torchrun; their run folders
    (`folder/one`, `folder/two`). A run that fails fails the test with its error output."""
    for name, launcher in (("one", [sys.executable]), ("two", torchrun_command(port))):
        done = subprocess.run([*launcher, "pretrain.py", *args, f"+checkpoint_path={folder / name}"], cwd=REPO,
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return folder / "one", folder / "two"


def step_values(records: list[dict], key: str) -> dict[int, float]:
    """{step: value of `key`} of the metric records that hold `key`."""
    return {record["step"]: record[key] for record in records if key in record}


def make_puzzle_dataset(root: Path, num_train: int = 48, num_test: int = 16, seq_len: int = 8, seed: int = 0) -> Path:
    """A learnable toy puzzle set: the label is the input's digits sorted.

    Tokens: 0 pad, 1..5 digits; one puzzle per group, one example per puzzle.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("test", num_test)):
        inputs = rng.integers(1, 6, size=(count, seq_len), dtype=np.int32)
        labels = np.sort(inputs, axis=1).astype(np.int32)
        write_single_example_split(root / split, inputs, labels, puzzles_per_group=1, vocab_size=6)
    write_json(root / "identifiers.json", ["<blank>"])
    return root


TINY_TRM = [
    "arch=trm", "arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=2", "arch.L_cycles=2",
    "arch.halt_max_steps=3", "arch.puzzle_emb_len=2", "arch.expansion=2", "evaluators=[]", "wandb=disabled",
    "lr_warmup_steps=2", "log_interval=1", "cpu_threads=1",
]


def make_mlm_dataset(root: Path, num_documents: int = 30, max_seq_length: int = 32, seed: int = 0) -> Path:
    """A tiny text MLM dataset (word-level vocabulary of 17 words) built by the real builder."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    words = "the cat dog sat on a mat ran fast slow big small red blue green tree house".split()
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(num_documents):
        lines += [" ".join(rng.choice(words, size=rng.integers(4, 13))) for _ in range(3)] + [""]
    text = root.parent / f"{root.name}.txt"
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text("\n".join(lines), encoding="utf-8")
    build_mlm_dataset(MLMBuildOptions(
        input_files=[str(text)], output_dir=str(root), tokenizer="whitespace", vocab_size=40,
        max_seq_length=max_seq_length, test_split=0.3, seed=seed,
    ))
    return root


TINY_BERT = [
    "arch=bert_tiny", "arch.num_layers=1", "arch.hidden_size=32", "arch.num_heads=2", "wandb=disabled",
    "lr_warmup_steps=2", "log_interval=1", "cpu_threads=1",
]


THREE_STEP_RUNS = {
    "trm": (make_puzzle_dataset, TINY_TRM + ["global_batch_size=16", "epochs=3", "eval_interval=3", "lr=1e-3",
                                             "max_steps=3"], "train/lm_loss"),
    "bert": (make_mlm_dataset, TINY_BERT + ["arch.hidden_dropout_prob=0", "arch.attention_dropout_prob=0",
                                            "global_batch_size=8", "epochs=3", "eval_interval=3", "lr=1e-3",
                                            "max_steps=3"], "train/mlm_loss"),
}
"""(dataset maker, overrides, training-loss key) of a 3-step run per architecture, dropout off,
for comparing two ways of running the same steps (bf16, compile, CUDA vs CPU)."""


def tiny_bert_config(use_nsp: bool = False, **overrides):
    """A 2-layer, hidden-64, 4-head BertConfig without dropout, for model tests."""
    from models.bert.config import BertConfig, BertLossConfig

    values = dict(
        name="bert", loss=BertLossConfig(use_nsp=use_nsp), num_layers=2, hidden_size=64, num_heads=4,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


def run_builder(main, *flags) -> int:
    """Run a dataset builder's `main(argv)` in-process as its CLI would; return the exit status."""
    from core.errors import run_cli

    try:
        run_cli(lambda: main([str(flag) for flag in flags]))
    except SystemExit as exit_:
        return exit_.code
    return 0


def assert_builder_refuses(build, flags: list, message: str, tmp_path: Path, capsys) -> None:
    """`build(*flags, "--output-dir", tmp_path / "out")` (`{tmp}` in a flag standing for
    `tmp_path`) exits 2 with one error line holding `message` and leaves no output folder,
    finished or partial."""
    flags = [str(flag).replace("{tmp}", str(tmp_path)) for flag in flags]
    status = build(*flags, "--output-dir", tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def write_puzzle_csv(path: Path, rows: list[list[str]]) -> None:
    """A puzzle source CSV (`source,question,answer,rating`, as the Sudoku and Maze builders read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows([["source", "question", "answer", "rating"], *rows])


def load_puzzle_arrays(folder: Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of set `all` of one split of a puzzle dataset."""
    names = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
    return {name: np.load(folder / split / f"all__{name}.npy", allow_pickle=False) for name in names}


FINETUNE_WORDS = ("the a cat dog sat on mat ran fast slow big small red blue green tree house who what where "
                  "is was in of to and new york paris london city river alice bob went lives run").split()
"""Whole words of the fine-tuning tests' vocabulary (`write_wordpiece_vocab`)."""


def write_wordpiece_vocab(folder: Path) -> Path:
    """A BERT `vocab.txt` (lowercase) with whole words, a few `##` pieces and punctuation."""
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FINETUNE_WORDS, "##s", "##ing", "##er", ".", ",", "?", "'", '"']
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}', encoding="utf-8")
    return folder / "vocab.txt"


def make_cls_files(folder: Path, num_train: int = 64, num_dev: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """train.tsv and dev.tsv of a learnable task: label 1 when the sentence mentions a cat."""
    rng = np.random.default_rng(seed)
    words = "the a cat dog sat on mat ran fast slow big small red blue green tree house".split()
    paths = []
    for name, count in (("train", num_train), ("dev", num_dev)):
        lines = ["sentence\tlabel"]
        for _ in range(count):
            sentence = list(rng.choice(words, size=rng.integers(3, 9)))
            lines.append(f"{' '.join(sentence)}\t{int('cat' in sentence)}")
        path = folder / f"{name}.tsv"
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]
