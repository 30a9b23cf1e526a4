"""EarlyStopping: ends the fit at an epoch boundary when a History value stops improving.

With ``restore_best=True`` (Keras's ``restore_best_weights``) it keeps a copy of the weights of
the best epoch so far, taken at ``EPOCH_END`` only when the monitored value improves (a copy on
the CPU, off the per-step path), and loads it into the model when the fit ends, stopped early
or not. The copy is part of :meth:`EarlyStopping.state_dict`, so a resumed fit ends with the
same weights. An interrupted fit (Ctrl-C) keeps its raw weights: its checkpoint must resume.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from trainingloop import distributed
from trainingloop.callbacks.base import Callback
from trainingloop.checkpointing import unwrap

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs without an improvement of more than ``min_delta``.

    ``monitor`` is any History key (``"validation/loss"``, ``"train/accuracy"``, …); ``mode``
    is ``"min"`` or ``"max"``. The reason is printed and kept in :attr:`reason`.
    ``restore_best=True`` ends the fit with the weights of the best epoch (:attr:`best_weights`).
    """

    def __init__(self, monitor: str = "validation/loss", patience: int = 3, mode: str = "min",
                 min_delta: float = 0.0, restore_best: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 0 or min_delta < 0:
            raise ValueError("patience and min_delta must be >= 0")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.reason: str | None = None
        self.restore_best = restore_best
        self.best_weights: dict[str, torch.Tensor] | None = None  # with restore_best
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
            if self.restore_best:
                assert loop.model is not None
                self.best_weights = {k: v.detach().to("cpu", copy=True)
                                     for k, v in unwrap(loop.model).state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            loop.stop_training = True
            self.reason = (f"EarlyStopping: {self.monitor} has not improved by more than "
                           f"{self.min_delta} for {self.wait} epoch(s) (best {self.best:.6g} at "
                           f"epoch {self.best_epoch}); stopping after epoch {record['epoch']}")
            if self._enabled:
                print(self.reason, flush=True)

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.restore_best and self.best_weights is not None and not loop.interrupted:
            assert loop.model is not None
            unwrap(loop.model).load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        """Best value, its epoch, the epochs waited (and the best weights, with restore_best)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best, self.best_epoch, self.wait = (float(state["best"]), int(state["best_epoch"]),
                                                 int(state["wait"]))
        self.best_weights = state.get("best_weights")
