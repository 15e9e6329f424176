"""The ``locoedit`` command line: parses options, calls the library, renders its results and progress."""

from locoedit.cli.main import app

__all__ = ["app"]
