"""The versions that produced a result, recorded in every result file."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from locoedit import __version__


def versions() -> dict[str, str]:
    """locoedit's version and those of the libraries whose numerics a result depends on."""
    found = {"locoedit": __version__}
    for package in ("torch", "diffusers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
