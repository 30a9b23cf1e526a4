"""Profiler: ``torch.profiler`` over a few training steps of the fit's first epoch.

The profiler starts at the first ``TRAINING_START`` of the fit, is stepped at each training
``BATCH_END`` through the schedule ``wait`` → ``warmup`` → ``active`` (once), and stops at that
phase's end (or at ``FIT_END`` if the phase never ended). Traces are written by
``torch.profiler.tensorboard_trace_handler`` to ``dir``, for TensorBoard's profiler plugin
(``tensorboard --logdir run/profile``) or ``chrome://tracing``. CUDA activity is recorded when
the model trains on a GPU. Rank 0 only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainingloop.callbacks.base import Callback

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["Profiler"]


class Profiler(Callback):
    """Profiles training steps ``wait + 1 … wait + warmup + active`` of the first epoch run.

    >>> import trainingloop as tl
    >>> profiler = tl.Profiler("run/profile", wait=1, warmup=1, active=3)

    ``record_shapes``, ``profile_memory`` and ``with_stack`` pass through to
    ``torch.profiler.profile``. :attr:`trace_files` lists what was written.
    """

    def __init__(self, dir: str | os.PathLike[str] = "run/profile", wait: int = 1,
                 warmup: int = 1, active: int = 3, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False) -> None:
        if wait < 0 or warmup < 0 or active < 1:
            raise ValueError(f"need wait >= 0, warmup >= 0 and active >= 1; got wait={wait}, "
                             f"warmup={warmup}, active={active}")
        self.dir = Path(dir)
        self.wait, self.warmup, self.active = wait, warmup, active
        self.options = {"record_shapes": record_shapes, "profile_memory": profile_memory,
                        "with_stack": with_stack}
        self.trace_files: list[Path] = []
        self._profiler: Any = None
        self._done = False
        self._before: set[Path] = set()

    def on_fit_start(self, loop: TrainingLoop) -> None:
        from trainingloop.distributed import is_main_process

        self._done = not is_main_process()
        self._profiler = None

    def on_training_start(self, loop: TrainingLoop) -> None:
        if self._done:
            return
        self._done = True
        assert loop.device is not None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if loop.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._before = set(self.dir.iterdir())
        self._profiler = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=self.wait, warmup=self.warmup,
                                             active=self.active, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(self.dir)),
            **self.options)  # type: ignore[arg-type] # profile's keyword options
        self._profiler.start()

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self._profiler is not None and loop.is_training:
            self._profiler.step()

    def on_training_end(self, loop: TrainingLoop) -> None:
        self._stop()

    def on_fit_end(self, loop: TrainingLoop) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._profiler is None:
            return
        self._profiler.stop()
        self._profiler = None
        self.trace_files = sorted(set(self.dir.iterdir()) - self._before)
