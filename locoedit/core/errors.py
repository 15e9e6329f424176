"""The one exception type for bad input: its message names the problem and the fix."""


class LocoeditError(ValueError):
    pass
