"""Run folders: one run per folder, resumable, never silently replaced.

Every command that writes a folder (``localize``, ``evaluate``, ``generate``, ``trace``) claims it with its request:
the same request resumes (or finds the work done), a different request or a folder holding anything else is refused
in one line, and the temporary files an interrupted write leaves behind are removed. Everything that can be checked
is checked before the folder is created.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.io import write_safetensors

STALE = ".*.tmp"  # what io's atomic writes leave when they are interrupted (files; staging folders for apply)


def check_writable(path: str | Path, what: str = "--out") -> Path:
    """Refuse an output path that is an existing file (when a folder is wanted) or lies under a folder this process
    cannot write to, before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LocoeditError(f"{what} {path} is a file; give a folder (new or empty) instead")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LocoeditError(f"{what} {path}: cannot write in {existing} (permission denied); choose a writable place")
    return path


def remove_stale(folder: Path) -> None:
    """Delete the temporary files and folders interrupted atomic writes left in ``folder`` (recursively)."""
    if folder.is_dir():
        for stale in sorted(folder.rglob(STALE), reverse=True):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)


class RunFolder:
    """The on-disk state of one run: its request file and the tensors of finished steps under ``progress/``."""

    def __init__(self, path: str | Path, request_file: str = "request.json"):
        self.path = Path(path)
        self.request_file = self.path / request_file

    def check_claim(self, request: JsonRecord) -> bool:
        """Refuse a folder holding anything but this same request, changing nothing. True when resuming."""
        check_writable(self.path)
        if self.request_file.is_file():
            stored = type(request).read(self.request_file)
            if stored != request:
                mine, theirs = request.to_json(), stored.to_json()
                differing = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise LocoeditError(
                    f"output folder {self.path} holds a different run (differs in: {', '.join(differing)}); "
                    "choose another --out, or delete the folder to start over"
                )
            return True
        if self.path.exists() and any(p for p in self.path.iterdir() if not p.match(STALE)):
            raise LocoeditError(
                f"output folder {self.path} is not empty and holds no locoedit run; choose an empty or new --out"
            )
        return False

    def claim(self, request: JsonRecord) -> bool:
        """Refuse a folder holding anything but this same request; record the request. True when resuming."""
        resuming = self.check_claim(request)
        remove_stale(self.path)
        if not resuming:
            request.write(self.request_file)
        return resuming

    def load_tensors(self, name: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        file = self.path / "progress" / f"{name}.safetensors"
        if not file.is_file():
            return None
        try:
            return load_file(file)
        except Exception as error:  # safetensors raises its own error type for damaged files
            raise LocoeditError(
                f"{file} is damaged ({type(error).__name__}); delete it and rerun to redo that step"
            ) from None

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        write_safetensors(self.path / "progress" / f"{name}.safetensors", tensors)
