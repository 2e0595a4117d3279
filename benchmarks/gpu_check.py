"""The Python half of `benchmarks/gpu_check.sh`: which carried wheels to install, the
environment report, and the results file (steps, targets, each step's output).

    python -m benchmarks.gpu_check missing-wheels .whl       # wheels whose packages do not import here
    python -m benchmarks.gpu_check env                       # python, torch, CUDA, GPU, packages
    python -m benchmarks.gpu_check report WORK OUTPUT ...    # (re)write the results file

Nothing here imports torch or a package the wheels bring, except `env` (inside the
function), so `missing-wheels` and `report` work before the install and after a failure.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from core.cli import argument_parser
from core.errors import run_cli

STEPS = [
    ("a", "wheels: install what this machine lacks from .whl/"),
    ("b", "environment"),
    ("c", "GPU-marked tests (pytest -m gpu)"),
    ("d", "bert_tiny: kill and resume (losses equal)"),
    ("e_base", "BERT-Base, length 128: compiled vs eager vs transformers"),
    ("e_large", "BERT-Large, length 512: compiled vs eager vs transformers"),
    ("f", "attention ablation on padded batches"),
    ("g_sudoku", "TRM, Sudoku recipe: compiled vs eager vs reference"),
    ("g_arc", "TRM, ARC recipe: compiled vs eager vs reference"),
]
"""The script's steps in order: (id, title). `--only` takes ids or their letters."""
PACKAGES = ("torch", "triton", "numpy", "hydra-core", "omegaconf", "antlr4-python3-runtime", "pydantic",
            "pydantic-core", "transformers", "tokenizers", "safetensors", "pytest")
"""Distributions whose versions the environment report lists."""
LOG_TAIL_LINES = 40
"""Lines of a step's output kept in the results file (the whole log when it failed: up to 150)."""


# ------------------------------------------------------------------------------ wheels


def wheel_modules(wheel: Path) -> set[str]:
    """The top-level importable names a wheel installs (folders and modules outside .dist-info/.data)."""
    names = set()
    with zipfile.ZipFile(wheel) as archive:
        for entry in archive.namelist():
            top = entry.split("/", 1)[0]
            if top.endswith((".dist-info", ".data")) or top.startswith("__"):
                continue
            if "/" in entry:
                names.add(top)
            elif top.endswith(".py") or ".cpython-" in top or top.endswith((".so", ".pyd")):
                names.add(top.split(".", 1)[0])
    return names


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's `Requires-Dist` lines (its METADATA)."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode("utf-8", errors="replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_wheels(folder: Path) -> tuple[list[Path], list[str]]:
    """(the wheels of `folder` to install, problems no carried wheel solves).

    A wheel is installed when one of its modules does not import here, or when a wheel
    being installed requires a version of it that this machine does not have (pydantic
    2.13 and an old typing-extensions, say). Everything else is left alone: the machine's
    own version wins, so nothing that works is replaced (a `transformers` already there
    stays, with the versions of its own requirements that it was installed with).
    """
    wheels = {_normalise(path.name.split("-", 1)[0]): path for path in sorted(folder.glob("*.whl"))}
    chosen = {name for name, path in wheels.items()
              if not wheel_modules(path) or any(importlib.util.find_spec(m) is None for m in wheel_modules(path))}
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without `packaging`, the modules alone decide
        return [wheels[name] for name in sorted(chosen)], ["packaging is not installed: requirements not checked"]
    problems, pending = [], sorted(chosen)
    while pending:
        for line in _wheel_requirements(wheels[pending.pop()]):
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = _normalise(requirement.name)
            installed = _installed_version(requirement.name)
            if name in chosen or (installed is not None and requirement.specifier.contains(installed, prereleases=True)):
                continue
            if name in wheels:
                chosen.add(name)
                pending.append(name)
            else:
                problems.append(f"{line} is needed, and this machine has {installed or 'none'}: carry its wheel")
    return [wheels[name] for name in sorted(chosen)], sorted(set(problems))


# ------------------------------------------------------------------------- environment


