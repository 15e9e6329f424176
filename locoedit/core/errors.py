"""The one exception type for bad input: its message names the problem and the fix."""

from __future__ import annotations


class LocoeditError(ValueError):
    pass


def user_message(error: BaseException) -> str | None:
    """The one line every front end shows for a user error: a LocoeditError, or an operating-system error such as a
    full disk; None for anything else (a bug, which deserves its traceback in the log)."""
    if isinstance(error, LocoeditError):
        return f"error: {error}"
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"error: {error.strerror or error}{where}; free space or choose another place and rerun"
    return None
