"""Kill a training run and resume it: the resumed losses must equal an uninterrupted run's.

    python -m benchmarks.resume_check --device cuda --compile true       # bert_tiny, 100 steps, compiled
    python -m benchmarks.resume_check --device cpu --tiny                # a 1-layer bert_tiny, 30 steps, eager

What `benchmarks/gpu_check.sh` runs as its step (d), through `pretrain.py` as a user would:
1. a synthetic text corpus (seeded random words) built into an MLM dataset by
   `dataset.text.builder` (the library of `dataset/build_text_mlm_dataset.py`; whitespace tokenizer);
2. `arch=bert_tiny` (dropout on, dynamic masking) for `--steps` steps, uninterrupted;
3. the same run again, killed with SIGKILL once it has written a checkpoint past half
   way, then resumed with `+load_checkpoint=<that checkpoint>` up to `--steps`;
4. the losses of `metrics.jsonl` after the checkpoint compared step by step.
On CPU they must agree to 1e-6 (as `tests/test_kill_resume.py` asks); on CUDA to
`--cuda-rel-tolerance` (relative), since atomic adds in CUDA backward kernels (embedding
gradients) make even two uninterrupted runs differ in their last bits, and those bits grow
over the steps. A resume that loses the data position or the RNG state is off by far more
(a different batch or mask: several percent).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from core.cli import argument_parser
from core.errors import UserError, run_cli

WORDS = ("the a of to and in is was for on with as by at from that this it he she they we you an be are were "
         "has have had not but or which who what when where why how all any some each more most other such no "
         "only own same so than too very can will just should now cat dog tree house river city road car book "
         "paper light water fire earth wind stone green red blue small big old new long short high low").split()
"""The synthetic corpus's words (tokens of the whitespace tokenizer)."""
LOSS_KEY = "train/mlm_loss"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options (defaults: bert_tiny, 100 steps, length 128, batch 32)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    common.add_device_options(parser)
    parser.add_argument("--tiny", action="store_true",
                        help="1 layer, hidden 32, length 32, batch 16, 30 steps: a smoke run for CPUs")
    parser.add_argument("--steps", type=int, default=None, help="steps of each run (100; 30 with --tiny)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the data and runs go (default: a temp folder)")
    parser.add_argument("--cuda-rel-tolerance", type=float, default=2e-3,
                        help="largest relative loss difference accepted on CUDA")
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.tiny else 100)
    if args.steps < 4:
        raise UserError("--steps must be at least 4 (the run is killed past half way)")
    return args


def make_dataset(folder: Path, seq_len: int, num_documents: int) -> Path:
    """A seeded random-word corpus built into an MLM dataset (whitespace tokenizer)."""
    from dataset.text.builder import MLMBuildOptions, build_mlm_dataset

    rng = np.random.default_rng(0)
    lines = []
    for _ in range(num_documents):
        lines += [" ".join(rng.choice(WORDS, size=rng.integers(6, 20))) for _ in range(rng.integers(2, 6))] + [""]
    text = folder / "corpus.txt"
    folder.mkdir(parents=True, exist_ok=True)
    text.write_text("\n".join(lines), encoding="utf-8")
    build_mlm_dataset(MLMBuildOptions(
        input_files=[str(text)], output_dir=str(folder / "mlm"), tokenizer="whitespace", vocab_size=200,
        max_seq_length=seq_len, test_split=0.05, seed=0, overwrite=True,
    ))
    return folder / "mlm"


def overrides(args: argparse.Namespace, data: Path) -> list[str]:
    """pretrain.py's command line for every run (a checkpoint after each epoch of ~12 steps)."""
    size = (["arch.num_layers=1", "arch.hidden_size=32", "arch.num_heads=2", "global_batch_size=16"] if args.tiny
            else ["global_batch_size=32"])
    return ["arch=bert_tiny", *size, f"data_paths=[{data}]", f"device={args.device}", f"compile={args.compile}",
            "epochs=40", "eval_interval=1", f"max_steps={args.steps}", "lr=1e-3", "lr_warmup_steps=5",
            "log_interval=1", "wandb=disabled"]


def pretrain(arguments: list[str], log: Path, wait: bool = True) -> subprocess.Popen:
    """Start `pretrain.py` with its output in `log`; wait for it unless told not to."""
    command = [sys.executable, str(common.REPO / "pretrain.py"), *arguments]
    with open(log, "w", encoding="utf-8") as handle:
        process = subprocess.Popen(command, cwd=common.REPO, stdout=handle, stderr=subprocess.STDOUT)
    if wait and process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed (status {process.returncode}):\n"
                           + log.read_text(encoding="utf-8")[-3000:])
    return process


