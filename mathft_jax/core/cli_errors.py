"""One-line errors for the command-line tools: exit 2 for usage errors, 1 for bad data.

A user who passes a bad flag or a bad file wants one line that names the problem (the flag,
or FILE:LINE), not a 20-line traceback. Entry points raise

    raise cli_errors.UsageError("--k=0: K must be a positive integer")   # exit 2
    raise cli_errors.DataError(f"{path}:{line}: score -1 is negative")   # exit 1

and run under `cli_errors.run(main)` (what `entry.run_module` does), which prints
`<tool>: error: <message>` on one line of stderr and exits with the code. Flag-parsing
errors (a bad integer, a value below a flag's `lower_bound`) are usage errors too. With
`--debug` or `--verbosity=1` (or higher) the traceback is printed as well. A
FileNotFoundError is the user's too (a path that does not exist: its message names it) and
exits 1 the same way. Any other exception is a bug and keeps its traceback. Tools that parse
their own flags with argparse (the converters) run their work under `guard`.

Validating a setting, before anything is built or written:

    if batch_size < 1:
        raise cli_errors.UsageError(f"train.batch_size={batch_size}: must be >= 1")
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, NoReturn, Optional, Sequence

from absl import app, flags

# The error types live where no flag is defined, so that library modules (readers,
# converters) raise them without defining --debug; re-exported here for the entry points.
from mathft_jax.core.errors import (DATA_EXIT, USAGE_EXIT, CliError, DataError,  # noqa: F401
                                    UsageError)

_DEBUG = flags.DEFINE_bool("debug", False, "Print the traceback of a usage or data error.")


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


def exit_with(error: BaseException, code: int, prog: str | None = None,
              with_traceback: Optional[bool] = None) -> NoReturn:
    """Print `<prog>: error: <message>` (and the traceback when asked for: `with_traceback`,
    else `--debug` / `--verbosity`) and exit."""
    if _wants_traceback() if with_traceback is None else with_traceback:
        traceback.print_exception(error)
    print(f"{prog or _prog()}: error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(code)


# What a user's input can raise, and its exit code.
USER_ERRORS = (CliError, app.UsageError, FileNotFoundError)


def _exit_code(error: BaseException) -> int:
    if isinstance(error, CliError):
        return error.exit_code
    return USAGE_EXIT if isinstance(error, app.UsageError) else DATA_EXIT


def wrap(main: Callable[[Sequence[str]], object], prog: str | None = None):
    """`main` with the `USER_ERRORS` turned into one-line exits."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            exit_with(error, _exit_code(error), prog)

    return wrapped


def guard(work: Callable[[], object], prog: str, debug: bool = False):
    """`work()` for a tool that parses its own flags (argparse), with the `USER_ERRORS` as
    one-line exits; `debug` (its `--debug` flag) prints the traceback too."""
    try:
        return work()
    except USER_ERRORS as error:
        exit_with(error, _exit_code(error), prog, with_traceback=debug)


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
