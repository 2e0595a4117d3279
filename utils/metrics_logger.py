"""Where metrics go: `metrics.jsonl` in the run folder, and Weights & Biases if available.

Only rank 0 creates a `MetricsLogger`. Each `log` call appends one JSON object
`{"step": N, "time": unix_seconds, "<name>": value, ...}` to `metrics.jsonl` (flushed at
once, so a killed run keeps its curve) and forwards the same record to wandb.

wandb is optional: `wandb=auto` logs online when the package is installed and a login
is found, offline when it is installed but not logged in, and not at all when it is
missing; `wandb=disabled` turns it off. Training never fails because of wandb.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends metric records to `<run_dir>/metrics.jsonl` and, optionally, to wandb."""

    def __init__(self, run_dir: Path, wandb_mode: str, project: str, run_name: str, config: dict[str, Any],
                 resume_step: int | None = None):
        """`resume_step`: the step a resumed run restarts from; records logged after it by
        the interrupted run are dropped, since the resumed run logs those steps again."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            _drop_records_after(self.path, resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.wandb_run = _start_wandb(wandb_mode, run_dir, project, run_name, config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at optimiser step `step`."""
        record = {"step": step, "time": time.time()}
        record.update({name: _json_number(value) for name, value in metrics.items()})
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)

    def close(self) -> None:
        """Flush and close the file and the wandb run."""
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _drop_records_after(path: Path, step: int) -> None:
    """Rewrite `path` without the records of steps after `step` (atomically)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line)["step"] <= step]
    temporary = path.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, path)


def _json_number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _start_wandb(mode: str, run_dir: Path, project: str, run_name: str, config: dict[str, Any]):
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        if mode != "auto":
            print(f"note: wandb={mode} but the wandb package is not installed (pip install wandb); logging to metrics.jsonl only")
        return None
    if mode == "auto":
        mode = "online" if _wandb_logged_in(wandb) else "offline"
    run = wandb.init(project=project, name=run_name, config=config, dir=str(run_dir), mode=mode, resume="allow",
                     id=_wandb_run_id(run_dir))
    if mode == "offline":
        print(f"note: wandb is logging offline to {run_dir}/wandb (run `wandb login` to log online, or wandb=disabled)")
    return run


def _wandb_logged_in(wandb_module) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(wandb_module.api.api_key)
    except AttributeError:
        return False


def _wandb_run_id(run_dir: Path) -> str:
    """A stable id per run folder, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_run_id.txt"
    if id_file.exists():
        return id_file.read_text(encoding="utf-8").strip()
    import secrets

    run_id = secrets.token_hex(4)
    id_file.write_text(run_id, encoding="utf-8")
    return run_id


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of `<run_dir>/metrics.jsonl`, in order."""
    path = run_dir / "metrics.jsonl"
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
