"""`+init_from=`: start a run from the weights of one of this project's checkpoints.

The typical use is fine-tuning: a pretraining checkpoint (a run folder, for its newest
checkpoint, or a `step_N` folder) gives the encoder; its MLM/NSP heads are dropped and the
new head starts fresh. The architecture's sizes are taken from the checkpoint's run config
(the plugin's `checkpoint_config`), then every weight whose name and shape match is
copied: the EMA weights when the checkpoint kept them, as the export does. Only weights
move; the optimiser, step and data position start anew (`+load_checkpoint` resumes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from core.errors import ConfigError, UserError
from models.interface import ArchPlugin, TrainModule, strip_compile_prefix
from training.checkpoint import resolve_checkpoint


@dataclass
class InitReport:
    """What `+init_from` did, in the model's tensor names."""

    source: Path
    """The checkpoint folder the weights came from."""
    weights: str
    """`ema` or `model`: which of its weight files."""
    loaded: list[str] = field(default_factory=list)
    """Tensors copied from the checkpoint."""
    fresh: list[str] = field(default_factory=list)
    """Tensors the checkpoint lacks: they keep their new initialisation (the new head)."""
    dropped: list[str] = field(default_factory=list)
    """Checkpoint tensors the model has no place for (the pretraining heads)."""

    def banner(self) -> str:
        """One line for the run's start."""
        return (f"initialised from {self.source} ({self.weights} weights): {len(self.loaded)} tensors loaded; "
                f"fresh: {', '.join(self.fresh) or 'none'}; dropped: {', '.join(self.dropped) or 'none'}")


@dataclass
class StartingPoint:
    """A checkpoint to start from and the arch config sized like it."""

    folder: Path
    arch_config: Any

    def load(self, model: TrainModule) -> InitReport:
        """Copy every tensor whose name and shape match into `model`, in place."""
        weights = "ema" if (self.folder / "ema.safetensors").is_file() else "model"
        try:
            saved = load_file(self.folder / f"{weights}.safetensors")
        except (SafetensorError, OSError) as error:
            raise UserError(f"+init_from={self.folder}: {weights}.safetensors cannot be read ({error})") from None
        saved = strip_compile_prefix(saved)
        report = InitReport(source=self.folder, weights=weights)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                if name not in saved:
                    report.fresh.append(name)
                    continue
                if saved[name].shape != tensor.shape:
                    raise UserError(f"+init_from={self.folder}: {name} has shape {tuple(saved[name].shape)} there and "
                                    f"{tuple(tensor.shape)} here; the checkpoint does not fit this architecture")
                tensor.copy_(saved[name].to(tensor.dtype))
                report.loaded.append(name)
        report.dropped = sorted(set(saved) - set(model.state_dict()))
        return report


def _read_json(path: Path, flag: str = "+init_from") -> dict:
    if not path.is_file():
        raise UserError(f"{flag}: {path} not found; point at a run or step_N folder written by pretrain.py")
    return json.loads(path.read_text(encoding="utf-8"))


def starting_point(spec: str, plugin: ArchPlugin, arch_config: Any, metadata: Any) -> StartingPoint:
    """The checkpoint `+init_from=spec` names and the arch config sized like it.

    The dataset must use the checkpoint's vocabulary (`vocab_sha256`, when both record it).
    """
    if plugin.checkpoint_config is None:
        raise ConfigError(f"+init_from is not supported for arch {plugin.name}; remove it or use +load_checkpoint")
    folder = resolve_checkpoint(spec, None)
    arch = _read_json(folder / "config.json").get("arch") or {}
    dataset = check_vocabulary(folder, metadata, "+init_from")
    return StartingPoint(folder, plugin.checkpoint_config(arch, int(dataset["vocab_size"]), arch_config))


def check_vocabulary(folder: Path, metadata: Any, flag: str) -> dict:
    """The checkpoint's `dataset.json`, once the dataset of this run is known to use the same
    vocabulary (`vocab_sha256`, when both record it); `flag` names the option in the error."""
    dataset = _read_json(folder / "dataset.json", flag)
    ours, theirs = getattr(metadata, "vocab_sha256", None), dataset.get("vocab_sha256")
    if ours and theirs and ours != theirs:
        raise UserError(f"{flag}: the dataset's vocabulary differs from the one {folder} was trained with; rebuild "
                        f"the dataset with --tokenizer {folder / 'tokenizer'}")
    return dataset
