"""`--from-mnli`: RTE, MRPC and STS-B start from the MNLI fine-tuned model, as RoBERTa and
MosaicBERT do (small tasks gain from the large related one).

When an MNLI run finishes, its encoder and pooler (the classifier dropped: it has three
outputs, the others one or two) are saved as a starting checkpoint in
`<out>/mnli-start/lr<lr>-seed<seed>/` before the run's own checkpoints are deleted. A
dependent run waits for every MNLI run, then starts (`+init_from`) from the MNLI run with
the best median learning rate and its own seed (the first MNLI seed when it has no MNLI twin).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file

from core.errors import UserError
from training.checkpoint import Checkpoint, find_latest, write_checkpoint
from utils.suite_runner import PlannedRun
from utils.suite_table import summarize_task

HEAD_PREFIX = "classifier."
"""The MNLI head's tensors, which the dependent tasks' heads cannot take."""


class MnliStarts:
    """The MNLI starting checkpoints of one suite."""

    TASKS = ("rte", "mrpc", "stsb")
    """Tasks that `--from-mnli` also runs from the MNLI model."""

    def __init__(self, out: Path, mnli_runs: list[PlannedRun], enabled: bool, keep: bool):
        self.root = out / "mnli-start"
        self.mnli_runs, self.enabled, self.keep = mnli_runs, enabled, keep

    def folder(self, lr: float, seed: int) -> Path:
        return self.root / f"lr{lr:g}-seed{seed}"

    def ready(self, run: PlannedRun) -> bool:
        """Whether `run` may start: a run from MNLI waits for every MNLI run."""
        return not run.from_mnli or all(mnli.result() is not None for mnli in self.mnli_runs)

    def chosen(self, seed: int) -> Path:
        """The start of a dependent run with `seed`: best MNLI lr (median over seeds), same seed if run."""
        best = summarize_task([mnli.result() for mnli in self.mnli_runs])["best_lr"]
        seeds = sorted({mnli.seed for mnli in self.mnli_runs})
        return self.folder(best, seed if seed in seeds else seeds[0])

    def point_at_start(self, run: PlannedRun) -> None:
        """Replace the suite's starting point by the chosen MNLI start in `run`'s overrides."""
        if not run.from_mnli:
            return
        start = self.chosen(run.seed)
        if find_latest(start) is None:
            raise UserError(f"{start}, the MNLI model {run.name} starts from, is gone (MNLI ran without --from-mnli, "
                            "or a later lr became best after clean-up); run --from-mnli in a new --output-dir")
        run.overrides = [f"+init_from={start}" if item.startswith("+init_from") else item for item in run.overrides]

    def check_available(self, dependents: list[PlannedRun]) -> None:
        """Refuse up front runs from MNLI whose MNLI start is gone (the MNLI runs finished
        without --from-mnli, so their checkpoints were deleted)."""
        todo = [run for run in dependents if run.result() is None]
        if todo and self.ready(todo[0]):
            for run in todo:
                self.point_at_start(run)

    def save_start(self, run: PlannedRun) -> None:
        """Keep a finished MNLI run's encoder as a starting checkpoint (before its own are deleted)."""
        if not self.enabled or run.spec.name != "mnli" or self.folder(run.lr, run.seed).exists():
            return
        latest = find_latest(run.run_dir)
        weights = {name: load_file(latest / f"{name}.safetensors") for name in ("model", "ema")
                   if (latest / f"{name}.safetensors").is_file()}
        kept = {name: {key: value for key, value in tensors.items() if not key.startswith(HEAD_PREFIX)}
                for name, tensors in weights.items()}
        train_state, config = (json.loads((latest / file).read_text(encoding="utf-8"))
                               for file in ("train_state.json", "config.json"))
        write_checkpoint(self.folder(run.lr, run.seed), Checkpoint(
            model=kept["model"], ema=kept.get("ema"), optimizers={}, carry={}, rng={},
            train_state=train_state, config=config), [latest / "dataset.json", latest / "tokenizer"])

    def clean_up(self) -> None:
        """After a complete suite, delete the MNLI starts that no dependent run used (unless kept)."""
        if self.keep or not self.root.is_dir() or not self.mnli_runs:
            return
        if any(mnli.result() is None for mnli in self.mnli_runs):
            return
        used = {self.chosen(mnli.seed) for mnli in self.mnli_runs}
        for folder in self.root.iterdir():
            if folder not in used:
                shutil.rmtree(folder)
