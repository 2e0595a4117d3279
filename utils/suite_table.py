"""The suite's table: per task the learning rate with the best median dev score over seeds
(as the BERT paper chose on dev), that median and its spread, the GLUE score by GLUE's
rule (`evaluators.benchmark_score`), and every run; as Markdown, JSON and a wandb table."""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np

from dataset.tasks.catalog import GLUE_TASKS, TASKS
from evaluators.benchmark_score import glue_score, seed_summary
from training.metrics import MetricsLogger


def summarize_task(results: list[dict]) -> dict:
    """One task (one variant): per learning rate the seeds' summary, and the best learning rate."""
    by_lr: dict[float, list[dict]] = defaultdict(list)
    for result in results:
        by_lr[result["lr"]].append(result)
    per_lr = {}
    for lr, runs in sorted(by_lr.items()):
        runs.sort(key=lambda run: run["seed"])
        keys = runs[0]["metrics"]
        per_lr[lr] = {"seeds": [run["seed"] for run in runs], "score": seed_summary([run["score"] for run in runs]),
                      "metrics": {key: float(np.median([run["metrics"][key] for run in runs])) for key in keys}}
    # Ties go to the smaller learning rate (the order of the sort above).
    best = max(per_lr, key=lambda lr: per_lr[lr]["score"]["median"])
    first = results[0]
    return {"task": first["task"], "title": TASKS[first["task"]].title, "from_mnli": first["from_mnli"],
            "best_lr": best, "num_seeds": len(per_lr[best]["seeds"]), "score": per_lr[best]["score"],
            "metrics": per_lr[best]["metrics"], "per_lr": {f"{lr:g}": value for lr, value in per_lr.items()}}


def summarize(task_order: list[str], results: list[dict], settings: dict) -> dict:
    """The whole table: tasks in `task_order` (plain, then from MNLI), GLUE score, every run."""
    tasks = []
    for name in task_order:
        for from_mnli in (False, True):
            rows = [r for r in results if r["task"] == name and r["from_mnli"] == from_mnli]
            if rows:
                tasks.append(summarize_task(rows))
    # A task run both ways counts from MNLI when the suite was asked for that recipe.
    scores = {}
    for task in tasks:
        if task["task"] not in scores or task["from_mnli"] == settings.get("from_mnli", False):
            scores[task["task"]] = task["score"]["median"]
    glue = {name: scores[name] for name in GLUE_TASKS if name in scores}
    complete = glue_score(glue)
    without_wnli = None if complete is None else float(np.mean([glue[name] for name in GLUE_TASKS if name != "wnli"]))
    return {"settings": settings, "glue_score": complete, "glue_without_wnli": without_wnli,
            "glue_tasks_mean": float(np.mean(list(glue.values()))) if glue else None, "glue_tasks_scored": list(glue),
            "tasks": tasks, "runs": sorted(results, key=lambda r: (r["task"], r["from_mnli"], r["lr"], r["seed"]))}


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{key.removeprefix('dev/')} {value:.2f}" for key, value in metrics.items())


def markdown(summary: dict, failed: list[str]) -> str:
    """The table as Markdown."""
    settings = summary["settings"]
    lines = [f"# Fine-tuning suite: {settings['start']}", "",
             f"lr grid {settings['lrs']}, seeds {settings['seeds']}, batch {settings['batch_size']}, "
             f"{settings['epochs']} epochs, length {settings['max_seq_length']}"
             + (f", extra overrides {' '.join(settings['overrides'])}" if settings["overrides"] else ""), "",
             "| task | best lr | seeds | score (median) | spread (min to max) | metrics at best lr (median over seeds) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for task in summary["tasks"]:
        score = task["score"]
        title = task["title"] + (" (from MNLI)" if task["from_mnli"] else "")
        lines.append(f"| {title} | {task['best_lr']:g} | {task['num_seeds']} | {score['median']:.2f} | "
                     f"{score['spread']:.2f} ({score['min']:.2f} to {score['max']:.2f}) | {_metrics_text(task['metrics'])} |")
    lines.append("")
    if summary["glue_score"] is not None:
        lines.append(f"**GLUE score: {summary['glue_score']:.2f}** (GLUE's rule: the mean of the nine task scores, "
                     "WNLI included; MRPC, QQP and STS-B score the mean of their two metrics, MNLI the mean of m and "
                     f"mm{'; RTE, MRPC and STS-B count from MNLI' if settings.get('from_mnli') else ''}). "
                     f"Without WNLI: {summary['glue_without_wnli']:.2f}.")
    elif summary["glue_tasks_scored"]:
        lines.append(f"Mean of the {len(summary['glue_tasks_scored'])} GLUE tasks scored: "
                     f"{summary['glue_tasks_mean']:.2f} (not the GLUE score, which needs all nine).")
    lines += ["", "## Every run", "", "| run | score | metrics | seconds |", "| --- | --- | --- | --- |"]
    for run in summary["runs"]:
        name = f"{run['task']}{' from MNLI' if run['from_mnli'] else ''} lr {run['lr']:g} seed {run['seed']}"
        lines.append(f"| {name} | {run['score']:.2f} | {_metrics_text(run['metrics'])} | {run['seconds']} |")
    if failed:
        lines += ["", "## Failed runs (rerun the suite to retry them)", "", *[f"- {line}" for line in failed]]
    return "\n".join(lines) + "\n"


def log_wandb_table(summary: dict, mode: str, out: Path, project: str) -> None:
    """The task table as a wandb Table in a run of its own, `<out>/table-run` (nothing when
    wandb is off or not installed: training runs behave the same)."""
    if mode == "disabled" or importlib.util.find_spec("wandb") is None:
        if mode not in ("auto", "disabled"):
            print(f"note: --wandb {mode} but the wandb package is not installed (pip install wandb); the table is in "
                  f"{out}/results.md")
        return
    logger = MetricsLogger(out / "table-run", mode, project, f"{out.name}-table", summary["settings"])
    if summary["glue_score"] is not None:
        logger.log(0, {"glue_score": summary["glue_score"]})
    if logger.wandb_run is not None:
        import wandb

        columns = ["task", "from_mnli", "best_lr", "seeds", "median", "min", "max", "metrics"]
        rows = [[t["title"], t["from_mnli"], t["best_lr"], t["num_seeds"], t["score"]["median"], t["score"]["min"],
                 t["score"]["max"], _metrics_text(t["metrics"])] for t in summary["tasks"]]
        logger.wandb_run.log({"finetune_suite": wandb.Table(columns=columns, data=rows)})
    logger.close()
