"""Write an edited model as a full diffusers pipeline folder (``locoedit apply``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from locoedit.core.errors import LocoeditError
from locoedit.core.formats import JsonRecord
from locoedit.core.io import shared_permissions
from locoedit.core.runfolder import check_writable
from locoedit.delta.file import EditDelta
from locoedit.models import DEFAULTS_FILE, load_adapter, resolve_model

APPLIED_FILE = "locoedit-applied.json"


@dataclass(frozen=True)
class AppliedEdit(JsonRecord):
    """Which delta an edited pipeline folder holds, so that the same ``apply`` again is a no-op."""

    FORMAT = "locoedit.applied/1"

    model: str
    delta: str  # EditDelta.digest()
    strength: float = 1.0  # files written before strength existed hold the whole edit


def remove_stale_staging(out_dir: Path) -> None:
    """An earlier ``apply`` to ``out_dir`` that was killed while saving left its staging folder beside it."""
    for staging in out_dir.parent.glob(f".{out_dir.name}.*.tmp") if out_dir.parent.is_dir() else []:
        shutil.rmtree(staging, ignore_errors=True)


def apply_delta_to_folder(
    model: str,
    delta_path: str | Path,
    out_dir: str | Path,
    device: str | None = None,
    readme: str | None = None,
    strength: float = 1.0,
) -> Path:
    """Load ``model``, apply the delta and write the edited pipeline with ``save_pretrained`` to ``out_dir``.

    The folder is written next to ``out_dir`` and renamed into place, so ``out_dir`` holds a complete pipeline or
    nothing; an existing non-empty ``out_dir`` is refused. The model is loaded in the dtype the delta was computed
    for, and the edit written at ``strength`` (0: the original, 1: the edit). The base folder's ``locoedit.json`` (how the model is meant to be sampled, scored and edited) is carried over
    with the preservation corpus it names;
    ``readme`` (a model card) is written as ``README.md``.
    """
    out_dir = check_writable(out_dir)
    remove_stale_staging(out_dir)
    delta = EditDelta.load(delta_path)
    record = AppliedEdit(model, delta.digest(), strength)
    if out_dir.exists() and any(out_dir.iterdir()):
        if (out_dir / APPLIED_FILE).is_file() and AppliedEdit.read(out_dir / APPLIED_FILE) == record:
            return out_dir  # the same apply finished earlier (perhaps in a run that was stopped right after)
        raise LocoeditError(f"output {out_dir} exists and is not an empty folder; choose a new --out")
    adapter = load_adapter(model, dtype=delta.dtype, device=device or "cpu")
    delta.apply(adapter, strength)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        adapter.pipe.save_pretrained(staging)
        base_settings = Path(resolve_model(model)) / DEFAULTS_FILE
        if base_settings.is_file():
            shutil.copy2(base_settings, staging / DEFAULTS_FILE)
            corpus = adapter.recommended.edit.corpus if adapter.recommended.edit else None
            if corpus is not None:  # the preservation corpus that locoedit.json names, beside it
                shutil.copy2(corpus, staging / Path(corpus).name)
        if readme is not None:
            (staging / "README.md").write_text(readme)
        record.write(staging / APPLIED_FILE)
        shared_permissions(staging)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
