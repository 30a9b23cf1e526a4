"""The learning-rate range test (Leslie Smith; fastai's ``lr_find``), leaving nothing changed.

:func:`lr_find` trains ``model`` on the loop's training data for up to ``steps`` updates with a
learning rate growing exponentially from ``start_lr`` to ``end_lr``, records the loss of each
batch, smooths it as fastai does (an exponential moving average with ``smoothing``, debiased),
and stops once the smoothed loss exceeds ``diverge`` times the best so far (or is not finite).
It runs in a fit of its own (no callbacks of the loop: no logs, checkpoints or progress), and
afterwards puts back exactly what it found: the model's parameters, buffers, gradients and
train/eval mode of every submodule (and its device), the optimizer's ``state_dict``, the RNG
states of torch (CPU and CUDA), Python's ``random``, NumPy's global generator and the data's
own ``torch.Generator`` objects, and the data's epoch. Peers leave the model trained or the
optimizer changed (Lightning #6675, fastai #2892); this module owns undoing it.

The losses stay on the device and are read in bulk every ``check_every`` updates, so the test
costs one host read per ``check_every`` steps, not one per step.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainingloop import checkpointing
from trainingloop.callbacks.base import Callback
from trainingloop.events import CancelFit
from trainingloop.loop import TrainingLoop

__all__ = ["LRFinderResult", "lr_find"]


@dataclass
class LRFinderResult:
    """What the range test saw: one entry per update, up to and including divergence.

    ``learning_rates[i]`` is the rate of update ``i`` and ``losses[i]`` the smoothed loss up to
    its batch (``raw_losses[i]`` unsmoothed). ``suggestion`` is the rate where the smoothed loss
    falls fastest against the log of the rate (:func:`steepest`), over the points before
    divergence (None with fewer than two of them).
    """

    learning_rates: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggestion: float | None
    diverged: bool

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Draw smoothed loss against learning rate (log scale), the suggestion marked; saved
        to ``path`` (``.png``, ``.svg``, ...) when given. Returns the matplotlib Figure."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(5.0, 3.5))
        axes = figure.add_subplot()
        axes.plot(self.learning_rates, self.losses, "-", label="smoothed loss")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        if self.suggestion is not None:
            index = self.learning_rates.index(self.suggestion)
            axes.plot([self.suggestion], [self.losses[index]], "ro",
                      label=f"steepest descent: {self.suggestion:.2g}")
        finite = [v for v in self.losses if math.isfinite(v)]
        if finite:  # keep the diverging tail from flattening the curve
            low, high = min(finite), min(max(finite), 4 * min(finite) if min(finite) > 0
                                         else max(finite))
            margin = 0.05 * (high - low or 1.0)
            axes.set_ylim(low - margin, high + margin)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
        figure.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path)
        return figure


def steepest(learning_rates: list[float], losses: list[float]) -> float | None:
    """The rate at which ``losses`` fall fastest against ``log(rate)`` on the way down to their
    minimum, skipping the first tenth of the points, where the smoothing has seen few losses
    (fastai skips them too); None with fewer than two points."""
    import numpy as np

    if len(losses) < 2:
        return None
    slopes = np.gradient(np.asarray(losses, dtype=np.float64),
                         np.log(np.asarray(learning_rates, dtype=np.float64)))
    slopes[~np.isfinite(slopes)] = np.inf
    low = len(losses) // 10
    high = low + int(np.nanargmin(np.asarray(losses[low:], dtype=np.float64))) + 1
    if high - low < 2:
        low, high = 0, len(losses)
    return float(learning_rates[low + int(np.argmin(slopes[low:high]))])


class _RangeTest(Callback):
    """Sets each update's rate, keeps the losses on the device, stops at divergence."""

    def __init__(self, rates: list[float], smoothing: float, diverge: float,
                 check_every: int) -> None:
        self.rates, self.smoothing, self.diverge = rates, smoothing, diverge
        self.check_every = check_every
        self.raw: list[float] = []
        self.smoothed: list[float] = []
        self.diverged = False
        self._pending: list[Tensor] = []
        self._average = 0.0
        self._best = math.inf

    def on_batch_start(self, loop: TrainingLoop) -> None:
        rate = self.rates[min(loop.global_step, len(self.rates) - 1)]
        for group in loop.optimizer.param_groups:  # type: ignore[union-attr]
            group["lr"] = rate

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if loop.last_loss is None:
            return
        self._pending.append(loop.last_loss.float().reshape(1))
        done = len(self.raw) + len(self._pending)
        last_of_phase = loop.batch_count is not None and loop.batch_index + 1 >= loop.batch_count
        if done >= len(self.rates) or done % self.check_every == 0 or last_of_phase:
            self._read()
            if self.diverged or len(self.raw) >= len(self.rates):
                raise CancelFit

    def _read(self) -> None:
        """Move the pending losses to the host at once; smooth them; look for divergence."""
        values = torch.cat(self._pending).cpu().tolist()
        self._pending = []
        for loss in values:
            i = len(self.raw)
            self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
            smooth = self._average / (1 - self.smoothing ** (i + 1))
            self.raw.append(loss)
            self.smoothed.append(smooth)
            if i > 0 and (not math.isfinite(smooth) or smooth > self.diverge * self._best):
                self.diverged = True
                return
            self._best = min(self._best, smooth)


