"""The project's error types and the wrapper that turns them into one line for the user."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit status 2, no traceback."""


class ConfigError(UserError):
    """A bad configuration value; the message names the key and the fix."""


def print_error(error: UserError) -> None:
    """`error: <message>` on stderr, in one line."""
    print(f"error: {error}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[], object]) -> None:
    """Run `main()`; turn `UserError` into one line on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print_error(error)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: nothing was written to the output folder", file=sys.stderr)
        raise SystemExit(130) from None
