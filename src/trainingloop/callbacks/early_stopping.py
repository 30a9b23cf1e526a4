"""EarlyStopping: ends the fit at an epoch boundary when a History value stops improving."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from trainingloop import distributed
from trainingloop.callbacks.base import Callback

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without an improvement of more than ``min_delta``.

    ``monitor`` is any History key (``"validation/loss"``, ``"train/accuracy"``, …); ``mode``
    is ``"min"`` or ``"max"``. The reason is printed and kept in :attr:`reason`.
    """

    def __init__(self, monitor: str = "validation/loss", patience: int = 3, mode: str = "min",
                 min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 0 or min_delta < 0:
            raise ValueError("patience and min_delta must be >= 0")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.reason: str | None = None
        self._enabled = True  # rank 0 prints the reason; refreshed at each fit's start

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_fit_start(self, loop: TrainingLoop) -> None:
        self.reason = None
        self._enabled = distributed.is_main_process()

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        record = loop.history.epochs[-1]
        if self.monitor not in record:
            if any(k.startswith(("train/", "validation/")) for k in record):
                raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which is not in the "
                               f"history; keys: {sorted(record)}")
            return  # the epoch was cancelled before the value existed
        value = float(record[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, int(record["epoch"]), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            loop.stop_training = True
            self.reason = (f"EarlyStopping: {self.monitor} has not improved by more than "
                           f"{self.min_delta} for {self.wait} epoch(s) (best {self.best:.6g} at "
                           f"epoch {self.best_epoch}); stopping after epoch {record['epoch']}")
            if self._enabled:
                print(self.reason, flush=True)

    def state_dict(self) -> dict[str, Any]:
        """Best value, its epoch and the epochs waited."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best, self.best_epoch, self.wait = (float(state["best"]), int(state["best_epoch"]),
                                                 int(state["wait"]))
