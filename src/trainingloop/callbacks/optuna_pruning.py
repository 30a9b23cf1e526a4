"""OptunaPruning: reports a History value to an Optuna trial each epoch and stops pruned fits.

At each ``EPOCH_END`` the monitored value is reported at step = the 1-based epoch number and
the trial's pruner is asked. When it says prune, the fit stops after this epoch (every
``EPOCH_END`` handler still runs, then ``FIT_END`` fires as for any fit) and ``fit`` raises
``optuna.TrialPruned``, which ``study.optimize`` records as a pruned trial. Under torchrun
only rank 0 holds the trial: it reports and decides, and broadcasts the decision, so that
every rank stops at the same epoch. Needs the ``optuna`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from trainingloop import _compat, distributed
from trainingloop.callbacks.base import Callback

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["OptunaPruning", "prune_decision"]


def prune_decision(trial: Any, value: float, step: int) -> bool:
    """Rank 0 reports ``value`` at ``step`` to ``trial`` and asks its pruner; every rank gets
    rank 0's answer. A collective under torchrun: every rank calls it at the same epoch."""
    prune = False
    if distributed.is_main_process():
        trial.report(value, step)
        prune = bool(trial.should_prune())
    if distributed.is_initialized():
        decision = [prune]
        torch.distributed.broadcast_object_list(decision, src=0)
        prune = bool(decision[0])
    return prune


class OptunaPruning(Callback):
    """Prunes an Optuna ``trial`` by the History value ``monitor`` (e.g. ``"validation/loss"``).

    >>> import trainingloop as tl
    >>> def objective(trial):  # doctest: +SKIP
    ...     lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    ...     ...
    ...     history = loop.fit(model, epochs=10, callbacks=[tl.OptunaPruning(trial)])
    ...     return history["validation/loss"][-1]

    Under torchrun, ranks other than 0 may pass ``trial=None``. :attr:`pruned_at` is the epoch
    of the latest fit at which the trial was pruned (None if it was not).
    """

    def __init__(self, trial: Any, monitor: str = "validation/loss") -> None:
        self.trial, self.monitor = trial, monitor
        self.pruned_at: int | None = None

    def on_fit_start(self, loop: TrainingLoop) -> None:
        _compat.require("optuna", "optuna", "OptunaPruning")
        if self.trial is None and distributed.is_main_process():
            raise ValueError("OptunaPruning needs the Optuna trial on rank 0 (got trial=None)")
        self.pruned_at = None

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        record = loop.history.epochs[-1]
        if self.monitor not in record:  # the same on every rank: History is global
            if any(k.startswith(("train/", "validation/")) for k in record):
                raise KeyError(f"OptunaPruning monitors {self.monitor!r}, which is not in the "
                               f"history; keys: {sorted(record)}")
            return  # the epoch was cancelled before the value existed
        value = float(record[self.monitor])
        epoch = int(record["epoch"])
        if prune_decision(self.trial, value, epoch):
            self.pruned_at = epoch
            loop.stop_training = True  # the fit ends after this epoch's handlers

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.pruned_at is None:
            return
        # Deferred twice: after every FIT_END handler, and after the actions they deferred
        # (a checkpoint's save), so that raising here cuts nothing short.
        loop.call_after_event(lambda: loop.call_after_event(self._raise_pruned))

    def _raise_pruned(self) -> None:
        optuna = _compat.require("optuna", "optuna", "OptunaPruning")
        raise optuna.TrialPruned(f"trial pruned at epoch {self.pruned_at}: {self.monitor}")
