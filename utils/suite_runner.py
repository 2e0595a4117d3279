"""Running a suite's planned runs: each one an ordinary `pretrain.py` process, several at
once, resumable, never two in one run folder.

- **Order**: longest first (estimated cost: training rows x epochs + dev rows). With
  several slots this is the longest-processing-time rule: the big tasks (MNLI, QQP) start
  at once and the small ones fill the gaps at the end, so no slot idles while one long run
  finishes last; the makespan is within 4/3 of the best order (Graham 1969).
- **Slots**: on CPU each run gets its share of the cores (`cpu_threads`); with GPUs each
  slot is one GPU (`CUDA_VISIBLE_DEVICES`), several slots per GPU when `--parallel`
  exceeds the GPUs. `--processes-per-run N` starts each run with torchrun (N ranks, N GPUs).
- **Resume**: a run whose folder has `result.json` is finished and skipped; any other starts
  with `resume=auto`, so an interrupted one continues from its newest checkpoint. Each run
  holds a lock (`<run folder>.lock`) that its process inherits: a run left behind by a
  killed suite keeps its folder until it exits (it is sent SIGTERM, saves and stops), and a
  rerun waits for it instead of writing beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.files import write_json
from dataset.tasks.catalog import TaskSpec
from evaluators.benchmark_score import task_score
from training.checkpoint import find_latest, list_checkpoints
from training.metrics import read_metrics

PRETRAIN = Path(__file__).resolve().parents[1] / "pretrain.py"
RESULT = "result.json"


@dataclass
class PlannedRun:
    """One (task, learning rate, seed) fine-tuning run."""

    spec: TaskSpec
    lr: float
    seed: int
    data_dir: Path
    run_dir: Path
    cost: int
    """Estimated work, for ordering: training rows x epochs + evaluation rows."""
    from_mnli: bool = False
    overrides: list[str] = field(default_factory=list)
    """Everything `pretrain.py` gets, but the slot's device settings."""

    @property
    def name(self) -> str:
        """`<task>[-from-mnli]-lr<lr>-seed<seed>`: unique in a suite."""
        return f"{self.run_dir.parent.name}-{self.run_dir.name}"

    @property
    def lock_path(self) -> Path:
        return self.run_dir.parent / f".{self.run_dir.name}.lock"

    def result(self) -> dict | None:
        """The finished run's record, or None."""
        path = self.run_dir / RESULT
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def finished(run_dir: Path) -> bool:
    """Whether the newest checkpoint of `run_dir` is at the run's last step."""
    latest = find_latest(run_dir)
    if latest is None:
        return False
    state = json.loads((latest / "train_state.json").read_text(encoding="utf-8"))
    max_steps = json.loads((latest / "config.json").read_text(encoding="utf-8")).get("max_steps")
    last = state["total_steps"] if max_steps is None else min(state["total_steps"], max_steps)
    return state["step"] >= last


def record_result(run: PlannedRun, seconds: float) -> dict:
    """Read the final evaluation of a finished run and write its `result.json`."""
    records = [record for record in read_metrics(run.run_dir) if all(key in record for key in run.spec.metrics)]
    if not records:
        raise RuntimeError(f"{run.run_dir}/metrics.jsonl holds no evaluation with {', '.join(run.spec.metrics)}")
    final = records[-1]
    scale = 100.0 if run.spec.percent else 1.0
    metrics = {key: float(final[key]) * scale for key in run.spec.metrics}
    result = {"task": run.spec.name, "lr": run.lr, "seed": run.seed, "from_mnli": run.from_mnli, "step": final["step"],
              "metrics": metrics, "score": task_score(list(metrics.values())), "seconds": round(seconds, 1),
              "run_dir": str(run.run_dir)}
    write_json(run.run_dir / RESULT, result)
    return result


def delete_checkpoints(run_dir: Path) -> None:
    """Remove every `step_N` folder of a finished run (metrics, predictions and result stay)."""
    for checkpoint in list_checkpoints(run_dir):
        shutil.rmtree(checkpoint)


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on `path` (created if missing), or None
    while another process holds it. The lock lives as long as the descriptor, in whichever
    processes inherit it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the suite dies, even by SIGKILL (Linux), so an orphaned
    run checkpoints and stops instead of training on unseen."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Slot:
    """Where one run at a time executes: its launcher, environment and extra overrides."""

    launcher: list[str]
    """`python`, or `python -m torch.distributed.run ...` for several processes per run."""
    env: dict[str, str]
    overrides: list[str]


