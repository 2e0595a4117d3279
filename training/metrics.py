"""Metrics: reduced over ranks, measured, shown, and written down.

- `MetricAccumulator`: (sum, count) pairs added up locally, averaged over every rank.
- `ThroughputMeter`: examples, real tokens and FLOPs per second between two reports, and
  where the time went (seconds per step, share spent waiting for data).
- `progress_fields`: what the progress bar shows; `progress_display`: the bar on a terminal,
  `LineProgress` (one line per log interval) in a log file or a pipe.
- `MetricsLogger`: where records go: `metrics.jsonl` in the run folder, and Weights &
  Biases if available.

Only rank 0 creates a `MetricsLogger`. Each `log` call appends one JSON object
`{"step": N, "time": unix_seconds, "<name>": value, ...}` to `metrics.jsonl` (flushed at
once, so a killed run keeps its curve) and forwards the same record to wandb. The run's
banner goes to `banner.txt` and the wandb run's files.

wandb is optional: `wandb=auto` logs online when the package is installed and a login
is found, offline when it is installed but not logged in, and not at all when it is
missing; `wandb=disabled` turns it off. Training never fails because of wandb once it
has started: `wandb=online` without a login is refused before anything is built
(`check_wandb_login`), with one line.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.files import write_text
from training import distributed


class MetricsLogger:
    """Appends metric records to `<run_dir>/metrics.jsonl` and, optionally, to wandb."""

    def __init__(self, run_dir: Path, wandb_mode: str, project: str, run_name: str, config: dict[str, Any],
                 resume_step: int | None = None):
        """`resume_step`: the step a resumed run restarts from; records logged after it by
        the interrupted run are dropped, since the resumed run logs those steps again.
        `run_dir` must exist (`training.build.prepare_run_dir` makes it)."""
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            _drop_records_after(self.path, resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.wandb_run = _start_wandb(wandb_mode, run_dir, project, run_name, config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record `metrics` at optimiser step `step`."""
        record = {"step": step, "time": time.time()}
        record.update(format_record(metrics))
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=step)

    def save_banner(self, text: str) -> None:
        """Add a start's banner to `<run_dir>/banner.txt` (a resumed run adds its own below)
        and to the wandb run's files."""
        path = self.path.parent / "banner.txt"
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
        write_text(path, previous + text + "\n")
        if self.wandb_run is not None:
            self.wandb_run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        """Flush and close the file and the wandb run."""
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _drop_records_after(path: Path, step: int) -> None:
    """Rewrite `path` without the records of steps after `step` (atomically)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(kept))


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
        mode = "online" if wandb_logged_in(wandb) else "offline"
    run = wandb.init(project=project, name=run_name, config=config, dir=str(run_dir), mode=mode, resume="allow",
                     id=_wandb_run_id(run_dir))
    if mode == "offline":
        print(f"note: wandb is logging offline to {run_dir}/wandb (run `wandb login` to log online, or wandb=disabled)")
    return run


def check_wandb_login(mode: str) -> None:
    """Refuse `wandb=online` before anything is built when wandb is installed but finds no login
    (wandb itself would stop the run with a traceback, or wait at a prompt)."""
    if mode != "online":
        return
    try:
        import wandb
    except ImportError:
        return  # the logger says so in a note and logs to metrics.jsonl
    if not wandb_logged_in(wandb):
        raise UserError("wandb=online but wandb finds no login (no WANDB_API_KEY, no `wandb login`); "
                        "run `wandb login`, or use wandb=offline (sync later) or wandb=disabled")


def wandb_logged_in(wandb_module) -> bool:
    """Whether wandb finds credentials (WANDB_API_KEY, its settings, .netrc), without prompting or
    asking the server: `wandb.login(prompt=False)` where it exists (newer wandb deprecates the
    `wandb.api` check and warns on it), `wandb.api.api_key` on the older versions that lack it."""
    if "prompt" in inspect.signature(wandb_module.login).parameters:
        return bool(wandb_module.login(prompt=False, verify=False))
    return bool(wandb_module.api.api_key)


def _wandb_run_id(run_dir: Path) -> str:
    """A stable id per run folder, so a resumed run continues the same wandb run."""
    id_file = run_dir / "wandb_run_id.txt"
    if id_file.exists():
        return id_file.read_text(encoding="utf-8").strip()
    import secrets

    run_id = secrets.token_hex(4)
    write_text(id_file, run_id)
    return run_id


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of `<run_dir>/metrics.jsonl`, in order."""
    path = run_dir / "metrics.jsonl"
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


class MetricAccumulator:
    """Sums (total, count) pairs locally; `reduce` adds them over ranks and averages."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, prefix: str, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add this step's pairs under `<prefix>/<name>`."""
        for name, (total, count) in pairs.items():
            key = f"{prefix}/{name}"
            pair = torch.stack([total.detach().float(), count.detach().float()])
            self.sums[key] = self.sums[key] + pair if key in self.sums else pair

    def reduce(self) -> dict[str, float]:
        """Global means (a collective: every rank must call it with the same keys)."""
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = distributed.all_reduce_sum(torch.stack([self.sums[key] for key in keys]))
        values = stacked.cpu().tolist()
        self.sums.clear()
        return {key: total / count for key, (total, count) in zip(keys, values) if count > 0}


