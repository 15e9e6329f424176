"""Atomic file writes: a reader (or an interrupted run) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the JSON and text writers load neither; images and tensors import them where they are written
    import numpy as np
    import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shared_permissions(path: str | Path) -> None:
    """Give a file or folder the permissions a plain ``open``/``mkdir`` would (results are meant to be shared):
    ``tempfile`` creates them private (0600, 0700)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


def _atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        shared_permissions(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    """``data`` as JSON; NaN and infinities are refused (JSON has none), before anything is written."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError as error:
        raise ValueError(f"{path}: refusing to write a non-finite number into JSON ({error})") from None
    return _atomic(path, lambda tmp: tmp.write_text(text))


def write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda tmp: tmp.write_text(text))


def to_uint8(image: torch.Tensor) -> np.ndarray:  # [3, H, W] in [0, 1] -> [H, W, 3] uint8
    return (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_png(path: str | Path, image: torch.Tensor) -> Path:
    """``image``: [3, H, W] float in [0, 1]."""
    from PIL import Image

    return _atomic(path, lambda tmp: Image.fromarray(to_uint8(image)).save(tmp, format="PNG"))


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    return _atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
