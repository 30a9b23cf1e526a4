"""The training and inference step: the only code that touches autograd and the optimizer.

:class:`Step` owns autocast, the forward pass and loss (or a user's custom step), backward,
gradient accumulation, unscaling, clipping, the optimizer update and ``zero_grad``. The loop
owns iteration, events and metrics; it calls :meth:`Step.train` or :meth:`Step.infer` once per
batch. ``compile=True`` compiles the forward pass with its loss (their backward is compiled
with them by AOTAutograd) and the optimizer update, not the loop.

Nothing here reads a tensor on the host, except the fp16 GradScaler's own inf check (PyTorch
reads one flag per update there; bf16 and fp32 need no scaler).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trainingloop import _compat
from trainingloop.events import CancelBatch, Event

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["PRECISIONS", "BatchError", "Step", "describe"]

PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}

# Errors that mean "this batch does not fit"; out-of-memory is not one of them.
_FIT_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


class BatchError(ValueError):
    """A batch did not fit the model or the loss; the message names the batch and shapes."""


def describe(obj: Any) -> str:
    """Shapes of the tensors in a nested batch, e.g. ``(64, 1, 28, 28)`` or ``{'x': (2, 3)}``."""
    if isinstance(obj, Tensor):
        return str(tuple(obj.shape))
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(describe(v) for v in obj) + "]"
    return type(obj).__name__


def forward_and_loss(model: Any, loss: Callable[[Any, Any], Tensor], input: Any,
                     target: Any) -> tuple[Tensor, Any]:
    """The default forward pass and loss; a module-level function so that the compiled graph
    is cached across fits of the same model (Dynamo caches per code object and guards)."""
    output = model(input)
    return loss(output, target), output


_NOT_MISFITS: tuple[type[BaseException], ...] = (
    torch.OutOfMemoryError, *([torch.distributed.DistError]
                              if hasattr(torch.distributed, "DistError") else []))


def _misfit(error: Exception) -> bool:
    """Whether ``error`` means the batch does not fit (not memory, not communication)."""
    return isinstance(error, _FIT_ERRORS) and not isinstance(error, _NOT_MISFITS)


class Step:
    """One training or inference step of ``loop`` under the options of ``fit``."""

    def __init__(
        self,
        loop: TrainingLoop,
        *,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        clip_grad_norm: float | None = None,
        compile: bool | dict[str, Any] = False,
        custom: Callable[[TrainingLoop, torch.nn.Module], Tensor] | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
            raise ValueError(
                f"accumulate_grad_batches must be an integer >= 1, got {accumulate_grad_batches!r}"
            )
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {clip_grad_norm!r}")
        assert loop.model is not None and loop.device is not None
        self.loop = loop
        self.model = loop.model
        dtype = PRECISIONS[precision]
        self.autocast = _compat.autocast(loop.device.type, dtype)
        self.scaler = _compat.grad_scaler(loop.device.type) if dtype == torch.float16 else None
        self.accumulate = accumulate_grad_batches
        self.clip = clip_grad_norm
        self.custom = custom
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = loop.optimizer
        self.is_updater = not isinstance(self.optimizer, torch.optim.Optimizer)
        self.pending = 0  # micro-batches whose gradients await an update
        self.compiled = False
        self.forward_loss: Callable[..., tuple[Tensor, Any]] = forward_and_loss
        self.forward: Callable[[Any], Any] = self.model
        self.optimizer_step: Callable[[], Any] | None = (
            None if self.is_updater else self.optimizer.step  # type: ignore[union-attr]
        )
        if compile:
            self._compile({} if compile is True else dict(compile))

    # -- compilation -------------------------------------------------------------------------
    def _compile(self, options: dict[str, Any]) -> None:
        """Compile forward+loss (AOTAutograd compiles their backward), the plain forward used
        by validation, and the optimizer update.

        A compiled optimizer re-specialises on a float learning rate, so the rates of its
        parameter groups become 0-d tensors (schedulers then fill them in place).
        """
        try:
            self.forward_loss = torch.compile(forward_and_loss, **options)
            self.forward = torch.compile(self.model, **options)
            if self.optimizer_step is not None and self.scaler is None:
                for group in self.optimizer.param_groups:  # type: ignore[union-attr]
                    if not isinstance(group["lr"], Tensor):
                        group["lr"] = torch.tensor(float(group["lr"]))
                self.optimizer_step = torch.compile(self.optimizer_step, **options)
            self.compiled = True
        except Exception as error:
            self._fall_back(error)

    def _fall_back(self, error: BaseException) -> None:
        """Give up on compilation for the rest of the fit, with a warning that says why."""
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); running "
                      "eagerly", RuntimeWarning, stacklevel=4)
        self.compiled = False
        self.forward_loss, self.forward = forward_and_loss, self.model
        if not self.is_updater:
            self.optimizer_step = self.optimizer.step  # type: ignore[union-attr]

    # -- forward -----------------------------------------------------------------------------
    def _phase(self) -> str:
        return "training" if self.loop.is_training else "validation"

    def _call_model(self, input: Any) -> Any:
        try:
            return self.forward(input)
        except Exception as error:
            if not _misfit(error):
                raise
            raise BatchError(
                f"{self._phase()} batch {self.loop.batch_index}: the model does not accept input "
                f"of shape {describe(input)}: {error}"
            ) from error

    def _call_loss(self, output: Any, target: Any) -> Tensor:
        try:
            return self.loop.loss(output, target)
        except Exception as error:
            if not _misfit(error):
                raise
            raise BatchError(
                f"{self._phase()} batch {self.loop.batch_index}: the loss does not accept output "
                f"of shape {describe(output)} with target of shape {describe(target)}: {error}"
            ) from error

    def _train_forward(self) -> tuple[Tensor, Any]:
        loop = self.loop
        if self.custom is not None:
            return self.custom(loop, self.model), loop.last_output
        if self.compiled:
            try:
                return self.forward_loss(self.model, loop.loss, loop.last_input, loop.last_target)
            except Exception as error:
                if isinstance(error, torch.OutOfMemoryError):
                    raise
                output = self._call_model(loop.last_input)  # a misfit raises BatchError here
                result = self._call_loss(output, loop.last_target), output
                self._fall_back(error)  # eager works: the compiler was the problem
                return result
        output = self._call_model(loop.last_input)
        return self._call_loss(output, loop.last_target), output

    # -- the steps ---------------------------------------------------------------------------
    def train(self) -> tuple[Tensor, Any]:
        """Forward, loss, backward; the update every ``accumulate`` batches. Returns loss, output."""
        loop = self.loop
        last = loop.batch_count is not None and loop.batch_index + 1 >= loop.batch_count
        updating = self.pending + 1 >= self.accumulate or last
        no_sync = getattr(self.model, "no_sync", None)
        if no_sync is None and self.accumulate > 1:
            # FSDP2 has no no_sync: it reduce-scatters only when gradient sync is required.
            set_sync = getattr(self.model, "set_requires_gradient_sync", None)
            if set_sync is not None:
                set_sync(updating)
        # DDP all-reduces gradients only on the micro-batch that updates. It decides in the
        # forward whether the next backward syncs, so no_sync must span the forward too.
        with no_sync() if (no_sync is not None and not updating) else contextlib.nullcontext():
            with self.autocast:
                loss, output = self._train_forward()
            scaled = loss / self.accumulate if self.accumulate > 1 else loss
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        self.pending += 1
        if updating:
            self.update()
        return loss.detach(), output

    def infer(self) -> tuple[Tensor, Any]:
        """Prediction, ``INFERENCE_PREDICTION_END``, then the loss. Returns loss, output."""
        loop = self.loop
        with self.autocast:
            if self.custom is not None:
                loss = self.custom(loop, self.model)
                loop._fire(Event.INFERENCE_PREDICTION_END)
                return loss.detach(), loop.last_output
            loop.last_output = self._call_model(loop.last_input)
            loop._fire(Event.INFERENCE_PREDICTION_END)
            return self._call_loss(loop.last_output, loop.last_target).detach(), loop.last_output

    def update(self) -> None:
        """Unscale, fire ``UPDATE_START``, clip, step the optimizer, zero the gradients."""
        self.pending = 0
        loop = self.loop
        if self.scaler is not None and not self.is_updater:
            self.scaler.unscale_(self.optimizer)
        try:
            loop._fire(Event.UPDATE_START)
        except CancelBatch:
            self.zero_grad()
            raise
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        if self.is_updater:
            self.optimizer(loop)  # type: ignore[operator]
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            assert self.optimizer_step is not None
            try:
                self.optimizer_step()
            except Exception as error:
                if not self.compiled:
                    raise
                self._fall_back(error)
                self.optimizer.step()  # type: ignore[union-attr]
        self.zero_grad()
        loop.global_step += 1

    def flush(self) -> None:
        """Apply an update for micro-batches left over at the end of a training phase."""
        if self.pending:
            with contextlib.suppress(CancelBatch):
                self.update()

    def zero_grad(self) -> None:
        """Drop the gradients (set to None, as ``zero_grad(set_to_none=True)``)."""
        if self.is_updater:
            for parameter in self.parameters:
                parameter.grad = None
        else:
            self.optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
