"""Command-line pieces the benchmarks share: the `--no-record` option and what it decides,
printing the results table or appending it to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse

from benchmarks import common


def add_no_record_option(parser: argparse.ArgumentParser) -> None:
    """`--no-record`: print the table instead of appending it to benchmarks/RESULTS.md."""
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")


def print_or_record(args: argparse.Namespace, title: str, table: str, notes: list[str],
                    print_notes: bool = False) -> None:
    """With `--no-record`, print the table (and the notes when `print_notes`); otherwise
    append a dated section with the command line, the machine, the table and the notes."""
    if args.no_record:
        print("\n".join([table, *notes]) if print_notes else table)
        return
    common.append_results(title, common.command_line(), table, notes)
