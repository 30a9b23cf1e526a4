"""Checkpoint: saves everything an exact resume needs, atomically, and prunes old ones.

Entries are folders ``<dir>/epoch=EEEE-step=SSSSSSS`` (mid-epoch, after an update) or
``<dir>/epoch=EEEE-end`` (at an epoch's end); ``<dir>/last`` links the newest complete one and
``<dir>/best`` the best one when ``monitor`` is set. Storage is in
:mod:`trainingloop.checkpointing`. A Ctrl-C during the fit writes a checkpoint at the batch
where the fit stopped. Nothing is written while the loss or the weights are not finite.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainingloop import checkpointing, distributed
from trainingloop.callbacks.base import Callback
from trainingloop.devices import sync_allowed
from trainingloop.resume import Phase

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["Checkpoint"]

_clock = time.monotonic  # wall time for every_n_minutes (a name tests can replace)


class Checkpoint(Callback):
    """Writes checkpoints to ``dir`` every ``every_n_epochs`` epochs, every ``every_n_steps``
    optimizer steps and/or every ``every_n_minutes`` of wall time (at the end of a batch that
    updated), keeping the newest ``keep_last`` (plus the best, with ``monitor``). A Ctrl-C or a
    SIGTERM writes one where the fit stopped.

    >>> import trainingloop as tl
    >>> checkpoints = tl.Checkpoint("run/checkpoints", every_n_steps=100, keep_last=2)

    Resume with ``loop.fit(model, epochs, resume=True)`` or ``resume="run/checkpoints/last"``.
    """

    def __init__(self, dir: str | os.PathLike[str] = "run/checkpoints", every_n_epochs: int = 1,
                 every_n_steps: int | None = None, keep_last: int = 2,
                 monitor: str | None = None, mode: str = "min",
                 every_n_minutes: float | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        if every_n_epochs < 0 or (every_n_steps is not None and every_n_steps < 1):
            raise ValueError("every_n_epochs must be >= 0 and every_n_steps >= 1 (or None)")
        if every_n_minutes is not None and not every_n_minutes > 0:
            raise ValueError(f"every_n_minutes must be > 0 (or None), got {every_n_minutes!r}")
        self.dir = Path(dir)
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.every_n_minutes = every_n_minutes
        self._saved_at = _clock()
        self.keep_last, self.monitor, self.mode = keep_last, monitor, mode
        self.best_value: float | None = None
        self.best_name: str | None = None
        self.saved: list[Path] = []
        self._enabled = True  # rank 0 writes; refreshed at each fit's start
        self._steps_at_check = 0

    # -- events ----------------------------------------------------------------------------
    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = distributed.is_main_process()
        self._steps_at_check = loop.global_step
        self._saved_at = _clock()

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if not ((self.every_n_steps or self.every_n_minutes) and loop.is_training):
            return
        updated = loop.global_step != self._steps_at_check
        self._steps_at_check = loop.global_step
        # global_step moves only in an update, which leaves no pending micro-batch behind.
        due = updated and (
            (self.every_n_steps is not None and loop.global_step % self.every_n_steps == 0)
            or (self.every_n_minutes is not None
                and _clock() - self._saved_at >= 60 * self.every_n_minutes))
        if due:
            with sync_allowed():  # one read per checkpoint, on purpose
                loop.check_finite()
            self._save_after_event(loop, f"epoch={loop.epoch_index + 1:04d}-step="
                                         f"{loop.global_step:07d}")

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if self.every_n_epochs and (loop.epoch_index + 1) % self.every_n_epochs == 0:
            self._save_after_event(loop, f"epoch={loop.epoch_index + 1:04d}-end")

    def on_fit_end(self, loop: TrainingLoop) -> None:
        position = loop.position
        if loop.interrupted and position.phase in (Phase.TRAINING, Phase.VALIDATION):
            if loop.pending_micro_batches:
                warnings.warn("interrupted between accumulated micro-batches: no checkpoint "
                              "written (its gradients would be lost)", RuntimeWarning, stacklevel=2)
                return
            name = (f"epoch={loop.epoch_index + 1:04d}-step={loop.global_step:07d}"
                    f"-{position.phase.value}-{position.completed:06d}")
            self._save_after_event(loop, name)

    # -- saving ----------------------------------------------------------------------------
    def _save_after_event(self, loop: TrainingLoop, name: str) -> None:
        """Save once every handler of this event has run, so the checkpoint holds their states."""
        def save() -> None:
            self.save(loop, name)

        loop.call_after_event(save)

    def save(self, loop: TrainingLoop, name: str) -> Path | None:
        """Write a checkpoint named ``name`` now; returns its path (None where not rank 0).

        Copying the state to the host is a sync, made on purpose (``sync_debug`` allows it).
        """
        with sync_allowed():
            return self._save(loop, name)

    def _save(self, loop: TrainingLoop, name: str) -> Path | None:
        assert loop.model is not None
        state = loop.state_dict()  # on every rank: it gathers each rank's RNG states
        weights = (distributed.full_model_state(checkpointing.unwrap(loop.model))
                   if distributed.is_sharded(checkpointing.unwrap(loop.model)) else None)
        if not self._enabled:
            return None
        if not _weights_finite(loop.model):
            warnings.warn(f"not writing checkpoint {name}: the model has non-finite weights",
                          RuntimeWarning, stacklevel=2)
            return None
        value = self._monitored(loop) if name.endswith("-end") else None
        if value is not None and self._better(value):
            self.best_value, self.best_name = value, name
        info = {"epoch": loop.epoch_index + 1, "global_step": loop.global_step,
                "phase": state["phase"], "position": state["position"]}
        if value is not None:
            info["monitor"] = {self.monitor: value}
        path = checkpointing.save(self.dir, name, loop.model, state, info, weights)
        self._saved_at = _clock()
        checkpointing.link_atomically(self.dir / "last", name)
        if self.best_name == name:
            checkpointing.link_atomically(self.dir / "best", name)
        self.saved.append(path)
        self._prune()
        return path

    def _monitored(self, loop: TrainingLoop) -> float | None:
        if self.monitor is None:
            return None
        record = loop.history.epochs[-1] if loop.history.epochs else {}
        if self.monitor not in record:
            raise KeyError(f"Checkpoint monitors {self.monitor!r}, which is not in the history; "
                           f"keys: {sorted(record)}")
        return float(record[self.monitor])

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def _prune(self) -> None:
        """Delete all but the newest ``keep_last`` entries (never the best one)."""
        keep = {p.name for p in checkpointing.entries(self.dir)[: self.keep_last]}
        if self.best_name:
            keep.add(self.best_name)
        for entry in checkpointing.entries(self.dir):
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The best monitored value and its checkpoint's name."""
        return {"best_value": self.best_value, "best_name": self.best_name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best_value, self.best_name = state["best_value"], state["best_name"]


def _weights_finite(model: torch.nn.Module) -> bool:
    checks = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(checks).all()) if checks else True
