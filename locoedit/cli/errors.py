"""How the command line reports bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import functools

import typer

from locoedit.core.errors import LocoeditError
from locoedit.core.processes import is_main_process


def user_errors(command):
    """Print a LocoeditError, or an operating-system error such as a full disk, as one clear line and exit 2,
    instead of a traceback. Under a launcher every process meets the same error; the main process says it."""

    def say(line: str) -> None:
        if is_main_process():
            typer.echo(line, err=True)

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except LocoeditError as error:
            say(f"error: {error}")
            raise typer.Exit(2) from None
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            say(f"error: {error.strerror or error}{where}; free space or choose another place and rerun")
            raise typer.Exit(2) from None

    return wrapper