class ThroughputMeter:
    """What the steps since the last report cost: examples, real tokens and FLOPs per
    second, seconds per step and the share of that time spent waiting for the next batch.

    The time spent inside `excluded` blocks (evaluation, saving) is left out of all of them.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        """`peak_tflops`: one device's peak, the denominator of `train/mfu` (None: no MFU)."""
        self.peak_tflops = peak_tflops
        self.start = time.perf_counter()
        self.steps = 0
        self.examples = 0
        self.tokens = 0
        self.flops = 0
        self.wait_s = 0.0
        self.excluded_s = 0.0

    def add(self, counts: dict[str, int], world_size: int, flops: int | None = None) -> None:
        """Count one step's local batch (`ArchPlugin.count_batch`) as if every rank held as
        much, and its FLOPs on this rank (`ArchPlugin.train_flops`; None: not known)."""
        self.steps += 1
        self.examples += counts["examples"] * world_size
        self.tokens += counts["tokens"] * world_size
        self.flops += flops or 0

    def waiting(self) -> contextlib.AbstractContextManager[None]:
        """Count the time spent inside the block as waiting for data."""
        return self._timed("wait_s")

    def excluded(self) -> contextlib.AbstractContextManager[None]:
        """Leave the time spent inside the block out of the rates (evaluation, saving)."""
        return self._timed("excluded_s")

    @contextlib.contextmanager
    def _timed(self, counter: str) -> Iterator[None]:
        """Add the seconds spent inside the block to the attribute `counter`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, counter, getattr(self, counter) + time.perf_counter() - start)

    def report(self) -> dict[str, float]:
        """Rates since the last report; starts a new interval. `train/tflops` is per device
        (this rank's FLOPs), `train/mfu` its percentage of the device's peak."""
        elapsed = max(time.perf_counter() - self.start - self.excluded_s, 1e-9)
        rates = {"train/examples_per_s": self.examples / elapsed,
                 "train/data_wait_frac": min(self.wait_s / elapsed, 1.0)}
        if self.steps:
            rates["train/step_time_s"] = elapsed / self.steps
        if self.tokens:
            rates["train/tokens_per_s"] = self.tokens / elapsed
        if self.flops:
            rates["train/tflops"] = self.flops / elapsed / 1e12
            if self.peak_tflops:
                rates["train/mfu"] = 100 * rates["train/tflops"] / self.peak_tflops
        self.__init__(self.peak_tflops)
        return rates


def natural_key(name: str) -> list:
    """Sort key that orders numbers inside names by value: pass@2 before pass@10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def format_record(metrics: dict[str, float]) -> dict[str, float | str]:
    """Metric values as JSON can hold them (non-finite values as strings)."""
    return {name: _json_number(value) for name, value in metrics.items()}


class LineProgress:
    """The progress bar's stand-in when it would not land on a terminal (a log file, a pipe):
    one plain line per `set_postfix` call, i.e. per `log_interval`, instead of a carriage-return
    redraw several times a second. Same calls as the `tqdm` bar it replaces."""

    def __init__(self, total: int, initial: int):
        self.total, self.n, self.initial = total, initial, initial
        self.start = time.perf_counter()

    def update(self, steps: int = 1) -> None:
        """Count `steps` more steps (silently)."""
        self.n += steps

    def set_postfix(self, fields: dict[str, str], refresh: bool = False) -> None:
        """Print `step N/TOTAL: fields, elapsed and remaining time`."""
        elapsed = time.perf_counter() - self.start
        done = self.n - self.initial
        remaining = elapsed / done * (self.total - self.n) if done else float("nan")
        shown = " ".join(f"{name}={value}" for name, value in fields.items())
        print(f"step {self.n}/{self.total}: {shown} ({_clock(elapsed)} elapsed, {_clock(remaining)} left)", flush=True)

    def close(self) -> None:
        """Nothing to clear (the bar's interface)."""


def _clock(seconds: float) -> str:
    return "?" if not math.isfinite(seconds) else time.strftime("%H:%M:%S", time.gmtime(seconds))


def progress_display(total: int, initial: int, enabled: bool):
    """The training progress: a `tqdm` bar on a terminal, `LineProgress` lines when the bar's
    stream (stderr) is a file or a pipe, nothing where `enabled` is false (ranks other than 0)."""
    if enabled and not sys.stderr.isatty():
        return LineProgress(total, initial)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True)


def progress_fields(metrics: dict[str, float], main_loss: str) -> dict[str, str]:
    """The progress bar's fields: the arch's main loss, lr, and a rate."""
    fields = {}
    if f"train/{main_loss}" in metrics:
        fields["loss"] = f"{metrics[f'train/{main_loss}']:.4f}"
    fields["lr"] = f"{metrics['train/lr']:.2e}"
    rate_key = "train/tokens_per_s" if "train/tokens_per_s" in metrics else "train/examples_per_s"
    fields[rate_key.split("/")[1].replace("_per_s", "/s")] = f"{metrics[rate_key]:.0f}"
    return fields