def environment() -> list[str]:
    """Markdown lines: Python, torch, CUDA, the GPU, the attention kernels, package versions."""
    lines = [f"- python: {sys.version.split()[0]} ({sys.executable})", f"- platform: {platform.platform()}",
             f"- cpu cores usable: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()}"]
    import torch

    lines.append(f"- torch: {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, "
                 f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}")
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        lines.append(f"- GPU: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, compute capability "
                     f"{properties.major}.{properties.minor}, {properties.multi_processor_count} SMs, "
                     f"{torch.cuda.device_count()} visible")
    else:
        lines.append("- GPU: none visible to torch")
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        lines.append(f"- nvidia-smi: {query.stdout.strip() or query.stderr.strip()}")
    lines.append(f"- attention kernels in this torch: varlen {_has('torch.nn.attention.varlen')}, "
                 f"flex_attention {_has('torch.nn.attention.flex_attention')}")
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} missing")
    lines.append("- packages: " + ", ".join(versions))
    lines.append(f"- PYTHONPATH: {os.environ.get('PYTHONPATH', '')}")
    return lines


def _has(module: str) -> str:
    try:
        return "yes" if importlib.util.find_spec(module) is not None else "no"
    except ModuleNotFoundError:
        return "no"


# ------------------------------------------------------------------------------ report


def read_steps(work: Path) -> dict[str, dict]:
    """id -> {status, seconds, note} from the script's `steps.tsv` (one line per finished step)."""
    steps = {}
    table = work / "steps.tsv"
    if table.is_file():
        for line in table.read_text(encoding="utf-8").splitlines():
            step_id, status, seconds, note = (line.split("\t") + ["", "", ""])[:4]
            steps[step_id] = {"status": status, "seconds": float(seconds or 0), "note": note}
    return steps


def read_figures(work: Path, step_id: str) -> dict:
    """The JSON a benchmark step wrote (`--json`): {table title: {contender: {figure: median}}}."""
    path = work / f"{step_id}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _first_table(figures: dict) -> dict:
    return next(iter(figures.values()), {})


def _figure(table: dict, contender: str, key: str) -> float:
    value = table.get(contender, {}).get(key)
    return float(value) if isinstance(value, (int, float)) else math.nan


