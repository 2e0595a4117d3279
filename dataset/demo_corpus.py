"""A small English text corpus that exists on every machine: Python's own docstrings.

    python -m dataset.demo_corpus --output data/stdlib-docs.txt --max-mb 20

The text comes from the installed Python standard library (the folder
`sysconfig.get_paths()["stdlib"]`, no download): every `.py` file outside `site-packages`
and the test suites is parsed with `ast`, and its module, class and function docstrings
are written out. One module is one document; each paragraph of a docstring is one line;
a blank line separates documents (the input layout of `build_text_mlm_dataset.py`).
Files are visited in sorted path order, so the output is the same on every run with
the same Python version. It is meant for demos and smoke runs, not for a useful model.
"""

from __future__ import annotations

import ast
import inspect
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from core.cli import argument_parser
from core.errors import UserError, run_cli

SKIPPED_FOLDERS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
"""Folders not visited: installed third-party packages and test suites (test data there
is often not valid Python, and test docstrings make poor prose)."""


def stdlib_source_files(root: Path | None = None) -> list[Path]:
    """The standard library's `.py` files in sorted order (SKIPPED_FOLDERS left out)."""
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name not in SKIPPED_FOLDERS)
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def module_paragraphs(source: str) -> list[str]:
    """The paragraphs of a module's docstrings (module, classes, functions), one line each."""
    tree = ast.parse(source)
    nodes = [tree] + [
        node for node in ast.walk(tree) if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    paragraphs = []
    for node in nodes:
        docstring = ast.get_docstring(node, clean=False)
        if not docstring:
            continue
        for paragraph in inspect.cleandoc(docstring).split("\n\n"):
            line = " ".join(paragraph.split())
            if line:
                paragraphs.append(line)
    return paragraphs


def iter_documents(files: list[Path]) -> Iterator[list[str] | None]:
    """Per file, its docstring paragraphs (maybe none), or None when it does not parse."""
    for path in files:
        try:
            yield module_paragraphs(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            # A handful of stdlib files are deliberately not valid (e.g. lib2to3 fixtures);
            # the caller counts and reports them.
            yield None


def write_demo_corpus(output: str | Path, max_mb: float | None = None) -> dict[str, int]:
    """Write the docstring corpus to `output` (at most `max_mb` MB, whole documents only).

    Returns {"documents", "lines", "bytes", "unparsable_files"} counts. Written to a temporary file
    and renamed, so an interrupted run leaves no partial corpus.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    limit = None if max_mb is None else int(max_mb * 1e6)
    counts = {"documents": 0, "lines": 0, "bytes": 0, "unparsable_files": 0}
    temporary = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
            for paragraphs in iter_documents(stdlib_source_files()):
                if paragraphs is None:
                    counts["unparsable_files"] += 1
                if not paragraphs:
                    continue
                text = "\n".join(paragraphs) + "\n\n"
                size = len(text.encode("utf-8"))
                if limit is not None and counts["bytes"] + size > limit:
                    break
                handle.write(text)
                counts["documents"] += 1
                counts["lines"] += len(paragraphs)
                counts["bytes"] += size
        if counts["documents"] == 0:
            raise UserError(
                f"no docstring document fits in --max-mb {max_mb} (or none found under "
                f"{sysconfig.get_paths()['stdlib']}); raise --max-mb"
            )
        temporary.replace(output)
    finally:
        temporary.unlink(missing_ok=True)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Command line: write the corpus to --output."""
    parser = argument_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="text file to write")
    parser.add_argument("--max-mb", type=float, default=None, help="stop before the file exceeds this size")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    if args.max_mb is not None and args.max_mb <= 0:
        raise UserError(f"--max-mb {args.max_mb} must be positive")
    if Path(args.output).exists() and not args.overwrite:
        raise UserError(f"{args.output} already exists; choose another --output or pass --overwrite")
    counts = write_demo_corpus(args.output, args.max_mb)
    print(
        f"wrote {counts['documents']} documents, {counts['lines']} lines, {counts['bytes'] / 1e6:.1f} MB to "
        f"{args.output} ({counts['unparsable_files']} standard-library files did not parse and were left out)"
    )


if __name__ == "__main__":
    run_cli(main)
