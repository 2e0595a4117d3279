"""TRM learning check: test exact accuracy over training, at equal steps, over seeds.

    python -m benchmarks.trm_learning                          # 3 seeds, 3000 steps, eval every 250
    python -m benchmarks.trm_learning --seeds 0 --steps 500    # a quick look
    python -m benchmarks.trm_learning --data DIR --public FILE # another dataset; compare with a curve file

The setup (issue "A learning check for TRM over seeds"): 9x9 Sudoku with exactly 5 blank
cells (76 givens), 3,000 training and 300 test puzzles, one example per puzzle, puzzle
identifier 0, no augmentation; TRM with hidden 64, 2 heads, expansion 4, L_layers 2,
H_cycles 2, L_cycles 2, halt_max_steps 4, exploration 0.1, RoPE, a 64-wide puzzle
embedding over 16 prefix positions, float32; global batch 64, 3,000 optimiser steps
(epochs=64), Adam-atan2 lr 1e-3, betas (0.9, 0.95), weight decay 0.1, 100 warm-up steps
then constant, puzzle-embedding sign-SGD lr 1e-3 / wd 0.1, no EMA.

Each seed runs `pretrain.py` as a user would, in segments of `--eval-every` steps: a run
stopped by `max_steps` evaluates on the test split and saves, and the next segment
resumes it exactly, so the curve is the test exact accuracy every 250 steps of one run.
Segments already in `--workdir` are not run again, so seeds can be trained by separate
invocations (in parallel) and a last one collects them.
`--public FILE` adds another loop's curves (JSON: {"seeds": {"0": {"evals": [{"step": N,
"test_exact_accuracy": A}, ...]}}}) to the table, e.g. the public TRM code run outside
this repository on the same data.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import common
from core.cli import argument_parser
from core.errors import UserError, run_cli

CONFIG = [
    "arch=trm", "arch.hidden_size=64", "arch.num_heads=2", "arch.expansion=4", "arch.L_layers=2", "arch.H_cycles=2",
    "arch.L_cycles=2", "arch.halt_max_steps=4", "arch.halt_exploration_prob=0.1", "arch.pos_encodings=rope",
    "arch.puzzle_emb_ndim=64", "arch.puzzle_emb_len=16", "arch.forward_dtype=float32", "global_batch_size=64",
    "epochs=64", "eval_interval=null", "lr=1e-3", "beta1=0.9", "beta2=0.95", "weight_decay=0.1",
    "lr_warmup_steps=100", "lr_min_ratio=1.0", "puzzle_emb_lr=1e-3", "puzzle_emb_weight_decay=0.1", "ema=false",
    "evaluators=[]", "wandb=disabled", "log_interval=50", "checkpoint_every_eval=true",
]
"""The issue's configuration, as pretrain.py overrides."""
REPORTED_STEPS = (1000, 2000, 3000)
NUM_BLANKS = 5


def make_dataset(folder: Path, num_train: int = 3000, num_test: int = 300, seed: int = 0) -> Path:
    """The 5-blank Sudoku set in the puzzle format (unique solutions checked)."""
    from core.files import atomic_folder, write_json
    from dataset.puzzles import sudoku
    from dataset.puzzles.format import write_single_example_split
    from dataset.stream import seeded_rng

    if (folder / "test" / "dataset.json").is_file():
        return folder
    with atomic_folder(folder, overwrite=True) as output:
        for split, count, key in (("train", num_train, 1), ("test", num_test, 2)):
            puzzles, solutions = [], []
            for index in range(count):
                rng = seeded_rng(seed, key, index)
                solution = sudoku.random_solution(rng)
                while True:
                    puzzle = list(solution)
                    for cell in rng.choice(81, size=NUM_BLANKS, replace=False):
                        puzzle[int(cell)] = 0
                    if sudoku.count_solutions(puzzle, 2) == 1:
                        break
                puzzles.append(puzzle)
                solutions.append(solution)
            # Digits 0..9 -> tokens 1..10 (0 stays padding), as the Sudoku builder writes them.
            inputs = np.asarray(puzzles, dtype=np.int32) + 1
            labels = np.asarray(solutions, dtype=np.int32) + 1
            write_single_example_split(output / split, inputs, labels, puzzles_per_group=1, vocab_size=11)
        write_json(output / "identifiers.json", ["<blank>"])
    return folder


