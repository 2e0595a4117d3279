"""Wall time of the fine-tuning suite with `--parallel 2` against `--parallel 1` (same runs):

    python -m benchmarks.suite_parallel                       # tiny BERT, nine generated GLUE tasks
    python -m benchmarks.suite_parallel --rounds 2 --train 256

One tiny BERT is pretrained (a few steps, a synthetic corpus, `benchmarks/.cache`), a GLUE
folder is generated (`benchmarks.glue_data`), then `python -m utils.finetune_suite` runs the
nine tasks (one lr, one seed) from scratch into a fresh output folder, alternately with
`--parallel 1` (each run gets all the cores as `cpu_threads`) and `--parallel 2` (half
each), round by round (A B, B A, ...). Reported: the suite's wall time per contender
(median over rounds), the ratio, and the sum of the runs' own wall times (`seconds` in
`results.json`), which shows how much each run slowed down when sharing the machine, and
the CPU time (user + system) the suite and its runs used.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.glue_data import WORDS, write_glue_folder
from core.cli import argument_parser
from core.errors import run_cli


def pretrained(root: Path) -> Path:
    """A tiny BERT (1 layer, hidden 32) pretrained for 5 steps on a synthetic corpus."""
    run_dir = root / "pre"
    if run_dir.is_dir():
        return run_dir
    rng = np.random.default_rng(0)
    text = root / "corpus.txt"
    root.mkdir(parents=True, exist_ok=True)
    text.write_text("\n\n".join(" ".join(rng.choice(WORDS, size=12)) for _ in range(400)) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "dataset/build_text_mlm_dataset.py", "--input-files", str(text), "--output-dir",
                    str(root / "mlm"), "--tokenizer", "whitespace", "--vocab-size", "40", "--max-seq-length", "32"],
                   cwd=common.REPO, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "pretrain.py", "arch=bert_tiny", "arch.num_layers=1", "arch.hidden_size=32",
                    "arch.num_heads=2", f"data_paths=[{root / 'mlm'}]", "global_batch_size=16", "max_steps=5",
                    "lr_warmup_steps=2", "wandb=disabled", f"+checkpoint_path={run_dir}"],
                   cwd=common.REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return run_dir


def time_suite(start: Path, glue: Path, out: Path, parallel: int, batch_size: int) -> dict:
    """One suite from scratch: its wall time and the sum of its runs' wall times."""
    command = [sys.executable, "-m", "utils.finetune_suite", "--init-from", str(start), "--glue-dir", str(glue),
               "--output-dir", str(out), "--lrs", "1e-3", "--seeds", "0", "--epochs", "1", "--batch-size",
               str(batch_size), "--max-seq-length", "32", "--wandb", "disabled", "--parallel", str(parallel)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(command, cwd=common.REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    runs = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    return {"wall": wall, "cpu": cpu, "runs": sum(run["seconds"] for run in runs), "count": len(runs)}


def main(argv: list[str] | None = None) -> None:
    """Alternate the two contenders, then report medians and the ratio."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="suites per contender")
    parser.add_argument("--train", type=int, default=256, help="training lines per task")
    parser.add_argument("--dev", type=int, default=64, help="dev lines per task")
    parser.add_argument("--batch-size", type=int, default=16)
    common.add_output_options(parser)
    args = parser.parse_args(argv)
    start = pretrained(common.CACHE_DIR / "suite_parallel")
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        glue = write_glue_folder(Path(folder) / "glue", args.train, args.dev)
        for round_index in range(args.rounds):
            for parallel in ((1, 2) if round_index % 2 == 0 else (2, 1)):
                out = Path(folder) / f"out-{parallel}-{round_index}"
                results[parallel].append(time_suite(start, glue, out, parallel, args.batch_size))
                print(f"round {round_index}, --parallel {parallel}: {results[parallel][-1]['wall']:.1f} s", flush=True)
    walls = {p: common.median_of(results[p], "wall") for p in results}
    sums = {p: common.median_of(results[p], "runs") for p in results}
    cpus = {p: common.median_of(results[p], "cpu") for p in results}
    table = common.format_table(
        ["figure", "--parallel 1", "--parallel 2", "ratio (2 / 1)"],
        [["suite wall time (s), median", f"{walls[1]:.1f}", f"{walls[2]:.1f}", f"{walls[2] / walls[1]:.2f}"],
         ["sum of the runs' own wall times (s)", f"{sums[1]:.1f}", f"{sums[2]:.1f}", f"{sums[2] / sums[1]:.2f}"],
         ["CPU time of the suite and its runs (s)", f"{cpus[1]:.1f}", f"{cpus[2]:.1f}", f"{cpus[2] / cpus[1]:.2f}"],
         ["per round (s)", " / ".join(f"{r['wall']:.1f}" for r in results[1]),
          " / ".join(f"{r['wall']:.1f}" for r in results[2]), ""]])
    notes = [f"{results[1][0]['count']} runs per suite (nine GLUE tasks, 1 lr, 1 seed), {args.train} training and "
             f"{args.dev} dev lines per task, batch {args.batch_size}, 1 epoch, tiny BERT (1 layer x 32)."]
    common.record(args, "suite_parallel: finetune_suite --parallel 2 vs 1", table, notes,
                  {f"parallel_{p}": {"wall": walls[p]} for p in walls})


if __name__ == "__main__":
    run_cli(main)
