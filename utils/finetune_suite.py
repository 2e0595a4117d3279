"""Fine-tune and score a starting point on GLUE (and SQuAD, CoNLL-2003): one resumable command.

    python -m utils.finetune_suite --init-from checkpoints/wiki-mlm-bert/demo --glue-dir data/glue \
        --output-dir results/demo-glue
    python -m utils.finetune_suite --init-from-hf $MINILM --glue-dir data/glue --tasks rte mrpc stsb \
        --seeds 0 1 2 3 4 --parallel 2 --output-dir results/minilm
    # the same command again after a stop: finished runs are skipped, interrupted ones resume

Each task's dataset is built once with the starting point's tokenizer; each (task, learning
rate, seed) is one ordinary `pretrain.py` run (`arch=bert_cls`/`bert_ner`/`bert_qa`,
`+init_from`/`+init_from_hf`, `resume=auto`) in its own folder under `<output-dir>/runs/`,
scored on dev with the task's official metrics. The table (`results.md`, `results.json`)
gives per task the learning rate with the best median dev score over seeds, the median and
its spread, every run, and the GLUE score by GLUE's rule (`evaluators/benchmark_score.py`).
Defaults are the BERT paper's fine-tuning recipe: lr 2e-5, 3e-5, 5e-5, batch 32, 3 epochs,
length 128 (SQuAD 384), warm-up 10%; three seeds where the paper ran one.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from core.cli import argument_parser
from core.errors import UserError, run_cli
from core.files import write_json, write_text
from dataset.tasks.catalog import TASKS
from dataset.tasks.format import read_task_metadata
from utils.suite_mnli import MnliStarts
from utils.suite_plan import StartingPoint, build_dataset, check_tasks, default_tasks, pin_settings, resolve_start
from utils.suite_runner import PlannedRun, Scheduler, delete_checkpoints, make_slots, record_result, try_lock
from utils.suite_table import log_wandb_table, markdown, summarize


@dataclass(frozen=True)
class SuiteOptions:
    """Everything the suite is asked to do (the command line, typed)."""

    output_dir: str
    init_from: str | None = None
    init_from_hf: str | None = None
    tokenizer: str | None = None
    glue_dir: str | None = None
    squad_dir: str | None = None
    conll_dir: str | None = None
    tasks: tuple[str, ...] = ()
    lrs: tuple[float, ...] = (2e-5, 3e-5, 5e-5)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 3
    batch_size: int = 32
    max_seq_length: int = 128
    squad_max_seq_length: int = 384
    parallel: int = 1
    processes_per_run: int = 1
    device: str = "auto"
    from_mnli: bool = False
    keep_checkpoints: bool = False
    wandb: str = "auto"
    wandb_project: str = "finetune_suite"
    overrides: tuple[str, ...] = ()


def parse_args(argv: list[str] | None = None) -> SuiteOptions:
    """The command-line options (see `--help`)."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    start = parser.add_argument_group("starting point (one of)")
    start.add_argument("--init-from", help="a run folder (its newest checkpoint) or step_N folder of pretrain.py")
    start.add_argument("--init-from-hf", help="a transformers BERT folder")
    start.add_argument("--tokenizer", help="default: the starting point's; another must hold the same vocabulary")
    parser.add_argument("--output-dir", required=True, help="the suite's folder: datasets, runs, table (reuse it to resume)")
    parser.add_argument("--glue-dir", help="GLUE folder: CoLA/ SST-2/ MRPC/ STS-B/ QQP/ MNLI/ QNLI/ RTE/ WNLI/")
    parser.add_argument("--squad-dir", help="folder with train-v1.1.json + dev-v1.1.json (or v2.0)")
    parser.add_argument("--conll-dir", help="folder with CoNLL-2003 train.txt + valid.txt (or eng.train + eng.testa)")
    parser.add_argument("--tasks", nargs="+", default=[], help=f"of {', '.join(TASKS)} (default: all given folders hold)")
    parser.add_argument("--lrs", nargs="+", type=float, default=[2e-5, 3e-5, 5e-5], help="learning-rate grid")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per learning rate")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per row (GLUE, CoNLL)")
    parser.add_argument("--squad-max-seq-length", type=int, default=384, help="tokens per SQuAD window (stride 128)")
    parser.add_argument("--parallel", type=int, default=None,
                        help="runs at once (default: one per GPU, 1 on CPU); on CPU each gets cores/parallel threads")
    parser.add_argument("--processes-per-run", type=int, default=1,
                        help="ranks per run, started with torchrun (one GPU each on a GPU machine)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--from-mnli", action="store_true",
                        help="also fine-tune RTE, MRPC and STS-B from the MNLI model (best lr, same seed)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints of finished runs")
    parser.add_argument("--wandb", choices=("auto", "online", "offline", "disabled"), default="auto")
    parser.add_argument("--wandb-project", default="finetune_suite")
    parser.add_argument("--overrides", nargs="+", default=[], help="extra pretrain.py overrides for every run")
    args = parser.parse_args(argv)
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in vars(args).items()}
    values["parallel"] = values["parallel"] or 0  # 0: decided from the devices
    return SuiteOptions(**values)