def kill_past_half(arguments: list[str], run_dir: Path, log: Path, steps: int,
                   timeout: float = 600) -> tuple[Path, int]:
    """Run until a checkpoint past half way exists, SIGKILL it; (the checkpoint to resume
    from, the run's exit status: -9 when killed, 0 when it finished first)."""
    from training.checkpoint import list_checkpoints

    def resumable() -> list[Path]:
        return [path for path in list_checkpoints(run_dir) if steps // 2 <= int(path.name.removeprefix("step_")) < steps]

    process = pretrain(arguments, log, wait=False)
    deadline = time.monotonic() + timeout
    while not resumable() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    status = process.wait()
    found = resumable()
    if not found:
        raise RuntimeError(f"the run wrote no checkpoint between step {steps // 2} and {steps} (status {status}):\n"
                           + log.read_text(encoding="utf-8")[-3000:])
    print(f"  exit status {status}; resuming from {found[-1].name}", flush=True)
    return found[-1], status


def losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from a run's metrics.jsonl."""
    from training.metrics import read_metrics

    return {record["step"]: record[LOSS_KEY] for record in read_metrics(run_dir) if LOSS_KEY in record}


def main(argv: list[str] | None = None) -> None:
    """Straight run, killed run, resume; compare; record; exit 1 on a mismatch."""
    args = parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="resume-check-"))
    started = time.monotonic()
    data = make_dataset(work / "data", 32 if args.tiny else 128, 80 if args.tiny else 400)  # ~10-12 steps per epoch
    shared = overrides(args, data)
    pretrain([*shared, f"+checkpoint_path={work / 'straight'}"], work / "straight.log")
    straight = losses(work / "straight")
    print(f"  uninterrupted: {len(straight)} steps ({time.monotonic() - started:.0f} s so far)", flush=True)
    checkpoint, status = kill_past_half([*shared, f"+checkpoint_path={work / 'killed'}"], work / "killed", work / "killed.log",
                                args.steps)
    pretrain([*shared, f"+checkpoint_path={work / 'killed'}", f"+load_checkpoint={checkpoint}"], work / "resumed.log")
    resume_step = int(checkpoint.name.removeprefix("step_"))
    resumed = {step: loss for step, loss in losses(work / "killed").items() if step > resume_step}
    expected_steps = list(range(resume_step + 1, args.steps + 1))
    cuda = args.device == "cuda"
    differences = {step: abs(resumed[step] - straight[step]) / (abs(straight[step]) if cuda else 1.0)
                   for step in expected_steps if step in resumed and step in straight}
    tolerance = args.cuda_rel_tolerance if cuda else 1e-6
    worst = max(differences.values(), default=float("nan"))
    passed = sorted(resumed) == expected_steps and len(differences) == len(expected_steps) and worst <= tolerance
    shown = sorted(differences) if len(differences) <= 6 else sorted(differences)[:3] + sorted(differences)[-3:]
    rows = [[str(step), f"{straight[step]:.6f}", f"{resumed[step]:.6f}", f"{differences[step]:.1e}"] for step in shown]
    table = common.format_table(["step", "uninterrupted loss", "resumed loss", "relative difference" if cuda
                                 else "absolute difference"], rows)
    verdict = "PASS" if passed else "FAIL"
    how = "after SIGKILL" if status == -signal.SIGKILL else f"(the run finished, status {status}, before the kill)"
    notes = [f"{verdict}: resumed from step {resume_step} {how}; steps compared: {len(differences)} of "
             f"{len(expected_steps)} (resumed run logged {len(resumed)}); largest difference {worst:.2e}, "
             f"tolerance {tolerance:.0e} ({'relative, CUDA' if cuda else 'absolute, CPU'})",
             f"arch=bert_tiny{' (1 layer, hidden 32)' if args.tiny else ''}, {args.steps} steps, device {args.device}, "
             f"compile={args.compile}, dropout 0.1, {time.monotonic() - started:.0f} s for the three runs; "
             f"work folder {work}"]
    figures = {"passed": passed, "resume_step": resume_step, "max_difference": worst, "tolerance": tolerance}
    common.record(args, f"resume_check: bert_tiny on {args.device}, compile={args.compile}", table, notes,
                  {"resume": figures})
    print(json.dumps(figures), flush=True)
    if not passed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
