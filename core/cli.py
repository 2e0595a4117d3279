"""The one way the command lines parse their flags: `--help` shows every default."""

from __future__ import annotations

import argparse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help; the description printed as written."""


def argument_parser(description: str) -> argparse.ArgumentParser:
    """An `ArgumentParser` whose `--help` shows each flag's default and keeps the description's lines."""
    return argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
