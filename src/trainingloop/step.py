"""The training and inference step: the only code that touches autograd and the optimizer.

:class:`Step` owns autocast, the forward pass and loss (or a user's custom step), backward,
gradient accumulation (no gradient sync before the last micro-batch), unscaling, clipping, the
optimizer update and ``zero_grad``. It is a function of its inputs: the loop hands it the
batch and a ``fire`` callable for ``UPDATE_START`` and ``INFERENCE_PREDICTION_END``, and it
returns what happened; the loop owns iteration, events, metrics and every counter.
``compile=True`` compiles the forward pass with its loss (their backward is compiled with them
by AOTAutograd) and the optimizer update, not the loop.

Nothing here reads a tensor on the host, except the fp16 GradScaler's own inf check (PyTorch
reads one flag per update there; bf16 and fp32 need no scaler).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trainingloop import _compat
from trainingloop.devices import move_to_device, sync_allowed
from trainingloop.events import CancelBatch, Event

__all__ = ["PRECISIONS", "BatchError", "Step", "StepOptions", "check_arguments", "describe",
           "split_batch"]

PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}

# Errors that mean "this batch does not fit"; out-of-memory is not one of them.
_FIT_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)

LossFunction = Callable[[Any, Any], Tensor]


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


def check_arguments(optimizer: Any, loss: Any) -> None:
    """Raise TypeError unless ``optimizer`` is an Optimizer or a function ``updater(loop)`` and
    ``loss`` is None or callable."""
    if optimizer is None or not (isinstance(optimizer, torch.optim.Optimizer)
                                 or callable(optimizer)):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or a function "
                        f"updater(loop), got {optimizer!r}")
    if loss is not None and not callable(loss):
        raise TypeError(f"loss must be callable as loss(output, target), got {loss!r}")


def split_batch(batch: Any, device: torch.device, custom: bool, phase: str, index: int
                ) -> tuple[Any, Any]:
    """``(input, target)`` of ``phase`` batch ``index``, moved to ``device``.

    An ``(input, target)`` pair is split; with a custom step any other batch (a dict, a triple,
    an object with ``.to``) is the input, and a dict's ``"labels"`` the target (else None).
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return (move_to_device(batch[0], device, non_blocking=True),
                move_to_device(batch[1], device, non_blocking=True))
    if not custom:
        raise BatchError(f"{phase} batch {index} is a {type(batch).__name__}, not an (input, "
                         "target) pair (other batches need a custom step: fit(..., step=...))")
    batch = move_to_device(batch, device, non_blocking=True)
    return batch, batch.get("labels") if isinstance(batch, Mapping) else None


def forward_and_loss(model: Any, loss: LossFunction, input: Any, target: Any) -> tuple[Tensor, Any]:
    """The default forward pass and loss; a module-level function so that the compiled graph
    is cached across fits of the same model (Dynamo caches per code object and guards)."""
    output = model(input)
    return loss(output, target), output


def _is_fused(optimizer: Any) -> bool:
    """Whether ``optimizer`` runs its update as fused kernels (``fused=True``): compiling its
    step adds nothing but compile time."""
    return any(group.get("fused") for group in getattr(optimizer, "param_groups", ()))


def _uses_cudagraphs(options: dict[str, Any]) -> bool:
    """Whether ``torch.compile(**options)`` records CUDA graphs."""
    mode = options.get("mode")
    return mode in ("reduce-overhead", "max-autotune") or bool(
        options.get("options", {}).get("triton.cudagraphs"))


