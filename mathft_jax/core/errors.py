"""The errors a user's input raises: a bad flag or binding (`UsageError`, exit 2) or a bad
input file or record (`DataError`, exit 1). ValueErrors, so a setting check can raise one
where callers (and tests) catch ValueError. No flags and no imports: any module may raise
them; `cli_errors` prints them as one line at the command line."""

USAGE_EXIT = 2
DATA_EXIT = 1


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
