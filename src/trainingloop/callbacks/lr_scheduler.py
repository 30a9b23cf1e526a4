"""LearningRateScheduler: sets the learning rate from a schedule, or steps a torch scheduler.

A segment schedule (:func:`trainingloop.make_schedule`) is applied at ``BATCH_START`` of every
training batch: step k of a fit of T optimizer steps gets ``schedule(T)(k)``, written to every
parameter group. With ``bias_correction=(β1, β2)`` the rate at step t (1-based) is multiplied
by Adam's factor √(1 − β2ᵗ) / (1 − β1ᵗ). A ``torch.optim.lr_scheduler`` object is instead
stepped after each optimizer update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from trainingloop.callbacks.base import Callback

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["LearningRateScheduler"]


def _set_rate(optimizer: Any, rate: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):  # a compiled optimizer keeps lr as a tensor
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate


class LearningRateScheduler(Callback):
    """Drives the optimizer's learning rate from ``schedule``.

    >>> import trainingloop as tl
    >>> schedule = tl.make_schedule([
    ...     tl.ScheduleSegment(shape=tl.shapes.linear, start_rate=0.0, end_rate=0.1, step_count=10),
    ...     tl.ScheduleSegment(shape=tl.shapes.linear, end_rate=0.0)])
    >>> callback = tl.LearningRateScheduler(schedule)
    """

    def __init__(
        self,
        schedule: Callable[[int], Callable[[int], float]] | Any,
        bias_correction: tuple[float, float] | None = None,
    ) -> None:
        # a torch scheduler, duck-typed: anything with step() and state_dict()
        self.torch_scheduler: Any = schedule if hasattr(schedule, "step") and hasattr(
            schedule, "state_dict") else None
        if self.torch_scheduler is None and not callable(schedule):
            raise TypeError(f"schedule must be make_schedule(...) or a torch scheduler, "
                            f"got {schedule!r}")
        if bias_correction is not None and self.torch_scheduler is not None:
            raise ValueError("bias_correction applies to segment schedules only")
        self.schedule = schedule
        self.bias_correction = bias_correction
        self._rate: Callable[[int], float] | None = None
        self._stepped_at = 0

    def rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) in the current fit."""
        assert self._rate is not None, "rate() is known once a fit has started"
        rate = self._rate(step)
        if self.bias_correction is not None:
            beta1, beta2 = self.bias_correction
            t = step + 1
            rate *= math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        return rate

    def on_fit_start(self, loop: TrainingLoop) -> None:
        if not hasattr(loop.optimizer, "param_groups"):
            raise TypeError("LearningRateScheduler needs a torch.optim.Optimizer, not an updater")
        if self.torch_scheduler is not None:
            self._stepped_at = loop.global_step
            return
        if loop.total_steps is None:
            raise ValueError("a segment schedule needs the number of steps: the training data "
                             "has no len()")
        self._rate = self.schedule(loop.total_steps)

    def on_batch_start(self, loop: TrainingLoop) -> None:
        if loop.is_training and self._rate is not None:
            _set_rate(loop.optimizer, self.rate(loop.global_step))

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self.torch_scheduler is not None and loop.is_training \
                and loop.global_step > self._stepped_at:
            self._stepped_at = loop.global_step
            self.torch_scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """A torch scheduler's state; segment schedules need none (they follow global_step)."""
        if self.torch_scheduler is None:
            return {}
        return {"torch_scheduler": self.torch_scheduler.state_dict(),
                "stepped_at": self._stepped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.torch_scheduler is not None and state:
            self.torch_scheduler.load_state_dict(state["torch_scheduler"])
            self._stepped_at = int(state["stepped_at"])
