"""The floating-point dtypes locoedit loads models in, by the names users type."""

from __future__ import annotations

import torch

from locoedit.core.errors import LocoeditError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_dtype(name: str) -> str:
    """``name`` if it is one of :data:`DTYPES`, else a LocoeditError naming the choices."""
    if name not in DTYPES:
        raise LocoeditError(f"dtype {name!r} is unknown; use one of {', '.join(DTYPES)} (--dtype)")
    return name


def dtype_named(name: str) -> torch.dtype:
    return DTYPES[check_dtype(name)]


def dtype_name(dtype: torch.dtype) -> str:
    """The name in :data:`DTYPES` of a torch dtype (``torch.float16`` -> ``"float16"``)."""
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise LocoeditError(f"dtype {dtype} is not supported; locoedit works in {', '.join(DTYPES)}")