def lr_find(loop: TrainingLoop, model: nn.Module, start_lr: float = 1e-7, end_lr: float = 10,
            steps: int = 100, *, device: str | torch.device = "auto", precision: str = "32",
            smoothing: float = 0.98, diverge: float = 4.0, check_every: int = 10
            ) -> LRFinderResult:
    """Run the learning-rate range test of ``loop``'s optimizer and loss on ``model``.

    >>> import torch, trainingloop as tl
    >>> x = torch.randn(256, 4); y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    >>> model = torch.nn.Linear(4, 1)
    >>> loop = tl.TrainingLoop([(x[i:i + 16], y[i:i + 16]) for i in range(0, 256, 16)],
    ...                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    ...                        loss=torch.nn.functional.mse_loss)
    >>> result = tl.lr_find(loop, model, steps=50, device="cpu")
    >>> 1e-7 <= result.suggestion <= 10
    True

    Everything the test changes is put back when it returns (see the module docstring), also
    when it fails.
    """
    optimizer = loop.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError("lr_find needs a torch.optim.Optimizer (it sets the learning rate of "
                        f"its parameter groups), got {optimizer!r}")
    if loop.loss is None:
        raise ValueError("lr_find needs the loop's loss=...")
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    rates = [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]
    test = _RangeTest(rates, smoothing, diverge, check_every)
    length = _length(loop.training)
    epochs = math.ceil(steps / length) if length else steps
    finder = TrainingLoop(loop.training, optimizer=optimizer, loss=loop.loss, metrics=[],
                          callbacks=[test], include_default_callbacks=False)
    with _everything_restored(model, optimizer, loop.training):
        finder.fit(model, epochs, device=device, precision=precision)
    kept = len(test.smoothed) - 1 if test.diverged else len(test.smoothed)
    return LRFinderResult(learning_rates=rates[:len(test.smoothed)], losses=test.smoothed,
                          raw_losses=test.raw,
                          suggestion=steepest(rates[:kept], test.smoothed[:kept]),
                          diverged=test.diverged)


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


@contextlib.contextmanager
def _everything_restored(model: nn.Module, optimizer: torch.optim.Optimizer,
                         data: Any) -> Iterator[None]:
    """Put back the model, the optimizer, every RNG and the data's epoch on the way out."""
    tensors = [*model.parameters(), *model.buffers()]
    values = [t.detach().clone() for t in tensors]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    devices = {t.device for t in tensors}
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    generators = checkpointing.data_generators(data)
    rng = checkpointing.rng_state(generators)
    epoch = getattr(data, "epoch", None)
    try:
        yield
    finally:
        if len(devices) == 1 and {t.device for t in model.parameters()} != devices:
            model.to(next(iter(devices)))  # the finder's fit moved it
        with torch.no_grad():
            for tensor, value in zip([*model.parameters(), *model.buffers()], values):
                tensor.copy_(value)
        for parameter, grad in zip(model.parameters(), grads):
            parameter.grad = grad
        for module, training in modes:
            module.training = training
        optimizer.load_state_dict(optimizer_state)
        checkpointing.restore_rng(rng, generators)
        if isinstance(epoch, int) and callable(getattr(data, "set_epoch", None)):
            data.set_epoch(epoch)
