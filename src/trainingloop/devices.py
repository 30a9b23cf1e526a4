"""Devices: choosing one, checking it exists, and moving nested batches onto it.

Owns ``device="auto"`` resolution, :func:`try_gpu` (as in d2l), :func:`move_to_device`, and the
host-sync guard :func:`sync_debug` (:func:`sync_allowed` lifts it for a read made on purpose)
with :func:`raise_if_host_sync`, which names the culprit.
Knows nothing of training: the loop tells them which event and callback were running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["HostSyncError", "move_to_device", "raise_if_host_sync", "resolve_device",
           "sync_allowed", "sync_debug", "synchronize", "try_gpu"]

# In the RuntimeError that CUDA's sync debug mode "error" raises: "called a synchronizing CUDA
# operation" (c10/cuda), "Synchronizing CUDA operation forced by Tensor.item()" in newer builds.
_SYNC_MESSAGE = "synchronizing cuda operation"


def try_gpu(i: int = 0) -> torch.device:
    """``cuda:i`` if that GPU exists, else the CPU (d2l's ``try_gpu``)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > i:
        return torch.device(f"cuda:{i}")
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; other values must name an existing device.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a valid torch device: {error}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if resolved.index is None else resolved.index
        if index >= count:
            raise ValueError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s)"
            )
        return torch.device("cuda", index)
    if resolved.type == "mps" and not _mps_available():
        raise ValueError(f"device {device!r} does not exist: MPS is not available here")
    if resolved.type not in ("cpu", "cuda", "mps", "meta") and not _backend_exists(resolved):
        raise ValueError(f"device {device!r} does not exist on this machine")
    return resolved


def _backend_exists(device: torch.device) -> bool:
    module = getattr(torch, device.type, None)
    available = getattr(module, "is_available", None)
    return bool(available and available())


def move_to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move tensors inside nested tuples, lists and dicts to ``device``; leave the rest."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: move_to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device, non_blocking) for v in obj)
    return obj


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class HostSyncError(RuntimeError):
    """A host-device synchronisation happened inside a batch while ``sync_debug`` was on."""


@contextlib.contextmanager
def sync_debug(enabled: bool, device: torch.device) -> Iterator[None]:
    """Make any host-device sync inside the block an error (CUDA's sync debug mode ``"error"``).

    Only when ``enabled`` and ``device`` is a CUDA device; elsewhere (and when off) a no-op. The
    previous mode is restored on exit, also when the block raises. The loop wraps each batch in
    it, so phase boundaries, where it reads metrics on purpose, stay free to sync.

    >>> with sync_debug(True, torch.device("cpu")):  # nothing to guard on the CPU
    ...     _ = torch.ones(2).sum().item()
    """
    if not (enabled and device.type == "cuda"):
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def sync_allowed() -> Iterator[None]:
    """Suspend :func:`sync_debug` for a read made on purpose inside a batch (the fp16
    GradScaler's inf check, a checkpoint's copy to the host); the mode in force is restored.

    A no-op when sync debugging is off or there is no CUDA.
    """
    if not torch.cuda.is_available() or torch.cuda.get_sync_debug_mode() == 0:
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def is_host_sync_error(error: BaseException) -> bool:
    """Whether ``error`` is the RuntimeError that sync debug mode ``"error"`` raises."""
    return (isinstance(error, RuntimeError) and not isinstance(error, HostSyncError)
            and _SYNC_MESSAGE in str(error).lower())


def raise_if_host_sync(error: BaseException, event: str, callback: str) -> None:
    """Raise a :class:`HostSyncError` naming ``event`` and ``callback`` if ``error`` is a host
    sync caught by :func:`sync_debug`; otherwise return (the caller re-raises ``error``).

    >>> raise_if_host_sync(ValueError("unrelated"), "BATCH_END", "CSVLogger")  # returns
    """
    if is_host_sync_error(error):
        raise HostSyncError(
            f"{callback} synchronised the host with the device at {event} while "
            f"sync_debug=True (a .item(), float(), print or .cpu() of a CUDA tensor, or a "
            f"data-dependent shape): keep per-batch values on the device and read them at a "
            f"phase end") from error
