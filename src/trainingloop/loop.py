"""The training loop: iteration, events, metrics and the state callbacks read.

:class:`TrainingLoop` owns the nested loop fit → epoch → phase → batch and fires the events of
:mod:`trainingloop.events` around each level. It delegates the step (forward, loss, backward,
update) to :class:`trainingloop.step.Step` and the running values to
:mod:`trainingloop.metrics`; everything else (progress, logging, schedules, checkpoints) is a
callback. State callbacks read is plain attributes of the loop, 0-based.

The per-batch path reads nothing on the host: the loss is kept as a detached device tensor,
metrics accumulate on the device, and values cross to the host only at phase ends or when a
callback asks (``last_stats``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainingloop import _compat, checkpointing, distributed
from trainingloop.callbacks.base import Handler, resolve_handlers
from trainingloop.devices import move_to_device, resolve_device, synchronize
from trainingloop.events import (
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelTraining,
    CancelValidation,
    Event,
    LoopControl,
    NonFiniteLossError,
)
from trainingloop.history import History
from trainingloop.metrics import Metric, batch_size, resolve_metrics, update_metrics
from trainingloop.step import BatchError, Step

__all__ = ["TrainingLoop"]

Updater = Callable[["TrainingLoop"], None]
LossFunction = Callable[[Any, Any], Tensor]


def _length(data: Any) -> int | None:
    try:
        return len(data)
    except TypeError:
        return None


class _LossTape:
    """Per-batch training losses kept on the device, to find where a NaN first appeared."""

    _CHUNK = 1024

    def __init__(self) -> None:
        self.chunks: list[Tensor] = []
        self.pending: list[Tensor] = []
        self.where: list[tuple[int, int]] = []  # (batch index, global step) of each loss

    def add(self, loss: Tensor, batch: int, step: int) -> None:
        self.pending.append(loss)
        self.where.append((batch, step))
        if len(self.pending) >= self._CHUNK:  # bound the number of live tensors
            self.chunks.append(torch.stack(self.pending))
            self.pending = []

    def first_non_finite(self) -> tuple[int, int] | None:
        parts = self.chunks + ([torch.stack(self.pending)] if self.pending else [])
        if not parts:
            return None
        bad = torch.nonzero(~torch.isfinite(torch.cat(parts).float()))
        return self.where[int(bad[0, 0])] if len(bad) else None


class TrainingLoop:
    """Trains a model on ``training`` batches, validates on ``validation``, fires events.

    >>> import torch, trainingloop as tl
    >>> x = torch.randn(64, 3); y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    >>> model = torch.nn.Linear(3, 1)
    >>> loop = tl.TrainingLoop([(x, y)], optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
    ...                        loss=torch.nn.functional.mse_loss,
    ...                        include_default_callbacks=False)
    >>> history = loop.fit(model, epochs=2, device="cpu")
    >>> len(history.epochs)
    2

    ``optimizer`` is a ``torch.optim.Optimizer`` or a function ``updater(loop)`` that updates
    the parameters from their gradients (the loop zeroes them afterwards). ``loss`` is
    ``loss(output, target) -> scalar tensor``. ``metrics`` are names or Metric objects; the loss
    is always recorded, first. Default callbacks (the progress printer) run before the others.
    """

    def __init__(
        self,
        training: Iterable[Any],
        validation: Iterable[Any] | None = None,
        optimizer: torch.optim.Optimizer | Updater | None = None,
        loss: LossFunction | None = None,
        metrics: Sequence[Any] = (),
        callbacks: Sequence[Any] = (),
        include_default_callbacks: bool = True,
    ) -> None:
        if optimizer is None or not (
            isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)
        ):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer or a function updater(loop), "
                f"got {optimizer!r}"
            )
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable as loss(output, target), got {loss!r}")
        self.training = training
        self.validation = validation
        self.optimizer = optimizer
        self.loss = loss
        self.metrics: list[Metric] = resolve_metrics(metrics)
        defaults: list[Any] = []
        if include_default_callbacks:
            from trainingloop.callbacks.progress import ProgressPrinter

            defaults.append(ProgressPrinter())
        self.callbacks: list[Any] = [*defaults, *callbacks]

        # State that callbacks read during a fit (0-based counters).
        self.model: nn.Module | None = None
        self.device: torch.device | None = None
        self.epoch_index = 0
        self.epoch_count = 0
        self.batch_index = 0
        self.batch_count: int | None = None
        self.global_step = 0
        self.is_training = False
        self.last_input: Any = None
        self.last_target: Any = None
        self.last_output: Any = None
        self.last_loss: Tensor | None = None
        self.history = History()
        self.stop_training = False
        self.examples_per_second = math.nan
        self.total_steps: int | None = None  # optimizer updates in the whole fit, if known
        self._handlers: dict[Event, list[tuple[str, Handler]]] = resolve_handlers([])
        self.interrupted = False  # set by Ctrl-C; the fit stops after the current batch
        self._phase_stats: dict[str, float] | None = None
        self._step: Step | None = None
        self._fit_callbacks: list[Any] = []
        self._phase = "idle"  # "train", "validation" or "epoch_end": where a checkpoint stands
        self._completed = 0  # batches finished in the current phase
        self._epoch_rng: dict[str, Any] | None = None  # RNG states at this epoch's data start
        self._resume: dict[str, Any] | None = None
        self._tape: _LossTape | None = None
        self._train_data: Any = training
        self._val_data: Any = validation
        self._deferred: list[Callable[[], None]] = []
        self._warming_up = False
        self._skipped = 0
        self._padding: distributed.Padding | None = None

    # -- public API ----------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        epochs: int,
        *,
        device: str | torch.device = "auto",
        callbacks: Sequence[Any] = (),
        compile: bool | dict[str, Any] = False,
        precision: str = "32",
        accumulate_grad_batches: int = 1,
        clip_grad_norm: float | None = None,
        step: Callable[[TrainingLoop, nn.Module], Tensor] | None = None,
        resume: bool | str | None = None,
        strategy: str = "ddp",
    ) -> History:
        """Train ``model`` for ``epochs`` epochs and return the History.

        ``compile=True`` (or a dict of ``torch.compile`` options) compiles the step. ``step`` is
        a custom ``step(loop, model) -> loss`` replacing the default forward and loss.
        ``resume`` is True (the newest intact checkpoint of the fit's ``tl.Checkpoint``), or the
        path of a checkpoint (``run/checkpoints/last``): the fit continues exactly from there.
        Under ``torchrun`` the model is wrapped by ``strategy`` (``"ddp"``, ``"fsdp"`` for FSDP2,
        ``"none"``) and each rank trains on its shard of the data.
        """
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self.loss is None and step is None:
            raise ValueError("TrainingLoop needs loss=... unless fit() is given a custom step")
        if _length(self.training) == 0:
            raise ValueError(f"the training data ({type(self.training).__name__}) is empty")
        session = distributed.setup(None if device == "auto" else resolve_device(device))
        try:
            first_epoch = self._prepare(model, epochs, session, device, callbacks, compile,
                                        precision, accumulate_grad_batches, clip_grad_norm, step,
                                        resume, strategy)
        except BaseException:
            session.close(failed=True)
            raise
        failed = False
        with self._interrupt_guard():
            try:
                self._fire(Event.FIT_START)
                for self.epoch_index in range(first_epoch, epochs):
                    self._run_epoch()
                    if self.stop_training:
                        break
            except CancelFit:
                pass
            except BaseException:
                failed = True
                raise
            finally:
                try:
                    self._fire(Event.FIT_END)
                finally:
                    session.close(failed)
        return self.history

    def _prepare(self, model: nn.Module, epochs: int, session: distributed.Session,
                 device: str | torch.device, callbacks: Sequence[Any],
                 compile: bool | dict[str, Any], precision: str, accumulate_grad_batches: int,
                 clip_grad_norm: float | None,
                 step: Callable[[TrainingLoop, nn.Module], Tensor] | None,
                 resume: bool | str | None, strategy: str) -> int:
        """Set up the state of a fit; returns the epoch index to start from."""
        self.device = session.device or resolve_device(device)
        self.model = distributed.wrap(model.to(self.device), self.optimizer, strategy, self.device)
        self._train_data = distributed.shard(self.training)
        self._val_data = None if self.validation is None else distributed.shard(self.validation)
        self.epoch_count = epochs
        self._fit_callbacks = [*self.callbacks, *callbacks]
        self._handlers = resolve_handlers(self._fit_callbacks)
        self._step = Step(self, precision=precision, accumulate_grad_batches=accumulate_grad_batches,
                          clip_grad_norm=clip_grad_norm, compile=compile, custom=step)
        self.history, self.global_step, self.stop_training = History(), 0, False
        self.interrupted, self._phase, self._completed, self._resume = False, "idle", 0, None
        self._warming_up = self._step.compiled
        batches = _length(self._train_data)
        self.total_steps = None if batches is None else epochs * math.ceil(
            batches / accumulate_grad_batches)
        return self._load_resume(resume) if resume else 0

    def evaluate(
        self, model: nn.Module, data: Iterable[Any], device: str | torch.device = "auto"
    ) -> dict[str, float]:
        """One pass over ``data`` without callbacks; the metrics by plain name."""
        if self.loss is None:
            raise ValueError("evaluate() needs the loop's loss=...")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self._handlers = resolve_handlers([])
        self._step = Step(self)
        return self._run_phase(data, training=False, record=False)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, data: Iterable[Any], device: str | torch.device = "auto"
    ) -> list[Any]:
        """The model's outputs, one per batch, on the CPU; targets in the batches are ignored."""
        target_device = resolve_device(device)
        model = model.to(target_device)
        was_training = model.training
        model.eval()
        outputs = []
        try:
            for batch in data:
                if isinstance(batch, (tuple, list)) and len(batch) == 2:
                    batch = batch[0]
                outputs.append(move_to_device(model(move_to_device(batch, target_device)),
                                              torch.device("cpu")))
        finally:
            model.train(was_training)
        return outputs

    @property
    def last_stats(self) -> dict[str, float]:
        """Running metric values of the current phase as floats (this reads the device)."""
        if self._phase_stats is not None:
            return dict(self._phase_stats)
        return {metric.name: metric.compute() for metric in self.metrics}

    @property
    def pending_micro_batches(self) -> int:
        """Micro-batches whose gradients await an update (with gradient accumulation)."""
        return self._step.pending if self._step is not None else 0

    @property
    def learning_rate(self) -> float | None:
        """The first parameter group's learning rate (None for a plain updater)."""
        groups = getattr(self.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else None

    def check_finite(self) -> None:
        """Raise NonFiniteLossError if the running training loss is NaN or infinite (a sync)."""
        if self.is_training and self._phase == "train" and self._phase_stats is None:
            self._check_finite({"loss": self.metrics[0].compute()}, self._tape)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, except the model's weights (tensors and plain data).

        Valid at ``BATCH_END`` of a training batch that ended with an update, at ``EPOCH_END``,
        and after an interrupt.
        """
        assert self._step is not None
        mid_training = self._phase == "train"
        states = {}
        for key, callback in self._keyed_callbacks():
            state_dict = getattr(callback, "state_dict", None)
            if callable(state_dict):
                states[key] = state_dict()
        optimizer = None
        if isinstance(self.optimizer, torch.optim.Optimizer):
            assert self.model is not None
            model = checkpointing.unwrap(self.model)
            optimizer = (distributed.full_optimizer_state(model, self.optimizer)
                         if distributed.is_sharded(model) else self.optimizer.state_dict())
        data_state = getattr(self._train_data, "state_dict", None)
        return {
            "epoch_index": self.epoch_index,
            "phase": self._phase,
            "position": self._completed,
            "global_step": self.global_step,
            "history": self.history.state_dict(),
            "metrics": [[m.sums, m.count] if m.sums is not None else None
                        for m in self.metrics] if mid_training else None,
            "rng": checkpointing.rng_state(),
            "epoch_rng": self._epoch_rng,
            "rng_by_rank": distributed.gather_objects([checkpointing.rng_state(), self._epoch_rng])
            if distributed.world_size() > 1 else None,
            "data": data_state() if callable(data_state) and mid_training else None,
            "optimizer": optimizer,
            "scaler": self._step.scaler.state_dict() if self._step.scaler is not None else None,
            "callbacks": states,
        }

    def _keyed_callbacks(self) -> list[tuple[str, Any]]:
        return [(f"{i}:{type(c).__name__}", c) for i, c in enumerate(self._fit_callbacks)]

    def _checkpoint_path(self, resume: bool | str | Path) -> Path:
        if resume is True:
            folders = [c.dir for c in self._fit_callbacks if hasattr(c, "dir") and
                       type(c).__name__ == "Checkpoint"]
            if not folders:
                raise ValueError("resume=True needs a tl.Checkpoint callback (its folder is "
                                 "searched); or pass the path of a checkpoint")
            return checkpointing.find_latest(Path(folders[0]))
        path = Path(resume)  # type: ignore[arg-type]
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return path.resolve()

    def _load_resume(self, resume: bool | str | Path) -> int:
        """Restore a checkpoint before FIT_START; returns the epoch index to continue with."""
        assert self.model is not None and self._step is not None
        path = self._checkpoint_path(resume)
        state = checkpointing.load(path, self.model)
        if state.get("rng_by_rank"):
            state["rng"], state["epoch_rng"] = state["rng_by_rank"][distributed.rank()]
        if state["optimizer"] is not None:
            model = checkpointing.unwrap(self.model)
            if distributed.is_sharded(model):
                distributed.load_full_optimizer_state(model, self.optimizer, state["optimizer"])
            else:
                self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[union-attr]
        if state["scaler"] is not None and self._step.scaler is not None:
            self._step.scaler.load_state_dict(state["scaler"])
        self.history.load_state_dict(state["history"])
        self.global_step = int(state["global_step"])
        for key, callback in self._keyed_callbacks():
            if key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][key])
            elif callable(getattr(callback, "load_state_dict", None)):
                warnings.warn(f"checkpoint {path} holds no state for callback {key}",
                              RuntimeWarning, stacklevel=3)
        if state["phase"] == "epoch_end":
            checkpointing.restore_rng(state["rng"])
            return int(state["epoch_index"]) + 1
        if state["data"] is not None:
            self._train_data.load_state_dict(state["data"])
        if state["phase"] == "validation":
            checkpointing.restore_rng(state["rng"])
        self._resume = state
        return int(state["epoch_index"])

    @contextlib.contextmanager
    def _interrupt_guard(self) -> Iterator[None]:
        """Turn the first Ctrl-C into a stop after the current batch (a second one is immediate)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # -- the loop ------------------------------------------------------------------------------
    def call_after_event(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every handler of the event being fired has run.

        A checkpoint uses this so that it sees every callback's state for this event,
        wherever it stands in the callback list.
        """
        self._deferred.append(action)

    def _fire(self, event: Event) -> None:
        label = ""
        try:
            for label, handler in self._handlers[event]:  # noqa: B007 - label names the culprit
                handler(self)
            while self._deferred:
                action = self._deferred.pop(0)
                label = f"{getattr(action, '__qualname__', 'an action')} (deferred)"
                action()
        except LoopControl:
            raise
        except Exception as error:
            _compat.add_note(error, f"raised by callback {label} at {event.name}")
            raise

    def _run_epoch(self) -> None:
        resumed = self.history.epochs and self.history.epochs[-1]["epoch"] == self.epoch_index + 1
        if not resumed:
            self.history.epochs.append({"epoch": self.epoch_index + 1})
        for data in (self._train_data, self._val_data):
            distributed.set_epoch(data, self.epoch_index)  # or its (Distributed)Sampler's
        try:
            self._fire(Event.EPOCH_START)
            if not (self._resume is not None and self._resume["phase"] == "validation"):
                self._run_phase(self._train_data, training=True)
            self._resume = None
            if self._val_data is not None:
                self._run_phase(self._val_data, training=False)
        except CancelEpoch:
            pass
        self._phase = "epoch_end"
        self._fire(Event.EPOCH_END)

    def _batches(self, data: Iterable[Any], training: bool) -> Iterator[tuple[int, Any]]:
        """``(batch index, batch)`` pairs; a resumed training phase starts where it stopped."""
        resume = self._resume if training else None
        if resume is None:
            if training:
                self._epoch_rng = checkpointing.rng_state()
            return enumerate(data)
        self._epoch_rng = resume["epoch_rng"]
        if self._epoch_rng is not None:
            checkpointing.restore_rng(self._epoch_rng)
        position = int(resume["position"])
        self._skipped = position
        iterator = iter(data)
        if resume["data"] is None:  # no saved position: replay the epoch's order up to it
            for _ in range(position):
                next(iterator)
        checkpointing.restore_rng(resume["rng"])
        for metric, saved in zip(self.metrics, resume["metrics"] or []):
            if saved is not None:
                metric.sums = saved[0].to(self.device)
                metric.count = saved[1]
        return enumerate(iterator, start=position)

    def _run_phase(
        self, data: Iterable[Any], training: bool, record: bool = True
    ) -> dict[str, float]:
        """Run one phase over ``data``: START, the batches, END. Returns its final metrics."""
        start, end, cancel, prefix = (
            (Event.TRAINING_START, Event.TRAINING_END, CancelTraining, "train/")
            if training
            else (Event.VALIDATION_START, Event.VALIDATION_END, CancelValidation, "validation/")
        )
        assert self.model is not None and self._step is not None
        self.is_training = training
        self.model.train(training)
        self.batch_count = _length(data)
        self._phase_stats = None
        self._phase, self._completed = ("train" if training else "validation"), 0
        self._skipped = 0  # batches a resume skipped in this phase
        for metric in self.metrics:
            metric.reset()
        tape = self._tape = _LossTape() if training else None
        self._padding = distributed.padding(data)  # a shard's padding: left out of the metrics
        examples = batches = 0
        started = time.perf_counter()
        try:
            self._fire(start)
            with torch.set_grad_enabled(training):
                for index, batch in self._batches(data, training):
                    self.batch_index = index
                    batches += 1
                    examples += self._run_batch(batch, training, tape)
                    if training and self._warming_up:  # exclude compilation from the rate
                        self._warming_up = False
                        synchronize(self.device)
                        examples, started = 0, time.perf_counter()
            if training:
                self._step.flush()
        except cancel:
            batches = max(batches, 1)  # cancelled on purpose: not an empty data set
        distributed.reduce_metrics(self.metrics)  # global values on every rank
        stats = {metric.name: metric.compute() for metric in self.metrics}  # the phase's sync
        if training:
            if batches == 0 and self.epoch_index == 0 and not self._skipped:
                raise ValueError(f"the training data ({type(data).__name__}) yielded no batch")
            self.examples_per_second = examples / max(time.perf_counter() - started, 1e-9)
            self._check_finite(stats, tape)
        self._phase_stats = stats
        if record:
            epoch = self.history.epochs[-1]
            epoch.update({prefix + name: value for name, value in stats.items()})
            if training:
                epoch["examples_per_second"] = self.examples_per_second
        self._fire(end)
        return stats

    def _run_batch(self, batch: Any, training: bool, tape: _LossTape | None) -> int:
        """One batch: BATCH_START, the step, the metrics, BATCH_END. Returns its examples."""
        assert self._step is not None and self.device is not None
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise BatchError(
                f"{'training' if training else 'validation'} batch {self.batch_index} is a "
                f"{type(batch).__name__}, not an (input, target) pair"
            )
        self.last_input = move_to_device(batch[0], self.device, non_blocking=True)
        self.last_target = move_to_device(batch[1], self.device, non_blocking=True)
        self.last_output = self.last_loss = None
        examples = 0
        try:
            self._fire(Event.BATCH_START)
            if training:
                step = self.global_step
                loss, self.last_output = self._step.train()
                assert tape is not None
                tape.add(loss, self.batch_index, step)
            else:
                loss, self.last_output = self._step.infer()
            self.last_loss = loss
            rows = None if self._padding is None else self._padding.rows(self.batch_index)
            update_metrics(self.metrics, loss, self.last_output, self.last_target, rows, self.loss)
            examples = batch_size(self.last_target) or batch_size(self.last_input)
        except CancelBatch:
            pass
        self._completed = self.batch_index + 1
        self._fire(Event.BATCH_END)
        if self.interrupted:
            raise KeyboardInterrupt(f"interrupted after {'training' if training else 'validation'}"
                                    f" batch {self.batch_index} of epoch {self.epoch_index + 1}")
        return examples

    def _check_finite(self, stats: dict[str, float], tape: _LossTape | None) -> None:
        if math.isfinite(stats.get("loss", 0.0)) or tape is None:
            return
        where = tape.first_non_finite()
        if where is not None:
            batch, step = where
            raise NonFiniteLossError(epoch=self.epoch_index + 1, step=step, batch=batch)
