"""The floating-point dtypes locoedit loads models in, by the names users type (torch is imported only to convert)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from locoedit.core.errors import LocoeditError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def check_dtype(name: str) -> str:
    """``name`` if it is one of :data:`DTYPE_NAMES`, else a LocoeditError naming the choices."""
    if name not in DTYPE_NAMES:
        raise LocoeditError(f"dtype {name!r} is unknown; use one of {', '.join(DTYPE_NAMES)} (--dtype)")
    return name


def dtype_named(name: str) -> torch.dtype:
    import torch

    return getattr(torch, check_dtype(name))


def dtype_name(dtype: torch.dtype) -> str:
    """The name in :data:`DTYPE_NAMES` of a torch dtype (``torch.float16`` -> ``"float16"``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise LocoeditError(f"dtype {dtype} is not supported; locoedit works in {', '.join(DTYPE_NAMES)}")
    return name
