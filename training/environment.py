"""The machine a run trains on: what it is (saved with the run), how fast its device can
go at best (the denominator of MFU), and how much memory the run holds.

- `run_environment`: git commit and dirty flag, Python, torch and CUDA versions, device
  name and count, world size; the run's `environment.json`, its wandb config and a banner
  line (`describe_environment`).
- `peak_tflops`: dense bf16 peak of one device, from `PEAK_BF16_TFLOPS` by device name,
  or the `peak_tflops` config key.
- `memory_metrics`: peak CUDA memory since the last call (allocated and reserved), the
  allocator's retries and out-of-memory errors; the peak RSS of the process on CPU.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The checkout the code runs from (whose git commit a run records)."""

GIB = 2**30

PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),     # NVIDIA GH200 Grace Hopper datasheet: BF16 1,979 TFLOPS with sparsity
    ("H100 PCIe", 756.0),  # NVIDIA H100 datasheet, PCIe: BF16 1,513 TFLOPS with sparsity
    ("H100 NVL", 835.0),  # NVIDIA H100 datasheet, NVL: BF16 1,671 TFLOPS with sparsity
    ("H100", 989.0),      # NVIDIA H100 datasheet, SXM: BF16 1,979 TFLOPS with sparsity
    ("H200 NVL", 835.0),  # NVIDIA H200 datasheet, NVL: BF16 1,671 TFLOPS with sparsity
    ("H200", 989.0),      # NVIDIA H200 datasheet, SXM: BF16 1,979 TFLOPS with sparsity
    ("B200", 2250.0),     # NVIDIA HGX B200 datasheet: FP16/BF16 36 PFLOPS with sparsity for 8 GPUs
    ("A100", 312.0),      # NVIDIA A100 datasheet (SXM and PCIe): BF16 624 TFLOPS with sparsity
    ("L40S", 362.0),      # NVIDIA L40S datasheet: BF16 733 TFLOPS with sparsity
    ("L40", 181.0),       # NVIDIA L40 datasheet: BF16 362 TFLOPS with sparsity
    ("L4", 121.0),        # NVIDIA L4 datasheet: BF16 242 TFLOPS with sparsity
)  # fmt: skip
"""Dense (no 2:4 sparsity) bf16 tensor-core peak of one GPU, TFLOP/s, by a piece of its
`torch.cuda.get_device_name`; the first match wins, so the more specific names come first.
The datasheets quote the sparse figure; dense is half of it."""


def peak_tflops(device: torch.device, configured: float | None) -> float | None:
    """One device's peak TFLOP/s: `configured` when set, else the table's bf16 peak for a
    known GPU; None (no MFU) on CPU or an unknown GPU."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.upper() in name), None)


def run_environment(device: torch.device, world_size: int) -> dict[str, Any]:
    """What a run ran on and with, for its `environment.json` and wandb config."""
    commit, dirty = git_state(PROJECT_ROOT)
    cuda = device.type == "cuda"
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu_threads": torch.get_num_threads(),
        "world_size": world_size,
        "platform": platform.platform(),
    }


def describe_environment(environment: dict[str, Any]) -> str:
    """One banner line of `run_environment`'s record."""
    if environment["device"].startswith("cuda"):
        device = f"{environment['device_count']} x {environment['device_name']}, CUDA {environment['cuda']}"
    else:
        device = f"CPU {environment['device_name']}, {environment['cpu_threads']} thread(s)"
    commit = environment["git_commit"]
    code = "not a git checkout" if commit is None else f"git {commit[:10]}" + (
        " with uncommitted changes" if environment["git_dirty"] else "")
    return f"environment: torch {environment['torch']}, {device}, world size {environment['world_size']}, {code}"


def git_state(folder: Path) -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it) of the git checkout at `folder`;
    (None, None) when it is not one or git is not installed."""
    try:
        commit = _git(folder, "rev-parse", "HEAD")
        changes = _git(folder, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(changes)


def _git(folder: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True)
    return result.stdout.strip()


def _cpu_name() -> str:
    """The CPU model (Linux's /proc/cpuinfo), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Memory of this process: on CUDA, the peaks since the previous call (which resets them)
    and the allocator's cumulative retries and out-of-memory errors; on CPU, the peak
    resident set size since the process started."""
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        metrics = {
            "train/memory_max_allocated_gib": stats.get("allocated_bytes.all.peak", 0) / GIB,
            "train/memory_max_reserved_gib": stats.get("reserved_bytes.all.peak", 0) / GIB,
            "train/memory_alloc_retries": float(stats.get("num_alloc_retries", 0)),
            "train/memory_ooms": float(stats.get("num_ooms", 0)),
        }
        torch.cuda.reset_peak_memory_stats(device)
        return metrics
    peak = _peak_rss_bytes()
    return {} if peak is None else {"train/memory_peak_rss_gib": peak / GIB}


def _peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