def check_options(options: SuiteOptions) -> None:
    """Reject values that cannot work, naming the option to change."""
    positive = {"--epochs": options.epochs, "--batch-size": options.batch_size,
                "--processes-per-run": options.processes_per_run}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if options.parallel < 0:
        raise UserError(f"--parallel must be at least 1, got {options.parallel}")
    if any(lr <= 0 for lr in options.lrs) or len(set(options.lrs)) != len(options.lrs):
        raise UserError(f"--lrs must be distinct positive numbers, got {' '.join(map(str, options.lrs))}")
    if len(set(options.seeds)) != len(options.seeds):
        raise UserError(f"--seeds names a seed twice: {' '.join(map(str, options.seeds))}")
    bad = [item for item in options.overrides if "=" not in item]
    if bad:
        raise UserError(f"--overrides takes key=value pretrain.py overrides, got {bad[0]!r}")


@contextlib.contextmanager
def suite_lock(out: Path):
    """Hold `<out>/.suite.lock`: one suite per output folder at a time."""
    out.mkdir(parents=True, exist_ok=True)
    descriptor = try_lock(out / ".suite.lock")
    if descriptor is None:
        raise UserError(f"another finetune_suite is running in {out}; wait for it or choose another --output-dir")
    try:
        yield
    finally:
        os.close(descriptor)


def run_overrides(options: SuiteOptions, run: PlannedRun, start_override: str) -> list[str]:
    """The `pretrain.py` overrides of one run (the slot adds its device settings)."""
    return [f"arch={run.spec.arch}", f"data_paths=[{run.data_dir}]", start_override, f"lr={run.lr}", f"seed={run.seed}",
            f"epochs={options.epochs}", f"global_batch_size={options.batch_size}", f"+checkpoint_path={run.run_dir}",
            f"+project_name={options.wandb_project}", f"+run_name={run.name}", "resume=auto", f"wandb={options.wandb}",
            *options.overrides]


def plan_runs(options: SuiteOptions, datasets: dict[str, Path], out: Path, start_override: str) -> list[PlannedRun]:
    """One run per (task, lr, seed), and per (RTE/MRPC/STS-B, lr, seed) from MNLI with --from-mnli."""
    runs = []
    for name, data_dir in datasets.items():
        metadata = read_task_metadata(data_dir)
        cost = metadata.num_rows["train"] * options.epochs + sum(metadata.num_rows[s] for s in metadata.eval_sets)
        variants = [False, True] if options.from_mnli and name in MnliStarts.TASKS else [False]
        for from_mnli in variants:
            for lr in options.lrs:
                for seed in options.seeds:
                    folder = out / "runs" / (f"{name}-from-mnli" if from_mnli else name) / f"lr{lr:g}-seed{seed}"
                    run = PlannedRun(TASKS[name], lr, seed, data_dir, folder, cost, from_mnli)
                    run.overrides = run_overrides(options, run, start_override)
                    runs.append(run)
    return runs


