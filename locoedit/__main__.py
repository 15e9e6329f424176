"""``python -m locoedit``: the same command line as ``locoedit``."""

from locoedit.cli import app

app(prog_name="locoedit")