def run_seed(data: Path, seed: int, steps: int, eval_every: int, workdir: Path, threads: int) -> dict[int, dict]:
    """{step: test metrics} of one seed, one segment per evaluation."""
    run_dir = workdir / f"seed{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(common.REPO)}
    for stop in range(eval_every, steps + 1, eval_every):
        if (run_dir / f"step_{stop}").is_dir():
            continue  # done by an earlier invocation: the benchmark resumes where it stopped
        resume = [f"+load_checkpoint={run_dir}"] if stop > eval_every else [f"+checkpoint_path={run_dir}"]
        command = [sys.executable, str(common.REPO / "pretrain.py"), *CONFIG, f"data_paths=[{data}]", f"seed={seed}",
                   f"max_steps={stop}", *resume]
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"seed {seed} segment to step {stop} failed:\n{done.stderr[-3000:]}")
        print(f"  seed {seed}: step {stop} done", flush=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r for r in records if "all/exact_accuracy" in r}


def public_curves(path: Path) -> dict[int, dict[int, float]]:
    """seed -> {step: test exact accuracy} from a curve file (see the module docstring)."""
    loaded = json.loads(path.read_text())
    return {int(seed): {e["step"]: e["test_exact_accuracy"] for e in run["evals"]}
            for seed, run in loaded["seeds"].items()}


def summary_rows(name: str, curves: dict[int, dict[int, float]]) -> list[list[str]]:
    """One row per seed and a mean/spread row, at the reported steps."""
    rows = []
    for seed, curve in sorted(curves.items()):
        rows.append([name, str(seed), *[_cell(curve.get(step)) for step in REPORTED_STEPS]])
    cells = []
    for step in REPORTED_STEPS:
        values = [curve[step] for curve in curves.values() if step in curve]
        cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "-")
    rows.append([name, "mean (min-max)", *cells])
    return rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    """Train every seed, print and record the table."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to train")
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps (the issue's 3000 = epochs 64)")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between test evaluations")
    parser.add_argument("--data", type=Path, help="puzzle dataset folder (default: the 5-blank set, built once)")
    parser.add_argument("--public", type=Path, help="another loop's curves (JSON) to show beside these")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run")
    parser.add_argument("--workdir", type=Path, default=common.CACHE_DIR / "trm_learning", help="run folders")
    common.add_no_record_option(parser)
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        raise UserError(f"--steps ({args.steps}) must be a multiple of --eval-every ({args.eval_every})")
    data = args.data or make_dataset(common.CACHE_DIR / "sudoku-5blank")
    args.workdir.mkdir(parents=True, exist_ok=True)
    ours = {}
    for seed in args.seeds:
        evaluations = run_seed(data.resolve(), seed, args.steps, args.eval_every, args.workdir, args.threads)
        ours[seed] = {step: record["all/exact_accuracy"] for step, record in evaluations.items()}
        print(f"seed {seed}: " + ", ".join(f"{step}: {value:.3f}" for step, value in sorted(ours[seed].items())))
    rows = summary_rows("this project", ours)
    if args.public:
        rows += summary_rows("public code", public_curves(args.public))
    table = common.format_table(["loop", "seed", *[f"test exact acc. @ {s}" for s in REPORTED_STEPS]], rows)
    curves = "; ".join(f"seed {seed}: " + " ".join(f"{value:.3f}" for _, value in sorted(curve.items()))
                       for seed, curve in sorted(ours.items()))
    notes = [f"data {data}; every {args.eval_every} steps, this project's test exact accuracy: {curves}",
             f"{args.threads} torch thread(s) per run; runs resumed every {args.eval_every} steps (exact resume)"]
    common.print_or_record(args, "trm_learning: TRM test exact accuracy over seeds", table, notes)


if __name__ == "__main__":
    run_cli(main)