def targets(work: Path, comparable: bool) -> list[list[str]]:
    """Rows: target, measured, goal, met. `comparable` is False for `--tiny` or CPU runs."""
    bert = _first_table(read_figures(work, "e_base"))
    ours = _figure(bert, "this project, full rows", "tokens_per_s")
    transformers = _figure(bert, "transformers, full rows", "tokens_per_s")
    rows = [("BERT-Base, length 128, bf16: this project on full rows, real tokens/s", ours, 600_000, "{:,.0f}"),
            ("BERT-Base, length 128: this project / transformers eager SDPA, both on full rows", ours / transformers,
             2.0, "{:.2f}x")]
    for step_id, name in (("g_sudoku", "Sudoku"), ("g_arc", "ARC")):
        trm = _first_table(read_figures(work, step_id))
        ratio = _figure(trm, "this project", "examples_per_s") / _figure(trm, "this project, eager", "examples_per_s")
        rows.append((f"TRM {name} recipe: this project compiled / eager", ratio, 1.5, "{:.2f}x"))
    table = []
    for name, value, goal, style in rows:
        measured = "not measured" if math.isnan(value) else style.format(value)
        if math.isnan(value):
            met = "-"
        elif not comparable:
            met = "n/a (tiny sizes or CPU)"
        else:
            met = "yes" if value >= goal else "NO"
        table.append([name, measured, ">= " + style.format(goal), met])
    return table


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _step_body(work: Path, step_id: str, status: str) -> list[str]:
    """A step's section: its results table (if it wrote one), then the tail of its output."""
    body, first_line = [], None
    section = work / f"{step_id}.md"
    if section.is_file():
        text = section.read_text(encoding="utf-8").strip()
        body += [text, ""]
        first_line = text.splitlines()[0] if text else None
    log = work / f"{step_id}.log"
    if log.is_file():
        # Progress bars redraw with \r: keep each line's last state. The section, which the
        # benchmark also printed, is shown above already: the output is kept up to it.
        lines = [line.rsplit("\r", 1)[-1] for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
        if first_line in lines:
            lines = lines[: lines.index(first_line)]
        while lines and not lines[-1].strip():
            lines.pop()
        shown = lines[-(LOG_TAIL_LINES if status == "ok" else 150) :]
        if shown:
            body += [f"Output ({len(shown)} of {len(lines)} lines):", "", "```", *shown, "```", ""]
    return body


def write_report(work: Path, output: Path, command: str, budget: float, elapsed: float, comparable: bool,
                 finished: bool) -> None:
    """Write the results file atomically (the script rewrites it after every step)."""
    steps = read_steps(work)
    failed = [step_id for step_id, step in steps.items() if step["status"].startswith(("failed", "timed out"))]
    skipped = [step_id for step_id, step in steps.items() if step["status"].startswith("skipped")]
    if not finished:
        verdict = "RUNNING (this file is rewritten after every step)"
    elif failed:
        verdict = f"FAIL: {len(failed)} step(s) failed ({', '.join(failed)})"
    else:
        verdict = "PASS" + (f" ({len(skipped)} step(s) skipped: {', '.join(skipped)})" if skipped else "")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# GPU acceptance check ({stamp})", "", f"Command: `{command}`", "",
             f"Result: **{verdict}**; {elapsed:.0f} s of a {budget:.0f} s budget.", "", "## Steps", ""]
    rows = [[step_id, title, steps.get(step_id, {}).get("status", "not run"),
             f"{steps[step_id]['seconds']:.0f}" if step_id in steps else "-", steps.get(step_id, {}).get("note", "")]
            for step_id, title in STEPS]
    lines += [_table(["step", "what", "status", "seconds", "note"], rows), "", "## Targets (issue 11)", ""]
    lines += [_table(["target", "measured", "goal", "met"], targets(work, comparable)), ""]
    if not comparable:
        lines += ["Sizes here are tiny (or the device is a CPU): the figures show that each step runs, not the "
                  "speed the targets are about. Compiled vs eager is measured only where compile is on (CUDA, or "
                  "`--cpu-compile`).", ""]
    for step_id, title in STEPS:
        if step_id in steps:
            lines += [f"## ({step_id}) {title}", "", f"Status: {steps[step_id]['status']}, "
                      f"{steps[step_id]['seconds']:.0f} s.", ""] + _step_body(work, step_id, steps[step_id]["status"])
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")  # two steps may finish at once
    partial.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    partial.replace(output)


def main(argv: list[str] | None = None) -> None:
    """`missing-wheels DIR`, `env` or `report ...`."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    wheels = commands.add_parser("missing-wheels", help="print the wheels of DIR whose packages do not import")
    wheels.add_argument("folder", type=Path)
    env = commands.add_parser("env", help="print the environment report (Markdown)")
    env.add_argument("--write", type=Path, default=None, help="also write it to this file")
    env.add_argument("--require-cuda", action="store_true", help="exit 1 when torch sees no CUDA device")
    report = commands.add_parser("report", help="write the results file")
    report.add_argument("work", type=Path)
    report.add_argument("output", type=Path)
    report.add_argument("--command", required=True)
    report.add_argument("--budget", type=float, required=True)
    report.add_argument("--elapsed", type=float, required=True)
    report.add_argument("--comparable", type=int, choices=(0, 1), required=True)
    report.add_argument("--finished", type=int, choices=(0, 1), default=1)
    args = parser.parse_args(argv)
    if args.action == "missing-wheels":
        wheels, problems = missing_wheels(args.folder)
        print("\n".join(str(path) for path in wheels))
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    elif args.action == "env":
        text = "\n".join(environment())
        print(text)
        if args.write is not None:
            args.write.write_text(text + "\n", encoding="utf-8")
        if args.require_cuda and "- GPU: none visible to torch" in text:
            raise SystemExit("torch sees no CUDA device: the GPU steps cannot run (use --device cpu for a dry run)")
    else:
        write_report(args.work, args.output, args.command, args.budget, args.elapsed, bool(args.comparable),
                     bool(args.finished))


if __name__ == "__main__":
    run_cli(main)
