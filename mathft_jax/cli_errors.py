"""One-line errors for the command-line tools: exit 2 for usage errors, 1 for bad data.

A user who passes a bad flag or a bad file wants one line that names the problem (the flag,
or FILE:LINE), not a 20-line traceback. Entry points raise

    raise cli_errors.UsageError("--k=0: K must be a positive integer")   # exit 2
    raise cli_errors.DataError(f"{path}:{line}: score -1 is negative")   # exit 1

and run under `cli_errors.run(main)` (what `entry.run_module` does), which prints
`<tool>: error: <message>` on one line of stderr and exits with the code. Flag-parsing
errors (a bad integer, a value below a flag's `lower_bound`) are usage errors too. With
`--debug` or `--verbosity=1` (or higher) the traceback is printed as well. Any other
exception is a bug and keeps its traceback.

Validating a setting, before anything is built or written:

    if batch_size < 1:
        raise cli_errors.UsageError(f"train.batch_size={batch_size}: must be >= 1")
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, NoReturn, Sequence

from absl import app, flags

USAGE_EXIT = 2
DATA_EXIT = 1

_DEBUG = flags.DEFINE_bool("debug", False, "Print the traceback of a usage or data error.")


class CliError(ValueError):
    """An error meant for the user: printed as one line, exits with `exit_code`. A
    ValueError, so a setting check can raise it where callers (and tests) catch ValueError."""

    exit_code = DATA_EXIT


class UsageError(CliError):
    """A bad flag or binding: its value, not the data, is wrong (exit 2)."""

    exit_code = USAGE_EXIT


class DataError(CliError):
    """A bad input file or record (exit 1); the message names FILE or FILE:LINE."""

    exit_code = DATA_EXIT


GIN_SUFFIX = "\n  In call to configurable"


def one_line(message: object) -> str:
    """The message with its line breaks folded, so the error is exactly one line. gin's
    "In call to configurable 'train' (<function ...>)" suffix goes: the message names the
    binding already."""
    return " ".join(str(message).split(GIN_SUFFIX)[0].split("\n")).strip()


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mathft_jax"
    return name[:-3] if name.endswith(".py") else name


def _wants_traceback() -> bool:
    values = flags.FLAGS
    if not values.is_parsed():
        return False
    return bool(_DEBUG.value) or values["verbosity"].value >= 1


def exit_with(error: BaseException, code: int, prog: str | None = None) -> NoReturn:
    """Print `<prog>: error: <message>` (and the traceback when asked for) and exit."""
    if _wants_traceback():
        traceback.print_exception(error)
    print(f"{prog or _prog()}: error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(code)


def wrap(main: Callable[[Sequence[str]], object], prog: str | None = None):
    """`main` with `CliError` (and absl's `app.UsageError`) turned into one-line exits."""

    def wrapped(argv):
        try:
            return main(argv)
        except CliError as error:
            exit_with(error, error.exit_code, prog)
        except app.UsageError as error:
            exit_with(error, USAGE_EXIT, prog)

    return wrapped


def parse_flags(argv: Sequence[str], prog: str | None = None) -> list[str]:
    """absl's flag parsing, with a bad flag a one-line usage error (absl exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"{prog or _prog()}: error: {one_line(error)}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT)


def run(main: Callable[[Sequence[str]], object], prog: str | None = None) -> None:
    """`absl.app.run(main)` with one-line usage and data errors (see the module docstring)."""
    app.run(wrap(main, prog), flags_parser=lambda argv: parse_flags(argv, prog))
