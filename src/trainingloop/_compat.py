"""Shims for differences between Python and PyTorch versions, kept out of the main path."""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

import torch


def add_note(error: BaseException, note: str) -> None:
    """Attach a note to an exception (PEP 678; ignored before Python 3.11)."""
    if hasattr(error, "add_note"):
        error.add_note(note)


def grad_scaler(device_type: str) -> Any:
    """A GradScaler for fp16 on ``device_type`` (``torch.amp`` or the older CUDA-only one)."""
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device_type)
    return torch.cuda.amp.GradScaler()


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """An autocast context, or a no-op one for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def require(module: str, extra: str, user: str) -> ModuleType:
    """Import the optional ``module`` for ``user``; if it is missing, name the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{user} needs the {module.partition('.')[0]!r} package: "
                          f"pip install 'trainingloop[{extra}]'") from error
