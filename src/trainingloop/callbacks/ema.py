"""EMA: an exponential moving average of the weights, kept beside the model on its device.

Built on ``torch.optim.swa_utils``: the average is an ``AveragedModel`` (a copy of the unwrapped
model: no DDP or ``torch.compile`` wrapper) updated with the foreach lerp that
``get_ema_multi_avg_fn(decay)`` runs (called directly: we are under ``no_grad`` already) after
every ``every_n_steps``-th optimizer update, at that batch's ``BATCH_END``.
The first update copies the weights, as ``AveragedModel`` does. Parameters and floating-point
buffers (batch-norm statistics) are averaged; integer buffers are copied.

With ``validate=True`` the averaged weights are copied into the model in place at
``VALIDATION_START`` and the raw ones back at ``VALIDATION_END`` (or at ``EPOCH_END``/``FIT_END``
when validation was cut short), so validation, History's ``validation/*`` and the choice of the
``best`` checkpoint use the average, while training goes on with the raw weights; copying in
place keeps DDP's and the compiled step's references to the parameters valid.

Every checkpoint holds the average in this callback's state (``model.safetensors`` keeps the
raw weights, which an exact resume needs): :meth:`EMA.load_averaged` reads it back, e.g. from
``run/checkpoints/best``. The per-step path reads nothing on the host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainingloop import checkpointing
from trainingloop.callbacks.base import Callback

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["EMA"]


def _averaged_tensors(module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """(parameters and floating-point buffers, integer buffers) of ``module``, in order."""
    floats = [p.detach() for p in module.parameters()]
    integers: list[torch.Tensor] = []
    for buffer in module.buffers():
        (floats if buffer.is_floating_point() else integers).append(buffer.detach())
    return floats, integers


class EMA(Callback):
    """Exponential moving average of the weights: ``avg = decay * avg + (1 - decay) * w``.

    >>> import trainingloop as tl
    >>> ema = tl.EMA(decay=0.999)          # validation uses the averaged weights
    >>> # after loop.fit(...): tl.EMA.averaged(loop) is the averaged model

    Each fit starts a fresh average from the model's weights, unless it resumes from a
    checkpoint, which restores the average it holds.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, validate: bool = True
                 ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.decay, self.every_n_steps, self.validate = decay, every_n_steps, validate
        self.average: AveragedModel | None = None
        self.updates = 0  # updates averaged so far (a host mirror of average.n_averaged)
        self._average_fn = get_ema_multi_avg_fn(decay)
        self._loaded: dict[str, Any] | None = None
        self._raw: list[Tensor] = []  # the model's parameters and float buffers
        self._raw_integers: list[Tensor] = []
        self._averaged: list[Tensor] = []
        self._averaged_integers: list[Tensor] = []
        self._backup: list[Tensor] = []  # the raw weights while validation uses the average
        self._swapped = False
        self._steps_seen = 0

    # -- access ----------------------------------------------------------------------------
    @staticmethod
    def averaged(loop: TrainingLoop) -> nn.Module:
        """The averaged weights of ``loop``'s EMA as a plain module of the model's architecture.

        This is the average itself (updated in place while a fit runs): ``copy.deepcopy`` it
        to keep a snapshot.
        """
        for callback in [*loop.fit_callbacks, *loop.callbacks]:
            if isinstance(callback, EMA) and callback.average is not None:
                return callback.average.module
        raise ValueError("the loop has no tl.EMA callback that has seen a fit")

    @staticmethod
    def load_averaged(checkpoint: str | os.PathLike[str], model: nn.Module) -> nn.Module:
        """Load the averaged weights kept in ``checkpoint`` (a checkpoint folder, such as
        ``run/checkpoints/best``) into ``model``, after verifying the files; returns ``model``.
        """
        path = Path(checkpoint)
        checkpointing.verify(path)
        state = torch.load(path / checkpointing.STATE, map_location="cpu", weights_only=True)
        found = [s for key, s in state["callbacks"].items() if key.endswith(":EMA")]
        if not found:
            raise checkpointing.CheckpointError(f"{path} holds no tl.EMA state")
        averaged = found[0]["average"]
        module_state = {k.removeprefix("module."): v for k, v in averaged.items()
                        if k.startswith("module.")}
        checkpointing.unwrap(model).load_state_dict(module_state)
        return model

    # -- events ----------------------------------------------------------------------------
    def on_fit_start(self, loop: TrainingLoop) -> None:
        from trainingloop import distributed

        assert loop.model is not None
        model = checkpointing.unwrap(loop.model)
        if distributed.is_sharded(model):
            raise ValueError("tl.EMA averages whole weights on every rank; it does not support "
                             "strategy='fsdp' (use 'ddp')")
        self.average = AveragedModel(model, multi_avg_fn=self._average_fn, use_buffers=True)
        self.updates = 0
        if self._loaded is not None:  # resuming: the checkpoint's average
            self.average.load_state_dict(self._loaded["average"])
            self.updates = int(self._loaded["updates"])
            self._loaded = None
        self._raw, self._raw_integers = _averaged_tensors(model)
        self._averaged, self._averaged_integers = _averaged_tensors(self.average.module)
        self._backup = []
        self._swapped = False
        self._steps_seen = loop.global_step

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if loop.is_training:
            self._update_if_due(loop)

    def on_training_end(self, loop: TrainingLoop) -> None:
        self._update_if_due(loop)  # an update of micro-batches left at the phase's end

    def on_validation_start(self, loop: TrainingLoop) -> None:
        if not self.validate or self._swapped:
            return
        with torch.no_grad():
            if not self._backup:
                self._backup = [t.clone() for t in self._raw]
            else:
                torch._foreach_copy_(self._backup, self._raw)
            torch._foreach_copy_(self._raw, self._averaged)
        self._swapped = True

    def on_validation_end(self, loop: TrainingLoop) -> None:
        self._restore_raw()

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        self._restore_raw()  # validation cut short by CancelEpoch

    def on_fit_end(self, loop: TrainingLoop) -> None:
        self._restore_raw()  # a fit that failed or was interrupted in validation
        if self.average is not None:
            self.average.n_averaged.fill_(self.updates)

    # -- the average -----------------------------------------------------------------------
    def _update_if_due(self, loop: TrainingLoop) -> None:
        """Average after the ``every_n_steps``-th update (no host read: the count is a host int)."""
        if loop.global_step == self._steps_seen:
            return
        self._steps_seen = loop.global_step
        if loop.global_step % self.every_n_steps:
            return
        assert self.average is not None
        with torch.no_grad():
            if self.updates == 0:
                torch._foreach_copy_(self._averaged, self._raw)
            else:  # get_ema_multi_avg_fn's lerp, without its no_grad wrapper per step
                torch._foreach_lerp_(self._averaged, self._raw, 1.0 - self.decay)
            if self._averaged_integers:
                torch._foreach_copy_(self._averaged_integers, self._raw_integers)
        self.updates += 1  # average.n_averaged follows in state_dict (no device op per step)

    def _restore_raw(self) -> None:
        if self._swapped:
            with torch.no_grad():
                torch._foreach_copy_(self._raw, self._backup)
            self._swapped = False

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The averaged weights (``AveragedModel.state_dict()``, copied) and the update count."""
        if self.average is None:
            return {"average": {}, "updates": self.updates}
        self.average.n_averaged.fill_(self.updates)
        average = {k: v.detach().clone() for k, v in self.average.state_dict().items()}
        return {"average": average, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's average; the fit's start puts it into the averaged model."""
        self._loaded = state if state["average"] else None