def _without_cudagraphs(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for the optimizer update: no CUDA graphs. A graphed update, a separate
    compiled call after the backward, starts a new CUDA-graph generation and so overwrites the
    gradients it is about to read (seen on an H200, torch 2.11)."""
    if not _uses_cudagraphs(options):
        return options
    mode = options.get("mode")
    kept = {k: v for k, v in options.items() if k not in ("mode", "options")}
    if mode == "max-autotune":
        kept["mode"] = "max-autotune-no-cudagraphs"
    inner = {k: v for k, v in options.get("options", {}).items() if k != "triton.cudagraphs"}
    return {**kept, **({"options": inner} if inner else {})}


_NOT_MISFITS: tuple[type[BaseException], ...] = (
    torch.OutOfMemoryError, *([torch.distributed.DistError]
                              if hasattr(torch.distributed, "DistError") else []))


def _misfit(error: Exception) -> bool:
    """Whether ``error`` means the batch does not fit (not memory, not communication)."""
    return isinstance(error, _FIT_ERRORS) and not isinstance(error, _NOT_MISFITS)


@dataclass(frozen=True)
class StepOptions:
    """The options of ``fit`` that shape the step; checked when made."""

    precision: str = "32"
    accumulate_grad_batches: int = 1
    clip_grad_norm: float | None = None
    compile: bool | dict[str, Any] = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {sorted(PRECISIONS)}")
        accumulate = self.accumulate_grad_batches
        if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
            raise ValueError(f"accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive, got {self.clip_grad_norm!r}")


class Step:
    """Forward, backward and update of one batch, under ``options``.

    ``optimizer`` is a ``torch.optim.Optimizer`` or a plain ``update()`` function (d2l's
    from-scratch ``sgd``; the step then zeroes the gradients). ``custom`` replaces the default
    forward and loss: ``custom(model) -> loss``. ``fire`` fires an event of the loop;
    ``inference=True`` makes a step for evaluation only.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Callable[[], None],
        loss: LossFunction | None,
        device: torch.device,
        fire: Callable[[Event], None],
        options: StepOptions = StepOptions(),  # frozen: one default is shared safely
        custom: Callable[[nn.Module], Tensor] | None = None,
        inference: bool = False,
    ) -> None:
        self.model = model
        self.loss = loss
        self.fire = fire
        self.options = options
        dtype = PRECISIONS[options.precision]
        self.device = device
        self.autocast = _compat.autocast(device.type, dtype)
        self.scaler = _compat.grad_scaler(device.type) if dtype == torch.float16 else None
        self.custom = custom
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer
        self.is_updater = not isinstance(optimizer, torch.optim.Optimizer)
        self.pending = 0  # micro-batches whose gradients await an update
        self.inference = inference  # evaluate/predict: the optimizer is not compiled
        self.compiled = False
        # CUDA graphs (mode="reduce-overhead"): each step's forward replays into the same
        # memory, so the loss kept past the step is cloned (see _train_forward).
        self.cudagraphs = False
        # (group, its float lr) of the groups whose rate compiling made a float32 tensor
        self._tensor_rates: list[tuple[dict[str, Any], float]] = []
        self.forward_loss: Callable[..., tuple[Tensor, Any]] = forward_and_loss
        self.forward: Callable[[Any], Any] = model
        self.optimizer_step: Callable[[], Any] = (
            optimizer if self.is_updater else optimizer.step  # type: ignore[union-attr,assignment]
        )
        if options.compile:
            self._compile({} if options.compile is True else dict(options.compile))

    # -- compilation -------------------------------------------------------------------------
    def _compile(self, options: dict[str, Any]) -> None:
        """Compile forward+loss (AOTAutograd compiles their backward), the plain forward used
        by validation and by a custom step, and the optimizer update (unless it is fused).

        A compiled optimizer re-specialises on a float learning rate, so the rates of its
        parameter groups become 0-d tensors while this step lives (schedulers fill them in
        place); :meth:`close` gives the user back floats.
        """
        try:
            self.forward_loss = torch.compile(forward_and_loss, **options)
            self.forward = torch.compile(self.model, **options)
            self.cudagraphs = self.device.type == "cuda" and _uses_cudagraphs(options)
            if not (self.is_updater or self.inference or self.scaler is not None
                    or _is_fused(self.optimizer)):
                for group in self.optimizer.param_groups:  # type: ignore[union-attr]
                    if not isinstance(group["lr"], Tensor):
                        self._tensor_rates.append((group, float(group["lr"])))
                        group["lr"] = torch.tensor(float(group["lr"]))
                self.optimizer_step = torch.compile(self.optimizer_step,
                                                    **_without_cudagraphs(options))
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

    def close(self) -> None:
        """End of the fit: learning rates that compiling made tensors are floats again."""
        for group, rate in self._tensor_rates:
            if isinstance(group["lr"], Tensor):
                value = float(group["lr"])  # the user's own value when nothing changed it
                group["lr"] = rate if value == float(torch.tensor(rate)) else value
        self._tensor_rates = []

    # -- forward -----------------------------------------------------------------------------
    def _call_model(self, input: Any, where: str) -> Any:
        try:
            return self.forward(input)
        except Exception as error:
            if not _misfit(error):
                raise
            raise BatchError(f"{where}: the model does not accept input of shape "
                             f"{describe(input)}: {error}") from error

    def _call_loss(self, output: Any, target: Any, where: str) -> Tensor:
        assert self.loss is not None
        try:
            return self.loss(output, target)
        except Exception as error:
            if not _misfit(error):
                raise
            raise BatchError(f"{where}: the loss does not accept output of shape "
                             f"{describe(output)} with target of shape {describe(target)}: "
                             f"{error}") from error

    def _custom_model(self) -> nn.Module:
        """The model a custom step calls: the compiled module when the step is compiled."""
        return self.forward if self.compiled else self.model  # type: ignore[return-value]

    def _train_forward(self, input: Any, target: Any, where: str) -> tuple[Tensor, Any]:
        if self.custom is not None:  # compiled: the custom step calls the compiled model
            loss = self.custom(self._custom_model())
            return (loss.clone() if self.cudagraphs else loss), None
        if self.compiled:
            try:
                loss, output = self.forward_loss(self.model, self.loss, input, target)
                return (loss.clone() if self.cudagraphs else loss), output
            except Exception as error:
                if isinstance(error, torch.OutOfMemoryError):
                    raise
                output = self._call_model(input, where)  # a misfit raises BatchError here
                result = self._call_loss(output, target, where), output
                self._fall_back(error)  # eager works: the compiler was the problem
                return result
        output = self._call_model(input, where)
        return self._call_loss(output, target, where), output

    # -- the steps ---------------------------------------------------------------------------
    def forward_backward(self, input: Any, target: Any, *, last: bool,
                         where: str = "training batch") -> tuple[Tensor, Any, bool]:
        """Forward, loss and backward of one micro-batch.

        Returns the detached loss, the output (None from a custom step) and whether the
        update is due now (every ``accumulate_grad_batches`` micro-batches, and at ``last``,
        the phase's final batch). Gradients are synchronised across processes only then.
        """
        accumulate = self.options.accumulate_grad_batches
        updating = self.pending + 1 >= accumulate or last
        no_sync = getattr(self.model, "no_sync", None)
        if no_sync is None and accumulate > 1:
            # FSDP2 has no no_sync: it reduce-scatters only when gradient sync is required.
            set_sync = getattr(self.model, "set_requires_gradient_sync", None)
            if set_sync is not None:
                set_sync(updating)
        # DDP all-reduces gradients only on the micro-batch that updates. It decides in the
        # forward whether the next backward syncs, so no_sync must span the forward too.
        with no_sync() if (no_sync is not None and not updating) else contextlib.nullcontext():
            with self.autocast:
                loss, output = self._train_forward(input, target, where)
            scaled = loss / accumulate if accumulate > 1 else loss
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        self.pending += 1
        return loss.detach(), output, updating

    def infer(self, input: Any, target: Any, where: str = "validation batch",
              on_prediction: Callable[[Any], None] | None = None) -> tuple[Tensor, Any]:
        """Prediction, ``on_prediction(output)`` (where the loop fires
        ``INFERENCE_PREDICTION_END``), then the loss. Returns loss, output (None from a custom
        step)."""
        with self.autocast:
            if self.custom is not None:
                loss = self.custom(self._custom_model())
                if on_prediction is not None:
                    on_prediction(None)
                return loss.detach(), None
            output = self._call_model(input, where)
            if on_prediction is not None:
                on_prediction(output)
            return self._call_loss(output, target, where).detach(), output

    def predict(self, input: Any, where: str = "batch") -> Any:
        """The model's output for ``input``, under the step's autocast and compiled forward."""
        with self.autocast:
            return self._call_model(input, where)

    @torch.no_grad()
    def predict_all(self, data: Iterable[Any]) -> list[Any]:
        """The model's outputs for each batch of ``data`` (a pair's target is ignored), on
        the CPU, in eval mode; the model's mode is put back afterwards."""
        was_training = self.model.training
        self.model.eval()
        outputs = []
        try:
            for index, batch in enumerate(data):
                if isinstance(batch, (tuple, list)) and len(batch) == 2:
                    batch = batch[0]
                output = self.predict(move_to_device(batch, self.device), f"batch {index}")
                outputs.append(move_to_device(output, torch.device("cpu")))
        finally:
            self.model.train(was_training)
        return outputs

    def update(self) -> None:
        """Unscale, fire ``UPDATE_START``, clip, step the optimizer, zero the gradients.

        A ``CancelBatch`` from ``UPDATE_START`` drops the gradients and propagates: no update.
        """
        self.pending = 0
        if self.scaler is not None and not self.is_updater:
            with sync_allowed():
                self.scaler.unscale_(self.optimizer)
        try:
            self.fire(Event.UPDATE_START)
        except CancelBatch:
            self.zero_grad()
            raise
        if self.options.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.options.clip_grad_norm)
        if self.scaler is not None and not self.is_updater:
            with sync_allowed():  # the fp16 scaler reads its inf flag on the host: by design
                self.scaler.step(self.optimizer)
                self.scaler.update()
        else:
            try:
                self.optimizer_step()
            except Exception as error:
                if not self.compiled:
                    raise
                self._fall_back(error)
                self.optimizer_step()
        self.zero_grad()

    def zero_grad(self) -> None:
        """Drop the gradients (set to None, as ``zero_grad(set_to_none=True)``)."""
        if self.is_updater:
            for parameter in self.parameters:
                parameter.grad = None
        else:
            self.optimizer.zero_grad(set_to_none=True)  # type: ignore[union-attr]
