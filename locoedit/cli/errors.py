"""How the command line reports bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import functools

import typer

from locoedit.core.errors import LocoeditError, user_message
from locoedit.core.processes import is_main_process


def user_errors(command):
    """Print a LocoeditError, or an operating-system error such as a full disk, as one clear line and exit 2,
    instead of a traceback. Under a launcher every process meets the same error; the main process says it."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (LocoeditError, OSError) as error:
            if is_main_process():
                typer.echo(user_message(error), err=True)
            raise typer.Exit(2) from None

    return wrapper
