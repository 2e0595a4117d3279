"""Draw a run's metric curves to a PNG, for people without a wandb dashboard.

    python -m utils.plot_metrics checkpoints/PROJECT/RUN                 # -> RUN/metrics.png
    python -m utils.plot_metrics RUN_DIR --metrics train/lm_loss all/exact_accuracy --output curves.png

Reads `<run>/metrics.jsonl`; by default plots every loss and accuracy it finds, one
panel per metric. Needs matplotlib (`pip install matplotlib`).
"""

from __future__ import annotations

from pathlib import Path

from core.cli import argument_parser
from core.errors import UserError, run_cli
from training.metrics import read_metrics


def default_metrics(records: list[dict]) -> list[str]:
    """Every logged loss, accuracy and perplexity, in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, (int, float)) and any(word in key for word in ("loss", "accuracy", "perplexity", "pass@")):
                names.setdefault(key, None)
    return list(names)


def series(records: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; records without it are skipped."""
    points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
    return [step for step, _ in points], [value for _, value in points]


def y_label(name: str) -> str:
    """What a metric's values are: its own name, with the unit when it has one."""
    kind = name.split("/")[-1]
    if "accuracy" in kind or "pass@" in kind:
        return f"{kind} (fraction)"
    if kind.endswith("_per_s"):
        return kind.replace("_per_s", " per second")
    return kind


def draw(axis, name: str, steps: list[int], values: list[float], last_step: int) -> None:
    """One metric's curve; the x axis always spans the whole run (step 0 to the last logged)."""
    axis.plot(steps, values, marker="." if len(steps) < 30 else None)
    axis.set_title(name)
    axis.set_xlabel("step")
    axis.set_ylabel(y_label(name))
    axis.set_xlim(0, max(last_step, 1) * 1.02)
    axis.grid(alpha=0.3)


def plot(run_dir: Path, names: list[str] | None, output: Path) -> Path:
    """Write the PNG and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir}/metrics.jsonl not found; pass a run folder (checkpoints/<project>/<run>)")
    records = read_metrics(run_dir)
    names = names or default_metrics(records)
    unknown = [name for name in names if not series(records, name)[0]]
    if unknown or not names:
        known = ", ".join(default_metrics(records)) or "none"
        raise UserError(f"no values for {unknown or 'any metric'} in {run_dir}/metrics.jsonl; logged: {known}")
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.5 * rows), squeeze=False)
    last_step = max(record["step"] for record in records)
    for axis, name in zip(axes.flat, names):
        draw(axis, name, *series(records, name), last_step)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder holding metrics.jsonl")
    parser.add_argument("--metrics", nargs="+", help="metric names (default: losses and accuracies)")
    parser.add_argument("--output", type=Path, help="PNG path (default: <run_dir>/metrics.png)")
    args = parser.parse_args()
    output = plot(args.run_dir, args.metrics, args.output or args.run_dir / "metrics.png")
    print(f"wrote {output}")


if __name__ == "__main__":
    run_cli(main)
