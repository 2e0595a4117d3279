"""The dashboard of a run: throughput, TFLOP/s and MFU, memory, data wait, step time, epoch
and tokens seen in `metrics.jsonl` (and wandb), the environment in the run's config, the
banner saved with the run; the device peak table and the memory readers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.batching import BatchLayout
from dataset.kinds import get_data_kind
from models.registry import get_arch
from pretrain import launch
from tests.helpers import REPO, THREE_STEP_RUNS, TINY_BERT, compose_config, make_mlm_dataset
from training import environment
from training.environment import git_state, memory_metrics, peak_tflops
from training.metrics import ThroughputMeter, read_metrics

BATCH = 8
PEAK = 0.5  # TFLOP/s, configured: a CPU has no entry in the table


class FakeWandb:
    """Stands in for the wandb package: records what a run hands it."""

    def __init__(self) -> None:
        self.config: dict | None = None
        self.saved: list[str] = []
        self.logged: list[dict] = []

    def init(self, **kwargs):
        self.config = kwargs["config"]
        return SimpleNamespace(log=lambda metrics, step: self.logged.append({"step": step, **metrics}),
                               save=lambda path, **_: self.saved.append(path), finish=lambda: None)


def run(data: Path, run_dir: Path, *extra: str) -> list[dict]:
    overrides = TINY_BERT + [f"data_paths=[{data}]", f"global_batch_size={BATCH}", "epochs=4", "lr=1e-3",
                             "log_interval=2", f"+checkpoint_path={run_dir}", *extra]
    launch(compose_config(overrides))
    return [record for record in read_metrics(run_dir) if "train/lr" in record]


def counted_batches(data: Path, run_dir: Path, num_steps: int) -> tuple[list[int], list[int], float]:
    """Real tokens and FLOPs of the first `num_steps` training batches, read again from the
    stream the run read (same data options and seed), and the examples in one epoch."""
    config = json.loads((run_dir / "config.json").read_text())
    kind = get_data_kind("mlm")
    options = kind.options_class.model_validate(config["data"])
    stream = kind.train_stream([str(data)], options, config["seed"], BatchLayout.of(BATCH))
    plugin = get_arch("bert")
    model = plugin.build(plugin.config_class.model_validate(config["arch"]), kind.load_metadata([str(data)]))
    batches = [stream.next_batch() for _ in range(num_steps)]
    return ([plugin.count_batch(batch)["tokens"] for batch in batches],
            [plugin.train_flops(model, batch) for batch in batches], stream.examples_per_epoch)


def test_a_cpu_run_logs_the_dashboard_and_its_environment(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    data = make_mlm_dataset(tmp_path / "data")
    records = run(data, tmp_path / "run", "max_steps=6", f"peak_tflops={PEAK}", "wandb=offline")
    tokens, flops, examples_per_epoch = counted_batches(data, tmp_path / "run", 6)
    assert [record["step"] for record in records] == [2, 4, 6]
    for record in records:
        step = record["step"]
        assert 0.0 <= record["train/data_wait_frac"] <= 1.0
        assert record["train/tokens_seen"] == sum(tokens[:step])
        assert record["train/epoch"] == pytest.approx(step * BATCH / examples_per_epoch)
        # TFLOP/s x the interval's time = the formula's FLOPs of its two batches.
        interval_s = 2 * record["train/step_time_s"]
        assert record["train/tflops"] * 1e12 * interval_s == pytest.approx(sum(flops[step - 2 : step]), rel=1e-6)
        assert record["train/mfu"] == pytest.approx(100 * record["train/tflops"] / PEAK)
        assert 0.05 < record["train/memory_peak_rss_gib"] < 64
    assert {key for key in fake.logged[0] if key.startswith("train/")} >= {"train/tflops", "train/mfu",
                                                                            "train/tokens_seen", "train/epoch"}
    saved = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert fake.config["environment"] == saved
    assert fake.config["global_batch_size"] == BATCH and fake.config["arch"]["name"] == "bert"
    assert saved["torch"] == torch.__version__ and saved["cuda"] == torch.version.cuda
    assert (saved["device"], saved["device_count"], saved["world_size"]) == ("cpu", 1, 1)
    if shutil.which("git") and (REPO / ".git").exists():
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert saved["git_commit"] == head.stdout.strip() and isinstance(saved["git_dirty"], bool)
    banner = (tmp_path / "run" / "banner.txt").read_text()
    assert banner.startswith("run ") and f"environment: torch {torch.__version__}" in banner
    assert fake.saved == [str(tmp_path / "run" / "banner.txt")]


def test_tokens_seen_continue_exactly_after_a_resume(tmp_path):
    data = make_mlm_dataset(tmp_path / "data")
    straight = run(data, tmp_path / "straight", "max_steps=6")
    run(data, tmp_path / "cut", "max_steps=4")
    resumed = run(data, tmp_path / "cut", "max_steps=6", f"+load_checkpoint={tmp_path / 'cut'}")
    assert [record["train/tokens_seen"] for record in resumed] == [record["train/tokens_seen"] for record in straight]
    assert "train/mfu" not in straight[-1] and straight[-1]["train/tflops"] > 0  # no peak is known for a CPU
    banner = (tmp_path / "cut" / "banner.txt").read_text()
    assert banner.count("environment: ") == 2 and "resumed from step_4" in banner


def test_trm_logs_the_flops_of_its_recursion_and_no_token_count(tmp_path):
    make_data, overrides, _ = THREE_STEP_RUNS["trm"]
    data = make_data(tmp_path / "data")  # 48 puzzles, batches of 16: 3 steps per epoch
    launch(compose_config(overrides + [f"data_paths=[{data}]", f"+checkpoint_path={tmp_path / 'run'}"]))
    records = [record for record in read_metrics(tmp_path / "run") if "train/lr" in record]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    plugin = get_arch("trm")
    metadata = get_data_kind("puzzle").load_metadata([str(data)])
    model = plugin.build(plugin.config_class.model_validate(config["arch"]), metadata)
    step_flops = plugin.train_flops(model, {"inputs": np.zeros((16, metadata.seq_len))})
    assert [record["step"] for record in records] == [1, 2, 3]
    for record in records:
        assert record["train/tflops"] * 1e12 * record["train/step_time_s"] == pytest.approx(step_flops, rel=1e-6)
        assert record["train/epoch"] == pytest.approx(record["step"] / 3)
        assert "train/tokens_seen" not in record and "train/mfu" not in record


def test_the_meter_splits_the_interval_into_waiting_and_computing(monkeypatch):
    clock = iter([0.0, 1.0, 4.0, 10.0, 10.0])  # start, wait begins, wait ends, report, restart
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    meter = ThroughputMeter(peak_tflops=2.0)
    with meter.waiting():
        pass
    meter.add({"examples": 4, "tokens": 30}, world_size=2, flops=5e12)
    meter.add({"examples": 4, "tokens": 10}, world_size=2, flops=5e12)
    rates = meter.report()
    assert rates["train/data_wait_frac"] == pytest.approx(0.3)
    assert rates["train/step_time_s"] == pytest.approx(5.0)
    assert rates["train/tokens_per_s"] == pytest.approx(80 / 10)
    assert rates["train/tflops"] == pytest.approx(1.0)  # per device: this rank's FLOPs
    assert rates["train/mfu"] == pytest.approx(50.0)


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA GH200 480GB", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0), ("NVIDIA B200", 2250.0),
    ("Tesla T4", None),
])
def test_the_peak_comes_from_the_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    assert peak_tflops(torch.device("cuda", 0), None) == peak
    assert peak_tflops(torch.device("cuda", 0), 100.0) == 100.0


def test_no_peak_on_cpu_unless_configured():
    assert peak_tflops(torch.device("cpu"), None) is None
    assert peak_tflops(torch.device("cpu"), 1.5) == 1.5


def test_cuda_memory_reads_the_peaks_then_resets_them(monkeypatch):
    stats = {"allocated_bytes.all.peak": 3 * 2**30, "reserved_bytes.all.peak": 4 * 2**30,
             "num_alloc_retries": 2, "num_ooms": 1}
    resets = []
    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device: stats)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", resets.append)
    device = torch.device("cuda", 0)
    assert memory_metrics(device) == {"train/memory_max_allocated_gib": 3.0, "train/memory_max_reserved_gib": 4.0,
                                      "train/memory_alloc_retries": 2.0, "train/memory_ooms": 1.0}
    assert resets == [device]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's own figure")
def test_cpu_memory_is_the_peak_rss():
    """The kernel's high-water mark of the resident set (VmHWM), in GiB."""
    block = np.ones(32 * 2**20 // 8)  # 32 MiB, touched
    reported = memory_metrics(torch.device("cpu"))["train/memory_peak_rss_gib"]
    status = Path("/proc/self/status").read_text()
    high_water_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    assert block.sum() > 0 and reported == pytest.approx(high_water_kib / 2**20, rel=0.01)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_names_the_commit_and_uncommitted_changes(tmp_path):
    assert git_state(tmp_path) == (None, None)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("one")
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == (commit, False)
    (tmp_path / "a.txt").write_text("two")
    assert git_state(tmp_path) == (commit, True)
    assert environment.describe_environment(
        {**environment.run_environment(torch.device("cpu"), 1), "git_commit": commit, "git_dirty": True}
    ).endswith(f"git {commit[:10]} with uncommitted changes")
