"""WandbLogger: the MLflow logger's metrics through Weights & Biases, one run per fit, rank 0 only.

Config: the fit's settings (:func:`~trainingloop.callbacks.tracking.fit_options`) under
``fit/<name>``, plus any ``config=`` given for ``wandb.init``. Metrics: the History record of
each epoch (``train/<m>``, ``validation/<m>``, ``examples_per_second``) against ``epoch``
(1-based), and ``batch/<m>`` (the running value of the epoch) every ``log_every_n_steps``
optimizer updates against ``global_step`` (after the update, 1-based); both axes are declared
with ``define_metric``. Batch values stay on the device until the epoch ends, then go to
``run.log`` together. ``mode="offline"`` writes a local run (``wandb sync`` uploads it later).
Needs the ``wandb`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainingloop import _compat
from trainingloop.callbacks.base import Callback
from trainingloop.callbacks.tracking import TrackerBuffer, fit_options
from trainingloop.distributed import is_main_process

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["WandbLogger"]


class WandbLogger(Callback):
    """Logs each fit as a W&B run of ``project``; other keyword arguments go to ``wandb.init``.

    >>> import trainingloop as tl
    >>> logger = tl.WandbLogger(project="digits", mode="offline", config={"width": 128})

    :attr:`run_dir` is the local folder of the latest fit's run.
    """

    def __init__(self, project: str = "trainingloop", mode: str | None = None, *,
                 log_every_n_steps: int = 50, **init_kwargs: Any) -> None:
        self.project, self.mode, self.init_kwargs = project, mode, init_kwargs
        self.run_dir: Path | None = None
        self._buffer = TrackerBuffer(log_every_n_steps)
        self._run: Any = None
        self._enabled = True

    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = is_main_process()
        if not self._enabled:
            return
        wandb = _compat.require("wandb", "wandb", "WandbLogger")
        kwargs = dict(self.init_kwargs)
        config = {**{f"fit/{k}": v for k, v in fit_options(loop).items()},
                  **dict(kwargs.pop("config", None) or {})}
        self._run = wandb.init(project=self.project, mode=self.mode, config=config, **kwargs)
        self.run_dir = Path(self._run.dir).parent
        self._run.define_metric("epoch")
        self._run.define_metric("global_step")
        for pattern in ("train/*", "validation/*", "examples_per_second"):
            self._run.define_metric(pattern, step_metric="epoch")
        self._run.define_metric("batch/*", step_metric="global_step")
        self._buffer.start(loop)

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self._enabled:
            self._buffer.record(loop)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if self._run is not None:
            self._write(loop)

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self._run is None:
            return
        run, self._run = self._run, None
        failed = self._buffer.error() is not None
        try:
            self._write(loop, run)
        finally:
            run.finish(exit_code=1 if failed else 0)

    def _write(self, loop: TrainingLoop, run: Any = None) -> None:
        run = run or self._run
        for point in self._buffer.batches():
            run.log({**{f"batch/{k}": v for k, v in point.values.items()},
                     "global_step": point.step})
        epoch = self._buffer.epoch(loop)
        if epoch is not None:
            number, values = epoch
            run.log({**values, "epoch": number})
