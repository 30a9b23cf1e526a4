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


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of ``tensors`` taken together, as ``clip_grad_norm_`` computes it, on the
    device: one foreach norm when they share a device and dtype (the common case, without the
    grouping ``get_total_norm`` does on every call), else ``torch.nn.utils.get_total_norm``
    (torch 2.6; the same sum of norms before)."""
    if tensors and all(t.device == tensors[0].device and t.dtype == tensors[0].dtype
                       and t.layout == torch.strided for t in tensors):
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if get_total_norm is not None:
        return get_total_norm(tensors)
    if not tensors:
        return torch.tensor(0.0)
    device = tensors[0].device
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(t).to(device) for t in tensors]))


def require(module: str, extra: str, user: str) -> ModuleType:
    """Import the optional ``module`` for ``user``; if it is missing, name the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{user} needs the {module.partition('.')[0]!r} package: "
                          f"pip install 'trainingloop[{extra}]'") from error
