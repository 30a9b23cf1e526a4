"""GradientMonitor: the global gradient norm of each update, as the training metric ``grad_norm``.

At ``UPDATE_START`` (after backward and, with ``16-mixed``, after the step unscaled the
gradients; before clipping) the 2-norm of all gradients together is added to a running sum on
the device. The loop takes the callback's :attr:`~GradientMonitor.metrics` into its own for the
fit, so ``grad_norm`` (the mean over the phase's recorded updates so far) reaches History
(``train/grad_norm``), the CSV and TensorBoard columns and the progress line like any metric,
with no host read per step. It is a training-only metric: validation rows of the CSV hold nan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainingloop import _compat
from trainingloop.callbacks.base import Callback
from trainingloop.checkpointing import unwrap
from trainingloop.metrics import Metric

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["GradNorm", "GradientMonitor"]


class GradNorm(Metric):
    """Mean of the gradient norms fed by :meth:`add`; the loop's per-batch update is ignored."""

    name = "grad_norm"
    training_only = True

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        """Nothing: the norm is not a function of the batch's output (see :meth:`add`)."""

    def add(self, norm: Tensor) -> None:
        """Add one update's norm (a device tensor, not read here)."""
        self._sums_like(norm).add_(norm.detach())
        self.count += 1

    def value(self, sums: Tensor, count: float) -> Tensor:
        return sums[0] / max(count, 1.0)


class GradientMonitor(Callback):
    """Records the global gradient norm before clipping, every ``log_every_n_steps`` updates.

    >>> import trainingloop as tl
    >>> monitor = tl.GradientMonitor(log_every_n_steps=1)   # History gets "train/grad_norm"

    ``per_layer=True`` also writes a histogram of each parameter's gradient at the epoch's last
    update to the fit's :class:`~trainingloop.TensorBoardLogger` (tag ``grad/<parameter>``,
    step = epoch number), which the fit must then have.
    """

    def __init__(self, log_every_n_steps: int = 1, per_layer: bool = False) -> None:
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be an integer >= 1, got "
                             f"{log_every_n_steps!r}")
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.metric = GradNorm()
        self.metrics: list[Metric] = [self.metric]
        self._parameters: list[tuple[str, torch.nn.Parameter]] = []
        self._snapshots: dict[str, Tensor] = {}
        self._logger: Any = None
        self._fresh = False  # a snapshot not yet written

    def on_fit_start(self, loop: TrainingLoop) -> None:
        assert loop.model is not None
        self._parameters = [(name, p) for name, p in unwrap(loop.model).named_parameters()
                            if p.requires_grad]
        self._snapshots = {}
        self._logger = None
        if self.per_layer:
            from trainingloop.callbacks.tensorboard import TensorBoardLogger

            loggers = [c for c in loop.fit_callbacks if isinstance(c, TensorBoardLogger)]
            if not loggers:
                raise ValueError("GradientMonitor(per_layer=True) writes histograms through the "
                                 "fit's tl.TensorBoardLogger; add one to the callbacks")
            self._logger = loggers[0]

    def on_update_start(self, loop: TrainingLoop) -> None:
        if loop.global_step % self.log_every_n_steps == 0:
            self.metric.add(_compat.total_norm([p.grad for _, p in self._parameters
                                                if p.grad is not None]))
        if self.per_layer and (loop.batch_count is None
                               or loop.batch_index + 1 >= loop.batch_count):
            self._snapshot()

    def _snapshot(self) -> None:
        """Copy the gradients into buffers kept for the epoch's histograms (device copies)."""
        with torch.no_grad():
            for name, p in self._parameters:
                if p.grad is None:
                    continue
                kept = self._snapshots.get(name)
                if kept is None or kept.shape != p.grad.shape:
                    self._snapshots[name] = p.grad.detach().clone()
                else:
                    kept.copy_(p.grad)
        self._fresh = True

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        writer = self._logger.writer("train") if self._logger is not None else None
        if writer is None or not self._fresh:
            return
        self._fresh = False
        epoch = loop.epoch_index + 1
        for name, gradient in self._snapshots.items():
            writer.add_histogram(f"grad/{name}", gradient.float().cpu(), epoch)
        writer.flush()
