"""Show a run's test predictions: ARC puzzles as coloured grids, Sudoku and Maze as text.

    python -m utils.render_predictions checkpoints/PROJECT/RUN --out renders/RUN
    python -m utils.render_predictions RUN/submission.json --data data/arc1concept-aug-1000 --out renders
    python -m utils.render_predictions RUN/predictions/all.json --out renders

ARC (the run folder's `submission.json`, written by the ARC evaluator): one PNG per test
puzzle with its demonstration pairs, then per test input the input, the submitted
attempts and the true output, in the standard ARC colours; each attempt is framed green
(correct) or red (wrong). The puzzles come from the dataset's `test_puzzles.json`
(`--data`, by default the run's first `data_paths`). Needs matplotlib (`.[plot]`).

Sudoku and Maze (`predictions/<set>.json`, written by the opt-in `puzzle_predictions`
evaluator: `evaluators="[{name: puzzle_predictions}]"`): `<set>.txt` with, per puzzle,
the input, the prediction with each wrong cell followed by `*`, and the truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.cli import argument_parser
from core.errors import UserError, run_cli
from dataset.puzzles import maze

ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]
"""ARC's palette: colour 0 black, 1 blue, 2 red, 3 green, 4 yellow, 5 grey, 6 magenta, 7 orange,
8 light blue, 9 maroon."""
CELL_CHARACTERS = {11: ".123456789", len(maze.CHARSET) + 1: maze.CHARSET}
"""Per dataset vocabulary size, the character of token ids 1, 2, ... (0 is padding): Sudoku
(blank, digits) and Maze (wall, open, start, goal, path)."""
RIGHT, WRONG = "#2ECC40", "#FF4136"


def render(source: Path, out: Path, data: Path | None, max_puzzles: int) -> list[Path]:
    """Render what `source` (a run folder, a `submission.json` or a `predictions/<set>.json`)
    holds into `out`; the files written."""
    submission, prediction_files = find_predictions(source)
    out.mkdir(parents=True, exist_ok=True)
    written = [render_text_file(path, out, max_puzzles) for path in prediction_files]
    if submission is not None:
        test_puzzles = load_test_puzzles(data or run_data_path(submission.parent))
        written += render_arc(json.loads(submission.read_text(encoding="utf-8")), test_puzzles, out, max_puzzles)
    return written


def find_predictions(source: Path) -> tuple[Path | None, list[Path]]:
    """(the ARC submission, the Sudoku/Maze prediction files) that `source` names or holds."""
    if source.is_file():
        return (source, []) if source.name == "submission.json" else (None, [source])
    submission = source / "submission.json"
    files = sorted((source / "predictions").glob("*.json")) if (source / "predictions").is_dir() else []
    if not submission.is_file() and not files:
        raise UserError(f"{source} holds no submission.json (ARC evaluator) and no predictions/*.json "
                        "(evaluators=\"[{name: puzzle_predictions}]\"); pass a run folder that has one")
    return (submission if submission.is_file() else None), files


def run_data_path(run_dir: Path) -> Path:
    """The first `data_paths` entry of the run's `config.json`."""
    config = run_dir / "config.json"
    if not config.is_file():
        raise UserError(f"{config} not found; pass the ARC dataset with --data DIR")
    return Path(json.loads(config.read_text(encoding="utf-8"))["data_paths"][0])


def load_test_puzzles(data: Path) -> dict[str, dict]:
    """The dataset's `test_puzzles.json` (demonstration pairs and test inputs with their outputs)."""
    path = data / "test_puzzles.json"
    if not path.is_file():
        raise UserError(f"{path} not found; pass the ARC dataset the run evaluated with --data DIR")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------- ARC pictures


def render_arc(submission: dict, test_puzzles: dict, out: Path, max_puzzles: int) -> list[Path]:
    """One PNG per test puzzle (the first `max_puzzles`, by id); prints how many were solved."""
    plt = _pyplot()
    written, solved = [], 0
    for puzzle_id in sorted(test_puzzles)[:max_puzzles]:
        figure, verdicts = arc_figure(plt, puzzle_id, test_puzzles[puzzle_id], submission.get(puzzle_id, []))
        solved += bool(verdicts) and all(any(row) for row in verdicts)
        written.append(out / f"{puzzle_id}.png")
        figure.savefig(written[-1], dpi=80)
        plt.close(figure)
    print(f"ARC: {len(written)} puzzles drawn to {out}, {solved} solved within the submitted attempts")
    return written


def arc_figure(plt, puzzle_id: str, puzzle: dict, attempts: list[dict]):
    """The figure of one puzzle and, per test input, whether each attempt is right (None: no truth)."""
    attempt_names = sorted({name for entry in attempts for name in entry})
    columns = max(2, len(attempt_names) + 2)
    rows = len(puzzle["train"]) + len(puzzle["test"])
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for row, pair in enumerate(puzzle["train"]):
        draw_grid(axes[row, 0], pair["input"], f"demo {row + 1}: input")
        draw_grid(axes[row, 1], pair["output"], f"demo {row + 1}: output")
    verdicts = []
    for index, pair in enumerate(puzzle["test"]):
        line = axes[len(puzzle["train"]) + index]
        truth = pair.get("output")
        entry = attempts[index] if index < len(attempts) else {}
        draw_grid(line[0], pair["input"], f"test {index + 1}: input")
        verdicts.append([])
        for column, name in enumerate(attempt_names, start=1):
            if name in entry:
                right = None if truth is None else entry[name] == truth
                verdicts[-1].append(right)
                label = "" if right is None else (": correct" if right else ": wrong")
                draw_grid(line[column], entry[name], f"{name.replace('_', ' ')}{label}", right)
        if truth is not None:
            draw_grid(line[len(attempt_names) + 1], truth, f"test {index + 1}: truth")
    status = "solved" if verdicts and all(any(row) for row in verdicts) else "not solved"
    figure.suptitle(f"{puzzle_id}: {status}", color=RIGHT if status == "solved" else WRONG, fontsize=14)
    figure.tight_layout()
    return figure, verdicts


