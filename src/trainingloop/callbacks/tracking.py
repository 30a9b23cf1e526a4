"""What the experiment-tracker callbacks share: which values they send, gathered without syncs.

:class:`TrackerBuffer` snapshots the running training metrics on the device every
``log_every_n_steps`` optimizer updates (at the ``BATCH_END`` of that update, tagged with the
global step after it, so 1-based) and hands them over in bulk, with the newest History record,
when the tracker flushes (``EPOCH_END``, and ``FIT_END`` for what a cancelled epoch left).
:func:`fit_options` names the fit's settings that trackers record as parameters. The trackers
themselves (:mod:`~trainingloop.callbacks.mlflow_logger`,
:mod:`~trainingloop.callbacks.wandb_logger`) only turn these into their own API calls.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainingloop import checkpointing, distributed
from trainingloop.metrics import MetricTrace

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["BatchPoint", "TrackerBuffer", "fit_options"]


@dataclass(frozen=True)
class BatchPoint:
    """The running training metrics of the epoch right after optimizer update ``step``."""

    step: int  # global step after the update (1-based)
    timestamp: float  # host wall-clock seconds when it was recorded
    values: dict[str, float]


class TrackerBuffer:
    """Batch points every ``log_every_n_steps`` updates and each epoch's record, handed over once."""

    def __init__(self, log_every_n_steps: int = 50) -> None:
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be an integer >= 1, got {log_every_n_steps!r}")
        self.log_every_n_steps = log_every_n_steps
        self._trace = MetricTrace()
        self._names: list[str] = []
        self._seen_step = 0
        self._last_epoch = 0
        self._ambient: BaseException | None = None

    def start(self, loop: TrainingLoop) -> None:
        """Forget the previous fit (call at ``FIT_START``)."""
        self._trace = MetricTrace()
        self._names = [m.name for m in loop.metrics]
        self._seen_step = loop.global_step
        self._last_epoch = 0
        self._ambient = sys.exc_info()[1]  # fit() may itself run inside an except block

    def record(self, loop: TrainingLoop) -> None:
        """At ``BATCH_END``: snapshot the metrics on the device if an update due for logging ran."""
        step = loop.global_step
        if step == self._seen_step or not loop.is_training:
            return
        self._seen_step = step
        if step % self.log_every_n_steps == 0:
            self._trace.record(loop.metrics, (step, time.time()))

    def batches(self) -> list[BatchPoint]:
        """Every batch point since the last call (one host read for all of them)."""
        return [BatchPoint(step, stamp, dict(zip(self._names, values)))
                for (step, stamp), values in self._trace.read()]

    def epoch(self, loop: TrainingLoop) -> tuple[int, dict[str, float]] | None:
        """``(epoch number, values)`` of the newest History record, the first time it is asked
        with values in it (None otherwise). Records restored by a resume are not handed over."""
        if not loop.history.epochs:
            return None
        record = loop.history.epochs[-1]
        number = int(record["epoch"])
        values = {key: float(value) for key, value in record.items() if key != "epoch"}
        if number == self._last_epoch or not values:
            return None
        self._last_epoch = number
        return number, values

    def error(self) -> BaseException | None:
        """At ``FIT_END``: the error the fit is failing with (None when it ends normally)."""
        error = sys.exc_info()[1]  # FIT_END of a failing fit fires inside the loop's except block
        return None if error is self._ambient else error


def fit_options(loop: TrainingLoop) -> dict[str, Any]:
    """The fit's settings that the loop makes public, for a tracker's parameters.

    (Precision, accumulation, clipping and compilation are fit() arguments the loop keeps to
    itself, so they are not among them.)
    """
    assert loop.model is not None
    optimizer = loop.optimizer
    loss = loop.loss
    return {
        "epochs": loop.epoch_count,
        "total_steps": loop.total_steps,
        "device": str(loop.device),
        "world_size": distributed.world_size(),
        "model": type(checkpointing.unwrap(loop.model)).__name__,
        "parameters": sum(p.numel() for p in loop.model.parameters()),
        "optimizer": getattr(optimizer, "__name__", None) or type(optimizer).__name__,
        "learning_rate": loop.learning_rate,
        "loss": None if loss is None else getattr(loss, "__name__", None) or type(loss).__name__,
        "metrics": ",".join(m.name for m in loop.metrics),
    }
