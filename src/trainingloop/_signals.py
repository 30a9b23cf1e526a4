"""Ctrl-C and SIGTERM during a fit: a stop after the current batch, not in the middle of one.

:func:`stop_after_batch` installs the handlers for the length of a fit; they only set the
loop's ``interrupted`` and ``preempted`` flags, which the loop checks after each batch and
turns into an exception with :func:`stop`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from trainingloop.events import Preempted

__all__ = ["stop", "stop_after_batch"]


class _Flags(Protocol):
    interrupted: bool
    preempted: bool


@contextlib.contextmanager
def stop_after_batch(flags: _Flags) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM into ``flags.interrupted`` (and ``flags.preempted``) while the
    block runs; the previous handlers come back after it.

    A second Ctrl-C stops at once; further SIGTERMs are ignored, so that the checkpoint
    the first one asked for is written whole (a scheduler's SIGKILL after its grace
    period still finds the previous ``last`` intact: writes are atomic). Outside the main
    thread (where Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if flags.interrupted and not flags.preempted:
            raise KeyboardInterrupt
        flags.interrupted = True

    def on_terminate(signum: int, frame: Any) -> None:
        flags.interrupted = flags.preempted = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    previous_term = signal.signal(signal.SIGTERM, on_terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def stop(preempted: bool, where: str) -> None:
    """Raise what an interrupt ``where`` (``"after training batch 3 of epoch 1"``) ends in:
    :class:`~trainingloop.Preempted` for SIGTERM, ``KeyboardInterrupt`` for Ctrl-C."""
    if preempted:
        raise Preempted(f"SIGTERM: the fit stopped {where}")
    raise KeyboardInterrupt(f"interrupted {where}")
