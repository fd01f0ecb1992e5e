"""Errors caused by the user's input rather than by a bug.

The CLI prints these as one line and exits with the class's exit code; anything else keeps
its traceback. The codes are documented in the README.
"""


class UserError(Exception):
    """A mistake in what the user gave us: a parameter, a file, a folder."""

    exit_code = 1


class ConfigError(UserError):
    """A parameter file or a command-line option is invalid."""

    exit_code = 2


class InputDataError(UserError):
    """An input file or folder is missing, unreadable or inconsistent."""

    exit_code = 3


# Not an exception: a batch command that carried on past failed items ends with this code.
SOME_SCANS_FAILED = 4