def device_slots(options: SuiteOptions):
    """The run slots: one per GPU (or per --processes-per-run GPUs, or --parallel of them
    over the GPUs), else --parallel CPU shares."""
    gpus = 0
    if options.device != "cpu":
        import torch

        gpus = torch.cuda.device_count()
        if options.device == "cuda" and not gpus:
            raise UserError("--device cuda, but no GPU is visible; use --device cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parallel = options.parallel or max(1, gpus // options.processes_per_run)
    return make_slots(parallel, gpus, cores, options.processes_per_run)


def validate(options: SuiteOptions) -> tuple[list[str], list, StartingPoint]:
    """Check the options, the task folders and the starting point before anything is written."""
    check_options(options)
    names = list(options.tasks) or default_tasks(options.glue_dir, options.squad_dir, options.conll_dir)
    if not names:
        raise UserError("no tasks: pass --glue-dir (and/or --squad-dir, --conll-dir), optionally --tasks")
    checked = check_tasks(names, options.glue_dir, options.squad_dir, options.conll_dir)
    if options.from_mnli and "mnli" not in names:
        raise UserError("--from-mnli starts RTE, MRPC and STS-B from the MNLI model: add mnli to --tasks")
    return names, checked, resolve_start(options.init_from, options.init_from_hf, options.tokenizer)


def prepare(options: SuiteOptions, out: Path, names: list[str], checked: list,
            start: StartingPoint) -> tuple[dict, dict[str, Path]]:
    """Pin the settings in the output folder and build the datasets: (settings, task -> dataset folder)."""
    settings = {"start": start.override, "vocab_sha256": start.vocab_sha256, "epochs": options.epochs,
                "batch_size": options.batch_size, "max_seq_length": options.max_seq_length,
                "squad_max_seq_length": options.squad_max_seq_length, "overrides": list(options.overrides)}
    pin_settings(out, settings)
    datasets = {}
    for spec, files in checked:
        length = options.squad_max_seq_length if spec.name == "squad" else options.max_seq_length
        datasets[spec.name] = build_dataset(spec, files, start, length, out)
    settings = {**settings, "tasks": names, "lrs": list(options.lrs), "seeds": list(options.seeds),
                "from_mnli": options.from_mnli}
    return settings, datasets


def run_suite(options: SuiteOptions) -> dict:
    """Prepare, run what is not finished, write the table; returns the summary."""
    names, checked, start = validate(options)
    out = Path(options.output_dir).resolve()
    with suite_lock(out):
        settings, datasets = prepare(options, out, names, checked, start)
        runs = plan_runs(options, datasets, out, start.override)
        mnli = MnliStarts(out, [run for run in runs if run.spec.name == "mnli"], options.from_mnli,
                          options.keep_checkpoints)
        mnli.check_available([run for run in runs if run.from_mnli])
        todo = [run for run in runs if run.result() is None]
        print(f"{len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to run", flush=True)
        (out / "logs").mkdir(exist_ok=True)

        def on_finish(run: PlannedRun, seconds: float) -> None:
            mnli.save_start(run)  # before result.json: a finished MNLI run always has its start
            result = record_result(run, seconds)
            if not options.keep_checkpoints:
                delete_checkpoints(run.run_dir)
            print(f"done   {run.name}: score {result['score']:.2f}", flush=True)

        scheduler = Scheduler(todo, device_slots(options), out / "logs", on_finish, ready=mnli.ready,
                              prepare=mnli.point_at_start)
        scheduler.run()
        return finish(options, out, settings, runs, scheduler, mnli)


def finish(options: SuiteOptions, out: Path, settings: dict, runs: list[PlannedRun], scheduler: Scheduler,
           mnli: MnliStarts) -> dict:
    """Write the table of every finished run; report failures and stops with a non-zero exit."""
    results = [result for run in runs if (result := run.result()) is not None]
    failed = [f"{run.name}: {reason} (log: {out / 'logs' / (run.name + '.log')})" for run, reason in scheduler.failed]
    summary = summarize(list(settings["tasks"]), results, settings) if results else {"settings": settings}
    if results:
        write_json(out / "results.json", {**summary, "failed": failed})
        table = markdown(summary, failed)
        write_text(out / "results.md", table)
        print(table, flush=True)
        log_wandb_table(summary, options.wandb, out, options.wandb_project)
    if scheduler.stop_signal is not None:
        print(f"stopped: {len(results)} of {len(runs)} runs finished; rerun the same command to resume", flush=True)
        raise SystemExit(128 + scheduler.stop_signal)
    if failed:
        print(f"{len(failed)} run(s) failed: {failed[0]}; rerun the same command to retry them", flush=True)
        raise SystemExit(1)
    mnli.clean_up()
    return summary


def main(argv: list[str] | None = None) -> None:
    """Parse the options and run the suite."""
    run_suite(parse_args(argv))


if __name__ == "__main__":
    run_cli(main)

