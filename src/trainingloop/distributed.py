"""Distributed runtime: process-group setup from torchrun's environment, rank-0 I/O helpers.

Knows nothing of training loops. Without ``torch.distributed`` initialised, every helper
answers as a single process would.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_main_process", "rank", "world_size"]


def is_initialized() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that prints, logs and saves."""
    return rank() == 0
