"""Pictures: metric curves (`utils.plot_metrics`) and rendered predictions
(`utils.render_predictions`), on tiny hand-made runs."""

from __future__ import annotations

import json
import math

import pytest

from core.errors import UserError
from utils import plot_metrics


def write_run(run_dir, with_tokens: bool = True) -> None:
    """A TRM run of 40 steps: training records every 10 steps, evaluations at 20 and 40."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"arch": {"name": "trm"}}))
    lines = []
    for step in (10, 20, 30, 40):
        record = {"step": step, "time": 1000.0 + step, "train/lm_loss": 2.0 / math.sqrt(step),
                  "train/q_halt_loss": 0.1, "train/lr": 1e-3 * min(1.0, step / 20), "train/grad_norm": 5.0 / step,
                  "train/tokens_per_s": 900.0 + step, "train/examples_per_s": 11.0}
        if with_tokens:
            record["train/tokens_seen"] = 1024 * step
        lines.append(record)
        if step % 20 == 0:
            lines.append({"step": step, "time": 1001.0 + step, "all/lm_loss": 2.2 / math.sqrt(step),
                          "all/accuracy": step / 50, "all/exact_accuracy": step / 100, "all/q_halt_loss": 0.2})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_default_panels_put_train_and_eval_loss_together(tmp_path):
    write_run(tmp_path / "run")
    records = plot_metrics.read_metrics(tmp_path / "run")
    assert plot_metrics.default_panels(tmp_path / "run", records) == [
        ("lm_loss", ["train/lm_loss", "all/lm_loss"]),  # the plugin's main loss, not q_halt_loss
        ("learning rate", ["train/lr"]),
        ("gradient norm", ["train/grad_norm"]),
        ("tokens per second", ["train/tokens_per_s"]),
        ("evaluation", ["all/accuracy", "all/exact_accuracy"]),
    ]


def test_the_png_has_a_panel_per_default_group_and_a_tokens_axis(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import pyplot

    write_run(tmp_path / "run")
    figures = []
    original = pyplot.subplots
    pyplot_subplots = lambda *args, **kwargs: figures.append(original(*args, **kwargs)) or figures[-1]  # noqa: E731
    pyplot.subplots = pyplot_subplots
    try:
        output = plot_metrics.plot(tmp_path / "run", None, tmp_path / "curves.png")
    finally:
        pyplot.subplots = original
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure, axes = figures[0]
    loss_axis = axes.flat[0]
    assert [line.get_label() for line in loss_axis.get_lines()] == ["train/lm_loss", "all/lm_loss"]
    assert list(loss_axis.get_lines()[1].get_xdata()) == [20, 40]
    top = [child for child in loss_axis.child_axes if child.get_xlabel() == "tokens seen"]
    assert len(top) == 1  # the secondary x axis, steps -> tokens through train/tokens_seen
    assert sum(axis.axison for axis in axes.flat) == 5


def test_the_tokens_axis_appears_only_when_tokens_are_logged(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    write_run(tmp_path / "run", with_tokens=False)
    records = plot_metrics.read_metrics(tmp_path / "run")
    axis = Figure().add_subplot()
    plot_metrics.draw_panel(axis, "lm_loss", ["train/lm_loss"], records, 40)
    assert not plot_metrics.series(records, plot_metrics.TOKENS_SEEN)[0] and not axis.child_axes
    plot_metrics.plot(tmp_path / "run", None, tmp_path / "curves.png")  # still draws


def test_a_wrong_metric_name_lists_every_logged_key(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "run")
    with pytest.raises(UserError) as error:
        plot_metrics.plot(tmp_path / "run", ["train/lm_los"], tmp_path / "curves.png")
    message = str(error.value)
    assert message.startswith("no values for train/lm_los in ")
    logged = message.split("logged: ")[1].split(", ")
    assert logged == ["train/lm_loss", "train/q_halt_loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                      "train/examples_per_s", "train/tokens_seen", "all/lm_loss", "all/accuracy",
                      "all/exact_accuracy", "all/q_halt_loss"]


# --------------------------------------------------------------------- rendered predictions

ARC_PUZZLES = {
    "flip": {"train": [{"input": [[1, 0], [0, 2]], "output": [[0, 1], [2, 0]]},
                       {"input": [[3, 3, 0]], "output": [[0, 3, 3]]}],
             "test": [{"input": [[4, 0, 9]], "output": [[9, 0, 4]]}]},
    "fill": {"train": [{"input": [[0, 0], [0, 0]], "output": [[5, 5], [5, 5]]}],
             "test": [{"input": [[0]], "output": [[5]]}, {"input": [[0, 0]], "output": [[5, 5]]}]},
}
SUBMISSION = {
    "flip": [{"attempt_1": [[4, 0, 9]], "attempt_2": [[9, 0, 4]]}],  # right at the second attempt
    "fill": [{"attempt_1": [[5]], "attempt_2": [[0]]}, {"attempt_1": [[5, 0]], "attempt_2": [[0]]}],  # one of two
}


def write_arc_run(tmp_path):
    data, run = tmp_path / "arc-data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    (data / "test_puzzles.json").write_text(json.dumps(ARC_PUZZLES))
    (run / "config.json").write_text(json.dumps({"data_paths": [str(data)]}))
    (run / "submission.json").write_text(json.dumps(SUBMISSION))
    return run


def test_arc_puzzles_are_drawn_with_verdicts_and_the_arc_palette(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    from utils import render_predictions

    written = render_predictions.render(write_arc_run(tmp_path), tmp_path / "out", None, max_puzzles=10)
    assert [path.name for path in written] == ["fill.png", "flip.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in written)
    out = capsys.readouterr().out
    assert "2 puzzles drawn to" in out and ", 1 solved within the submitted attempts" in out
    figure, verdicts = render_predictions.arc_figure(pyplot, "flip", ARC_PUZZLES["flip"], SUBMISSION["flip"])
    assert verdicts == [[False, True]]
    titles = [axis.get_title() for axis in figure.axes if axis.axison]
    assert titles == ["demo 1: input\n2x2", "demo 1: output\n2x2", "demo 2: input\n1x3", "demo 2: output\n1x3",
                      "test 1: input\n1x3", "attempt 1: wrong\n1x3", "attempt 2: correct\n1x3", "test 1: truth\n1x3"]
    attempt = [axis for axis in figure.axes if axis.get_title().startswith("attempt 2")][0]
    assert matplotlib.colors.to_hex(attempt.spines["left"].get_edgecolor()).upper() == render_predictions.RIGHT
    image = attempt.get_images()[0]
    # cell (0, 0) holds colour 9: maroon in the ARC palette
    assert matplotlib.colors.to_hex(image.cmap(image.norm(9))).upper() == "#870C25"
    _, verdicts = render_predictions.arc_figure(pyplot, "fill", ARC_PUZZLES["fill"], SUBMISSION["fill"])
    assert verdicts == [[True, False], [False, False]]  # the second test input is missed: not solved


def test_sudoku_predictions_are_text_grids_with_the_wrong_cells_marked(tmp_path, capsys):
    from utils import render_predictions

    # a 2x2 "Sudoku" in the Sudoku vocabulary (token = digit + 1, 1 = blank)
    puzzle = {"row": 7, "inputs": [2, 1, 1, 3], "labels": [2, 3, 4, 3], "preds": [2, 3, 2, 3]}
    source = tmp_path / "run" / "predictions" / "all.json"
    source.parent.mkdir(parents=True)
    source.write_text(json.dumps({"vocab_size": 11, "puzzles": [puzzle]}))
    written = render_predictions.render(tmp_path / "run", tmp_path / "out", None, max_puzzles=10)
    assert written == [tmp_path / "out" / "all.txt"]
    assert written[0].read_text() == (
        "puzzle 7: 1 of 4 cells wrong (marked *)\n"
        "input       prediction  truth\n"
        "1 .         1 2         1 2\n"
        ". 2         1*2         3 2\n"
    )
    assert "1 puzzles written" in capsys.readouterr().out


def test_a_run_without_predictions_says_how_to_get_them(tmp_path):
    from utils import render_predictions

    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"no submission.json .* puzzle_predictions"):
        render_predictions.render(tmp_path / "run", tmp_path / "out", None, max_puzzles=10)


def test_puzzle_predictions_number_rows_as_the_dataset_on_any_number_of_ranks(tmp_path):
    import torch

    from dataset.puzzles.loader import iter_puzzle_eval_batches
    from evaluators.puzzle_predictions import PuzzlePredictionsConfig, PuzzlePredictionsEvaluator
    from tests.helpers import load_puzzle_arrays, make_puzzle_dataset

    data = make_puzzle_dataset(tmp_path / "data", num_test=13, seq_len=9)
    expected = load_puzzle_arrays(data, "test")["inputs"]
    for world_size in (1, 2):
        seen = {}
        for rank in range(world_size):
            evaluator = PuzzlePredictionsEvaluator(str(data), PuzzlePredictionsConfig(max_puzzles=11))
            for set_name, batch in iter_puzzle_eval_batches([str(data)], 4, rank, world_size):
                tensors = {key: torch.from_numpy(value) for key, value in batch.items()}
                evaluator.update(set_name, tensors, {"preds": tensors["inputs"]})
            seen.update({evaluator._row(key, rank, world_size): inputs
                         for key, (inputs, _, _) in evaluator.records["all"].items()})
        assert set(range(11)) <= set(seen) and set(seen) <= set(range(13))  # padded rows are not kept
        for row, inputs in seen.items():
            assert inputs == expected[row].tolist(), (world_size, row)


def test_a_run_with_puzzle_predictions_writes_what_the_renderer_reads(tmp_path):
    from pretrain import launch
    from tests.helpers import TINY_TRM, compose_config, load_puzzle_arrays, make_puzzle_dataset
    from utils import render_predictions

    data = make_puzzle_dataset(tmp_path / "data", seq_len=9)  # 3x3 grids in a 6-token vocabulary (Maze's)
    overrides = [arg for arg in TINY_TRM if not arg.startswith("evaluators=")]
    launch(compose_config(overrides + [f"data_paths=[{data}]", "evaluators=[{name: puzzle_predictions, max_puzzles: 5}]",
                                       "global_batch_size=8", "max_steps=2", "epochs=1", "eval_interval=1",
                                       f"+checkpoint_path={tmp_path / 'run'}"]))
    written = json.loads((tmp_path / "run" / "predictions" / "all.json").read_text())
    test = load_puzzle_arrays(data, "test")
    assert written["vocab_size"] == 6 and [p["row"] for p in written["puzzles"]] == [0, 1, 2, 3, 4]
    for puzzle in written["puzzles"]:
        assert puzzle["labels"] == test["labels"][puzzle["row"]].tolist()
        assert len(puzzle["preds"]) == 9
    text = render_predictions.render(tmp_path / "run", tmp_path / "out", None, max_puzzles=50)[0].read_text()
    assert text.count("cells wrong (marked *)") == 5