def make_slots(parallel: int, gpus: int, cores: int, processes: int = 1) -> list[Slot]:
    """`parallel` slots of `processes` ranks each (torchrun when more than one): on a GPU
    machine one GPU per rank (round robin, so slots share GPUs when there are too few),
    else an equal share of the cores per rank."""
    launcher = [sys.executable]
    if processes > 1:  # --standalone: each run its own rendezvous on a free port
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    slots = []
    for index in range(parallel):
        if gpus:
            devices = ",".join(str((index * processes + rank) % gpus) for rank in range(processes))
            slots.append(Slot(launcher, {"CUDA_VISIBLE_DEVICES": devices}, ["device=cuda"]))
        else:
            threads = max(1, cores // (parallel * processes))
            slots.append(Slot(launcher, {"OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""},
                              ["device=cpu", f"cpu_threads={threads}"]))
    return slots


@dataclass
class Active:
    """A run in progress."""

    run: PlannedRun
    process: subprocess.Popen
    slot: int
    started: float
    log: object


class Scheduler:
    """Runs planned runs on slots, longest first, honouring `ready` (dependencies)."""

    def __init__(self, runs: list[PlannedRun], slots: list[Slot], log_dir: Path, on_finish: Callable,
                 ready: Callable = lambda run: True, prepare: Callable = lambda run: None):
        """`on_finish(run, seconds)` records a finished run; `ready(run)` says whether its
        dependencies are done; `prepare(run)` sets its last overrides just before it starts."""
        self.pending = sorted(runs, key=lambda run: -run.cost)
        self.slots, self.log_dir, self.on_finish, self.ready, self.prepare = slots, log_dir, on_finish, ready, prepare
        self.active: dict[int, Active] = {}
        self.failed: list[tuple[PlannedRun, str]] = []
        self.stop_signal: int | None = None
        self.waiting_noted: set[str] = set()
        self._locks: dict[str, int] = {}

    def run(self) -> None:
        """Until every run has finished or failed, or a signal stops the suite."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while (self.pending and self.stop_signal is None) or self.active:
                self._start_free_slots()
                self._reap()
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, signum, frame) -> None:
        self.stop_signal = signum
        for active in self.active.values():  # an interactive Ctrl-C reaches them already; a kill does not
            with contextlib.suppress(ProcessLookupError):
                active.process.send_signal(signal.SIGTERM)

    def _start_free_slots(self) -> None:
        for slot in range(len(self.slots)):
            if slot in self.active or self.stop_signal is not None:
                continue
            run = next((run for run in self.pending if self.ready(run) and self._lock(run) is not None), None)
            if run is None:
                self._fail_blocked()
                return
            self.pending.remove(run)
            self._launch(run, slot, self._locks.pop(run.name))

    def _fail_blocked(self) -> None:
        """With nothing running, runs that are still not ready never will be (their MNLI start failed)."""
        if self.active or any(self.ready(run) for run in self.pending):
            return
        for run in self.pending:
            self.failed.append((run, "not run: the MNLI runs it starts from did not finish"))
            print(f"FAILED {run.name}: the MNLI runs it starts from did not finish", flush=True)
        self.pending = []

    def _lock(self, run: PlannedRun) -> int | None:
        """Take the run's lock (kept in `self._locks`), or None while a process still holds it."""
        run.run_dir.parent.mkdir(parents=True, exist_ok=True)
        descriptor = try_lock(run.lock_path)
        if descriptor is None:
            if run.name not in self.waiting_noted:
                self.waiting_noted.add(run.name)
                print(f"waiting: {run.run_dir} is still used by a process of an earlier suite", flush=True)
            return None
        self._locks[run.name] = descriptor
        return descriptor

    def _launch(self, run: PlannedRun, slot: int, lock: int) -> None:
        self.prepare(run)
        log = open(self.log_dir / f"{run.name}.log", "a", encoding="utf-8")
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(run.overrides)}\n")
        log.flush()
        command = [*self.slots[slot].launcher, str(PRETRAIN), *run.overrides, *self.slots[slot].overrides]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, pass_fds=(lock,),
                                   env={**os.environ, **self.slots[slot].env}, preexec_fn=_die_with_parent)
        os.close(lock)  # the child holds the lock now, for as long as it lives
        print(f"start  {run.name} (slot {slot})", flush=True)
        self.active[slot] = Active(run, process, slot, time.monotonic(), log)

    def _reap(self) -> None:
        for slot, active in list(self.active.items()):
            code = active.process.poll()
            if code is None:
                continue
            del self.active[slot]
            active.log.close()
            seconds = time.monotonic() - active.started
            if self.stop_signal is not None and not finished(active.run.run_dir):
                print(f"stopped {active.run.name}: rerun the suite to resume it", flush=True)
            elif code == 0 and finished(active.run.run_dir):
                try:
                    self.on_finish(active.run, seconds)
                except RuntimeError as error:  # a run that finished without its final evaluation
                    self.failed.append((active.run, str(error)))
                    print(f"FAILED {active.run.name}: {error}", flush=True)
            else:
                reason = _last_line(self.log_dir / f"{active.run.name}.log") if code else "ended before its last step"
                self.failed.append((active.run, reason))
                print(f"FAILED {active.run.name} (exit {code}): {reason}", flush=True)


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
