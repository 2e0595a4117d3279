"""Draw a run's metric curves to a PNG, for people without a wandb dashboard.

    python -m utils.plot_metrics checkpoints/PROJECT/RUN                 # -> RUN/metrics.png
    python -m utils.plot_metrics RUN_DIR --metrics train/lm_loss all/exact_accuracy --output curves.png

Reads `<run>/metrics.jsonl`. By default: the architecture's main loss in training and on
every evaluation set in one panel, then the learning rate, the gradient norm and the
throughput (tokens/s, or examples/s when a model counts no tokens), and the evaluation
accuracies when there are any. `--metrics` draws one panel per named metric instead.
The x axis counts optimiser steps; when the run logged `train/tokens_seen`, a second
axis on top counts the tokens seen. Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.cli import argument_parser
from core.errors import ConfigError, UserError, run_cli
from training.metrics import read_metrics

TOKENS_SEEN = "train/tokens_seen"
"""The cumulative count of training tokens, when the run logs it: the top x axis."""
SCORE_WORDS = ("accuracy", "pass@", "f1", "exact_match", "mcc", "pearson", "spearman")
"""Evaluation metrics drawn together in the default "evaluation" panel."""


def logged_names(records: list[dict]) -> list[str]:
    """Every numeric metric in the records, in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                names.setdefault(key, None)
    return list(names)


def main_loss(run_dir: Path, names: list[str]) -> str:
    """The loss the architecture optimises (its plugin's `main_loss`, read from the run's
    `config.json`); without a config, the first training loss logged."""
    config = run_dir / "config.json"
    if config.is_file():
        from models.registry import get_arch

        try:
            return get_arch(json.loads(config.read_text(encoding="utf-8"))["arch"]["name"]).main_loss
        except (KeyError, ConfigError):
            pass  # an architecture this checkout does not know: fall back to the logged names
    losses = [name.split("/", 1)[1] for name in names if name.startswith("train/") and name.endswith("loss")]
    return losses[0] if losses else "loss"


def default_panels(run_dir: Path, records: list[dict]) -> list[tuple[str, list[str]]]:
    """(title, metric names) of each default panel that has values."""
    names = logged_names(records)
    loss = main_loss(run_dir, names)
    evaluation = [name for name in names if not name.startswith("train/")]
    throughput = "train/tokens_per_s" if "train/tokens_per_s" in names else "train/examples_per_s"
    panels = [
        (loss, [name for name in names if name.split("/", 1)[-1] == loss]),
        ("learning rate", ["train/lr"]),
        ("gradient norm", ["train/grad_norm"]),
        (throughput.split("/")[1].replace("_per_s", " per second"), [throughput]),
        ("evaluation", [name for name in evaluation if any(word in name for word in SCORE_WORDS)]),
    ]
    return [(title, [name for name in panel if name in names]) for title, panel in panels
            if any(name in names for name in panel)]


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


def draw(axis, name: str, steps: list[int], values: list[float], last_step: int, label: str | None = None) -> None:
    """One metric's curve; the x axis always spans the whole run (step 0 to the last logged)."""
    axis.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
    axis.set_title(name)
    axis.set_xlabel("step")
    axis.set_ylabel(y_label(name))
    axis.set_xlim(0, max(last_step, 1) * 1.02)
    axis.grid(alpha=0.3)


def draw_panel(axis, title: str, names: list[str], records: list[dict], last_step: int) -> None:
    """Every metric of `names` on one axis, with a legend when there are several."""
    for name in names:
        draw(axis, title, *series(records, name), last_step, label=name)
    if len(names) > 1:
        axis.legend(fontsize="small")
    else:
        axis.set_ylabel(y_label(names[0]))
    if names and names[0] == "train/lr":
        from matplotlib.ticker import FormatStrFormatter

        axis.yaxis.set_major_formatter(FormatStrFormatter("%.1e"))  # no "1e-3" offset above the axis
        axis.set_ylim(bottom=0)  # from zero: warm-up and decay read as fractions of the peak, a constant lr as flat


def add_tokens_axis(axis, records: list[dict]) -> None:
    """A top x axis in tokens seen, mapped from steps through the logged `train/tokens_seen`
    (nothing before the first step; past the last record, the last interval's rate)."""
    import numpy as np
    from matplotlib.ticker import EngFormatter

    steps, tokens = series(records, TOKENS_SEEN)
    steps, tokens = [0, *steps], [0.0, *tokens]
    rate = (tokens[-1] - tokens[-2]) / max(steps[-1] - steps[-2], 1)
    steps, tokens = [*steps, 10 * steps[-1]], [*tokens, tokens[-1] + rate * 9 * steps[-1]]
    top = axis.secondary_xaxis("top", functions=(lambda x: np.interp(x, steps, tokens),
                                                 lambda t: np.interp(t, tokens, steps)))
    top.xaxis.set_major_formatter(EngFormatter())
    top.set_xlabel("tokens seen")


def plot(run_dir: Path, names: list[str] | None, output: Path) -> Path:
    """Write the PNG and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install -e \".[plot]\" (or pip install matplotlib)") from None
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir}/metrics.jsonl not found; pass a run folder (checkpoints/<project>/<run>)")
    records = read_metrics(run_dir)
    panels = [(name, [name]) for name in names] if names else default_panels(run_dir, records)
    unknown = [name for _, panel in panels for name in panel if not series(records, name)[0]]
    if unknown or not panels:
        known = ", ".join(logged_names(records)) or "none"
        raise UserError(f"no values for {', '.join(unknown) or 'any metric'} in {run_dir}/metrics.jsonl; logged: {known}")
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    last_step = max(record["step"] for record in records)
    for axis, (title, panel) in zip(axes.flat, panels):
        draw_panel(axis, title, panel, records, last_step)
        if series(records, TOKENS_SEEN)[0]:
            add_tokens_axis(axis, records)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("run_dir", type=Path, help="run folder holding metrics.jsonl")
    parser.add_argument("--metrics", nargs="+",
                        help="metric names, one panel each (default: loss, lr, grad norm, throughput, evaluation)")
    parser.add_argument("--output", type=Path, help="PNG path (default: <run_dir>/metrics.png)")
    args = parser.parse_args()
    output = plot(args.run_dir, args.metrics, args.output or args.run_dir / "metrics.png")
    print(f"wrote {output}")


if __name__ == "__main__":
    run_cli(main)