def draw_grid(axis, grid: list[list[int]], title: str, right: bool | None = None) -> None:
    """An ARC grid in the ARC colours with thin cell lines; a green or red frame when `right` is known."""
    from matplotlib.colors import ListedColormap

    axis.axis("on")
    axis.imshow(grid, cmap=ListedColormap(ARC_COLOURS), vmin=0, vmax=9, interpolation="nearest")
    height, width = len(grid), len(grid[0]) if grid else 0
    # Ticks on the cell borders only (matplotlib drops minor ticks that sit on major ones), drawn as lines.
    axis.set_xticks([x - 0.5 for x in range(1, width)])
    axis.set_yticks([y - 0.5 for y in range(1, height)])
    axis.grid(color="#808080", linewidth=1 if max(height, width) <= 12 else 0.3)
    axis.set_axisbelow(False)  # the cell lines over the colours
    axis.tick_params(length=0, labelbottom=False, labelleft=False)
    axis.set_title(f"{title}\n{height}x{width}", fontsize=9,
                   color="black" if right is None else (RIGHT if right else WRONG))
    frame = "#888888" if right is None else (RIGHT if right else WRONG)
    for spine in axis.spines.values():
        spine.set_color(frame)
        spine.set_linewidth(1 if right is None else 4)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("drawing ARC grids needs matplotlib: pip install -e \".[plot]\" (or pip install matplotlib)") from None
    return plt


# ------------------------------------------------------------------------ Sudoku and Maze text


def render_text_file(path: Path, out: Path, max_puzzles: int) -> Path:
    """`<out>/<set>.txt`: each puzzle's input, prediction (wrong cells marked) and truth; prints a summary."""
    content = json.loads(path.read_text(encoding="utf-8"))
    characters = CELL_CHARACTERS.get(content["vocab_size"])
    blocks, exact = [], 0
    for puzzle in content["puzzles"][:max_puzzles]:
        block, wrong = puzzle_text(puzzle, characters)
        blocks.append(block)
        exact += wrong == 0
    target = out / f"{path.stem}.txt"
    target.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    print(f"{path.stem}: {len(blocks)} puzzles written to {target}, {exact} entirely right")
    return target


def puzzle_text(puzzle: dict, characters: str | None) -> tuple[str, int]:
    """(the three grids side by side under a heading, the number of wrong cells)."""
    labels, preds = puzzle["labels"], puzzle["preds"]
    scored = [label >= 0 for label in labels]  # -100: a cell without an answer
    wrong = [ok and pred != label for ok, pred, label in zip(scored, preds, labels)]
    side = math.isqrt(len(labels))
    if side * side != len(labels):
        raise UserError(f"puzzle row {puzzle['row']} has {len(labels)} cells, not a square grid")
    grids = [text_grid(puzzle["inputs"], side, characters), text_grid(preds, side, characters, wrong),
             text_grid(labels, side, characters)]
    width = max(2 * side, len("prediction")) + 2
    heading = f"puzzle {puzzle['row']}: {sum(wrong)} of {sum(scored)} cells wrong (marked *)"
    lines = ["".join(name.ljust(width) for name in ("input", "prediction", "truth")).rstrip()]
    lines += ["".join(part.ljust(width) for part in parts).rstrip() for parts in zip(*grids)]
    return heading + "\n" + "\n".join(lines), sum(wrong)


def text_grid(tokens: list[int], side: int, characters: str | None, wrong: list[bool] | None = None) -> list[str]:
    """Rows of `side` cells, two characters each: the cell's character and `*` when it is wrong."""
    def cell(token: int) -> str:
        if characters is None:
            return str(token)  # a vocabulary this tool does not know: the raw ids
        return characters[token - 1] if 0 < token <= len(characters) else "?"

    marks = wrong or [False] * len(tokens)
    cells = [cell(token) + ("*" if mark else " ") for token, mark in zip(tokens, marks)]
    return ["".join(cells[start : start + side]).rstrip() for start in range(0, side * side, side)]


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("source", type=Path, help="run folder, submission.json or predictions/<set>.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG and text files")
    parser.add_argument("--data", type=Path, help="ARC dataset folder (default: the run's first data_paths)")
    parser.add_argument("--max-puzzles", type=int, default=50, help="puzzles rendered per file")
    args = parser.parse_args()
    if not args.source.exists():
        raise UserError(f"{args.source} not found; pass a run folder, its submission.json or a predictions file")
    render(args.source, args.out, args.data, args.max_puzzles)


if __name__ == "__main__":
    run_cli(main)
