"""The training loop: the nest fit → epoch → phase → batch → step, its events and its state.

:class:`TrainingLoop` owns iteration, the firing of the events of :mod:`trainingloop.events`
(one helper, :meth:`TrainingLoop._with_events`, writes "fire START, run the body, catch its
``Cancel*``, fire END" for every level), the running metrics (:mod:`trainingloop.metrics`) and
every counter callbacks read, as plain 0-based attributes. The step (forward, loss, backward,
update) is :class:`trainingloop.step.Step`, a function of the batch it is given; the position
and exact resume are :mod:`trainingloop.resume`; everything else (progress, logging,
schedules, checkpoints) is a callback.

The per-batch path reads nothing on the host: the loss is kept as a detached device tensor,
metrics accumulate on the device, and values cross to the host only at phase ends or when a
callback asks (``last_stats``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainingloop import _compat, checkpointing, devices, distributed, resume
from trainingloop.callbacks.base import Handler, resolve_handlers
from trainingloop.callbacks.checkpoint import Checkpoint
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
    Preempted,
    ends_within,
)
from trainingloop.history import History
from trainingloop.metrics import (
    Metric,
    Tape,
    batch_size,
    resolve_metrics,
    token_count,
    update_metrics,
)
from trainingloop.resume import Phase, Position
from trainingloop.step import BatchError, LossFunction, Step, StepOptions
from trainingloop.stream import TrainingStream, length

__all__ = ["TrainingLoop"]

Updater = Callable[["TrainingLoop"], None]
CustomStep = Callable[["TrainingLoop", nn.Module], Tensor]


@dataclass(frozen=True)
class _PhaseEvents:
    """The events, cancel signal and History prefix of one phase."""

    phase: Phase
    start: Event
    end: Event
    cancel: type[LoopControl]
    prefix: str


_TRAINING = _PhaseEvents(Phase.TRAINING, Event.TRAINING_START, Event.TRAINING_END,
                         CancelTraining, "train/")
_VALIDATION = _PhaseEvents(Phase.VALIDATION, Event.VALIDATION_START, Event.VALIDATION_END,
                           CancelValidation, "validation/")


@dataclass
class _PhaseRun:
    """What one phase counts while it runs (host numbers, plus the losses on the device)."""

    data: Iterable[Any]
    record: bool
    examples: int = 0
    tokens: int = 0
    batches: int = 0
    started: float = 0.0
    losses: Tape | None = None  # training: (batch index, global step) of each loss


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
    A callback may contribute metrics through a ``metrics`` list (``GradientMonitor``'s
    ``grad_norm``): they follow the loop's own for that fit (``training_only`` ones are left
    out of validation).
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
        self.interrupted = False  # set by Ctrl-C; the fit stops after the current batch
        self.position = Position()  # the phase and its finished batches, for checkpoints
        self.fit_callbacks: list[Any] = []  # this fit's callbacks: the loop's and fit()'s

        self._handlers: dict[Event, list[tuple[str, Handler]]] = resolve_handlers([])
        self._deferred: list[Callable[[], None]] = []
        self._phase_stats: dict[str, float] | None = None
        self._step: Step | None = None
        self._options = StepOptions()
        self._custom: CustomStep | None = None
        self._train_data: Any = training
        self._val_data: Any = validation
        self._stream = TrainingStream(training, None)
        self._validation_steps: int | None = None
        self.tokens_per_second: float | None = None  # for token inputs (language models)
        self.preempted = False  # set by SIGTERM; the fit stops after the current batch
        self._plan: resume.Plan | None = None  # set by a resume until its phase has run
        self._losses: Tape | None = None  # this training phase's losses, to find a NaN
        self._warming_up = False
        self._padding: distributed.Padding | None = None  # a shard's, kept out of metrics
        self._sync_debug = False  # fit(sync_debug=True): host syncs inside a batch are errors
        self._callback_metrics: list[Metric] = []  # this fit's metrics from callbacks

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
        step: CustomStep | None = None,
        resume: bool | str | Path | None = None,
        strategy: str = "ddp",
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        sync_debug: bool = False,
    ) -> History:
        """Train ``model`` for ``epochs`` epochs and return the History.

        ``compile=True`` (or a dict of ``torch.compile`` options) compiles the step. ``step`` is
        a custom ``step(loop, model) -> loss`` replacing the default forward and loss.
        ``resume`` is True (the newest intact checkpoint of the fit's ``tl.Checkpoint``), or the
        path of a checkpoint (``run/checkpoints/last``): the fit continues exactly from there.
        Under ``torchrun`` the model is wrapped by ``strategy`` (``"ddp"``, ``"fsdp"`` for FSDP2,
        ``"none"``) and each rank trains on its shard of the data. ``steps_per_epoch=k`` makes
        an epoch the next k training batches (the data's iterator carries on across epochs, as
        in Keras; needed for data without a length); ``validation_steps=v`` validates on the
        first v batches. SIGTERM ends the fit after the current batch (with a checkpoint, if
        a ``tl.Checkpoint`` is there) and raises :class:`~trainingloop.Preempted`.
        ``sync_debug=True`` (CUDA) makes any host-device sync inside a batch an error that
        names the event and the callback (phase boundaries, where metrics are read, may sync).
        """
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        for name, value in (("steps_per_epoch", steps_per_epoch),
                            ("validation_steps", validation_steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
        if steps_per_epoch is None and length(self.training) is None:
            raise ValueError(f"the training data ({type(self.training).__name__}) has no length "
                             "(a generator, an IterableDataset, a stream): pass "
                             "steps_per_epoch=... to say how many batches make an epoch")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self.loss is None and step is None:
            raise ValueError("TrainingLoop needs loss=... unless fit() is given a custom step")
        if length(self.training) == 0:
            raise ValueError(f"the training data ({type(self.training).__name__}) is empty")
        options = StepOptions(precision, accumulate_grad_batches, clip_grad_norm, compile)
        session = distributed.setup(None if device == "auto" else resolve_device(device))
        try:
            first_epoch = self._begin(model, epochs, session, device, [*self.callbacks, *callbacks],
                                      options, step, strategy, resume, steps_per_epoch,
                                      validation_steps)
            self._sync_debug = bool(sync_debug)
        except BaseException:
            self._remove_callback_metrics()
            session.close(failed=True)
            raise
        failed = False
        try:
            with self._interrupt_guard():
                self._with_events(Event.FIT_START, Event.FIT_END, CancelFit, self._run_epochs,
                                  first_epoch, always_end=True)
        except BaseException:
            failed = True
            raise
        finally:
            assert self._step is not None
            self._step.close()
            self._remove_callback_metrics()
            session.close(failed)
        return self.history

    def evaluate(
        self, model: nn.Module, data: Iterable[Any], device: str | torch.device = "auto"
    ) -> dict[str, float]:
        """One pass over ``data`` without callbacks; the metrics by plain name.

        Runs with copies of the metrics and leaves the loop's state as it was, so a callback
        may call it in the middle of a fit.
        """
        if self.loss is None and self._custom is None:
            raise ValueError("evaluate() needs the loop's loss=...")
        was_training = model.training
        with self._borrowed_state():
            self.device = resolve_device(device)
            self.model = model.to(self.device)
            self.metrics = [copy.deepcopy(m) for m in self.metrics]
            self._handlers, self._deferred = resolve_handlers([]), []
            self._step = self._make_step(self.model, self._options, self._custom, inference=True)
            try:
                self._run_phase(_VALIDATION, data, record=False)
            finally:
                model.train(was_training)  # as predict: the caller's model keeps its mode
            assert self._phase_stats is not None
            return dict(self._phase_stats)

    @torch.no_grad()
    def predict(
        self, model: nn.Module, data: Iterable[Any], device: str | torch.device = "auto"
    ) -> list[Any]:
        """The model's outputs, one per batch, on the CPU; targets in the batches are ignored.

        Runs as validation does: eval mode, no gradients, the last fit's precision and
        compiled forward.
        """
        target_device = resolve_device(device)
        model = model.to(target_device)
        step = self._make_step(model, self._options, None, device=target_device, inference=True)
        was_training = model.training
        model.eval()
        outputs = []
        try:
            for index, batch in enumerate(data):
                if isinstance(batch, (tuple, list)) and len(batch) == 2:
                    batch = batch[0]
                output = step.predict(move_to_device(batch, target_device), f"batch {index}")
                outputs.append(move_to_device(output, torch.device("cpu")))
        finally:
            model.train(was_training)
        return outputs

    @property
    def last_stats(self) -> dict[str, float]:
        """Running metric values of the current phase as floats (this reads the device)."""
        if self._phase_stats is not None:
            return dict(self._phase_stats)
        return {metric.name: metric.compute() for metric in self.metrics
                if self.is_training or not metric.training_only}

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
        if self.position.phase is Phase.TRAINING and self._phase_stats is None:
            self._check_finite({"loss": self.metrics[0].compute()}, self._losses)

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs, except the model's weights (tensors and plain data).

        Valid at ``BATCH_END`` of a training batch that ended with an update, at ``EPOCH_END``,
        and after an interrupt. A collective under torchrun: every rank calls it.
        """
        assert self._step is not None and self.model is not None
        return resume.capture(
            position=self.position, epoch_index=self.epoch_index, global_step=self.global_step,
            history=self.history, metrics=self.metrics, model=self.model,
            optimizer=self.optimizer, scaler=self._step.scaler, callbacks=self.fit_callbacks,
            stream=self._stream, validation=self._val_data)

    def show(self) -> None:
        """Print, for each event in the order it fires, the callbacks that listen to it.

        fastai's ``show_training_loop``: the loop's own callbacks (defaults first), as a fit
        would resolve them; callbacks given to ``fit`` are not known here.
        """
        handlers = resolve_handlers(self.callbacks)
        depth = {Event.FIT_START: 0, Event.EPOCH_START: 1, Event.TRAINING_START: 2,
                 Event.BATCH_START: 3, Event.UPDATE_START: 3, Event.BATCH_END: 3,
                 Event.TRAINING_END: 2, Event.VALIDATION_START: 2,
                 Event.INFERENCE_PREDICTION_END: 3, Event.VALIDATION_END: 2,
                 Event.EPOCH_END: 1, Event.FIT_END: 0}
        width = max(len(event.name) + 2 * depth[event] for event in Event)
        for event in Event:
            names = ", ".join(label.rsplit(".<locals>.", 1)[-1]  # a function's own name
                              for label, _ in handlers[event]) or "-"
            print(f"{'  ' * depth[event] + event.name:<{width}}  {names}")

    def call_after_event(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every handler of the event being fired has run.

        A checkpoint uses this so that it sees every callback's state for this event,
        wherever it stands in the callback list.
        """
        self._deferred.append(action)

    # -- the nest: fit → epoch → phase → batch → step ------------------------------------------
    def _run_epochs(self, first_epoch: int) -> None:
        epochs = range(first_epoch, self.epoch_count)
        for self.epoch_index in epochs:
            self._start_epoch()
            self._with_events(Event.EPOCH_START, Event.EPOCH_END, CancelEpoch, self._run_epoch,
                              before_end=self._end_epoch)
            if self.stop_training:
                break

    def _run_epoch(self) -> None:
        if self._plan is None or self._plan.phase is not Phase.VALIDATION:
            self._run_phase(_TRAINING, self._train_data)
        self._plan = None
        if self._val_data is not None:
            self._run_phase(_VALIDATION, self._val_data)
        if self._stream.exhausted:  # as Keras: an iterator that ran out ends the training
            warnings.warn(f"the training data ran out of batches in epoch {self.epoch_index + 1} "
                          "and could not start again (a one-shot iterator?): the fit stops "
                          "after this epoch", RuntimeWarning, stacklevel=2)
            self.stop_training = True

    def _run_phase(self, events: _PhaseEvents, data: Iterable[Any], record: bool = True) -> None:
        run = self._start_phase(events, data, record)
        self._with_events(events.start, events.end, events.cancel, self._run_batches, run,
                          before_end=lambda cancelled: self._end_phase(events, run, cancelled))

    def _run_batches(self, run: _PhaseRun) -> None:
        training = self.is_training
        with torch.set_grad_enabled(training):
            batches = self._batches(run.data, training)
            for self.batch_index, batch in batches:
                self._take(batch)  # a host-to-device copy: outside the sync check
                assert self.device is not None
                with devices.sync_debug(self._sync_debug, self.device):
                    self._with_events(Event.BATCH_START, Event.BATCH_END, CancelBatch,
                                      self._run_step, run, before_end=self._end_batch)
                run.batches += 1
                if training and self._warming_up:  # exclude compilation from the rate
                    self._warming_up = False
                    synchronize(self.device)
                    run.examples, run.tokens, run.started = 0, 0, time.perf_counter()
                if self.interrupted:
                    where = (f"after {self.position.phase.label} batch {self.batch_index} of "
                             f"epoch {self.epoch_index + 1}")
                    if self.preempted:
                        raise Preempted(f"SIGTERM: the fit stopped {where}")
                    raise KeyboardInterrupt(f"interrupted {where}")
            if training and self._step is not None and self._step.pending:
                with contextlib.suppress(CancelBatch):  # micro-batches left at the phase's end
                    self._update()

    def _run_step(self, run: _PhaseRun) -> None:
        try:
            self._step_and_measure(run)
        except Exception as error:
            devices.raise_if_host_sync(error, "the step", "the training loop or the step")
            raise

    def _step_and_measure(self, run: _PhaseRun) -> None:
        assert self._step is not None
        training = self.is_training
        if training:
            step = self.global_step
            last = self.batch_count is not None and self.batch_index + 1 >= self.batch_count
            loss, output, update_due = self._step.forward_backward(
                self.last_input, self.last_target, last=last,
                where=f"training batch {self.batch_index}")
            self.last_loss = loss
            if output is not None:  # a custom step sets last_output itself, if at all
                self.last_output = output
            if update_due:
                self._update()
            assert run.losses is not None
            run.losses.add(loss, (self.batch_index, step))
        else:
            self.last_loss, output = self._step.infer(
                self.last_input, self.last_target, where=f"validation batch {self.batch_index}",
                on_prediction=self._on_prediction)
        metrics = self.metrics if training else [m for m in self.metrics if not m.training_only]
        if self.last_target is not None:
            # a shard's padding sits at the end of its pass: count rows by the pass position
            position = self._stream.drawn - 1 if training else self.batch_index
            rows = None if self._padding is None else self._padding.rows(position)
            update_metrics(metrics, self.last_loss, self.last_output, self.last_target, rows,
                           self.loss)
        else:  # a batch without a target (a custom step's): only the loss, weighed by examples
            self.metrics[0].update(self.last_loss, self.last_input, None)
        run.examples += batch_size(self.last_target) or batch_size(self.last_input)
        run.tokens += token_count(self.last_input)

    def _update(self) -> None:
        assert self._step is not None
        self._step.update()  # fires UPDATE_START; a CancelBatch there means no update
        self.global_step += 1

    # -- around the nest -----------------------------------------------------------------------
    def _with_events(self, start: Event, end: Event, cancel: type[LoopControl],
                     body: Callable[..., None], *args: Any,
                     before_end: Callable[[bool], None] | None = None,
                     always_end: bool = False) -> None:
        """Fire ``start``, run ``body(*args)``, catch its ``cancel``, fire ``end``.

        ``before_end(cancelled)`` runs just before ``end``. Any other error skips ``end``
        (unless ``always_end``: ``FIT_END`` fires before the error is re-raised).
        """
        cancelled = False
        try:
            self._fire(start)
            body(*args)
        except cancel:
            cancelled = True
        except BaseException:
            if always_end:
                self._fire(end)
            raise
        if before_end is not None:
            before_end(cancelled)
        self._fire(end)

    def _fire(self, event: Event) -> None:
        label = ""
        try:
            try:
                for label, handler in self._handlers[event]:  # noqa: B007 - names the culprit
                    handler(self)
            except LoopControl as control:
                if not ends_within(control, event):
                    raise
            finally:  # what the event's handlers asked for runs even when one cancelled
                while self._deferred:
                    action = self._deferred.pop(0)
                    label = f"{getattr(action, '__qualname__', 'an action')} (deferred)"
                    action()
        except LoopControl:
            raise
        except Exception as error:
            devices.raise_if_host_sync(error, event.name, f"callback {label}")
            _compat.add_note(error, f"raised by callback {label} at {event.name}")
            raise

    def _on_prediction(self, output: Any) -> None:
        if output is not None:
            self.last_output = output
        self._fire(Event.INFERENCE_PREDICTION_END)

    def _start_phase(self, events: _PhaseEvents, data: Iterable[Any], record: bool) -> _PhaseRun:
        assert self.model is not None
        training = events.phase is Phase.TRAINING
        self.is_training = training
        self.model.train(training)
        self.batch_count = length(data)
        if training and self._stream.steps_per_epoch is not None:
            self.batch_count = self._stream.steps_per_epoch
        elif not training and self._validation_steps is not None:
            self.batch_count = self._validation_steps if self.batch_count is None else min(
                self.batch_count, self._validation_steps)
        self._phase_stats = None
        self.position = Position(events.phase, 0)
        for metric in self.metrics:
            metric.reset()
        self._losses = Tape() if training else None
        self._padding = distributed.padding(data)  # a shard's padding: left out of the metrics
        return _PhaseRun(data, record, started=time.perf_counter(), losses=self._losses)

    def _batches(self, data: Iterable[Any], training: bool) -> Iterator[tuple[int, Any]]:
        """``(batch index, batch)`` pairs; a resumed training phase starts where it stopped."""
        if not training:
            if self._validation_steps is not None:
                data = itertools.islice(data, self._validation_steps)
            return enumerate(data)
        done = 0
        if self._plan is not None and self._plan.phase is Phase.TRAINING:
            assert self.device is not None
            done = self._plan.completed
            self._plan.restore_metrics(self.metrics, self.device)
        return enumerate(self._stream.epoch(self.epoch_index, done), start=done)

    def _take(self, batch: Any) -> None:
        """Move the batch to the device as ``last_input`` and ``last_target``.

        An ``(input, target)`` pair is split; with a custom step any other batch (a dict, a
        triple, an object with ``.to``) is the input, and a dict's ``"labels"`` the target.
        """
        assert self.device is not None
        self.last_output = self.last_loss = None
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            self.last_input = move_to_device(batch[0], self.device, non_blocking=True)
            self.last_target = move_to_device(batch[1], self.device, non_blocking=True)
            return
        if self._custom is None:
            raise BatchError(f"{self.position.phase.label} batch {self.batch_index} is a "
                             f"{type(batch).__name__}, not an (input, target) pair (other "
                             "batches need a custom step: fit(..., step=...))")
        self.last_input = move_to_device(batch, self.device, non_blocking=True)
        self.last_target = self.last_input.get("labels") if isinstance(
            self.last_input, Mapping) else None

    def _end_batch(self, cancelled: bool) -> None:
        self.position.completed = self.batch_index + 1

    def _end_phase(self, events: _PhaseEvents, run: _PhaseRun, cancelled: bool) -> None:
        """The phase's one sync: reduce and read its metrics, check the loss, record them."""
        distributed.reduce_metrics(self.metrics)  # global values on every rank
        training = events.phase is Phase.TRAINING
        stats = {metric.name: metric.compute() for metric in self.metrics
                 if training or not metric.training_only}
        if training:
            resumed = self._plan is not None and self._plan.completed > 0
            if run.batches == 0 and not cancelled and self.epoch_index == 0 and not resumed:
                raise ValueError(f"the training data ({type(run.data).__name__}) yielded no "
                                 "batch")
            seconds = max(time.perf_counter() - run.started, 1e-9)
            self.examples_per_second = run.examples / seconds
            self.tokens_per_second = run.tokens / seconds if run.tokens else None
            self._check_finite(stats, run.losses)
        self._phase_stats = stats
        if run.record:
            epoch = self.history.epochs[-1]
            epoch.update({events.prefix + name: value for name, value in stats.items()})
            if events.phase is Phase.TRAINING:
                epoch["examples_per_second"] = self.examples_per_second
                if self.tokens_per_second is not None:
                    epoch["tokens_per_second"] = self.tokens_per_second

    def _end_epoch(self, cancelled: bool) -> None:
        self.position = Position(Phase.EPOCH_END, 0)

    def _start_epoch(self) -> None:
        """A History record for the epoch (kept from the checkpoint on resume), ``set_epoch``."""
        if not (self.history.epochs and self.history.epochs[-1]["epoch"] == self.epoch_index + 1):
            self.history.epochs.append({"epoch": self.epoch_index + 1})
        self._stream.begin_epoch(self.epoch_index)  # set_epoch on the training data, or later
        if self._val_data is not None:
            distributed.set_epoch(self._val_data, self.epoch_index)  # or its sampler's

    def _check_finite(self, stats: dict[str, float], losses: Tape | None) -> None:
        """Raise NonFiniteLossError naming the first bad batch if the phase's loss is not finite."""
        if math.isfinite(stats.get("loss", 0.0)) or losses is None:
            return
        flat = losses.flat()
        bad = torch.nonzero(~torch.isfinite(flat.float())) if flat is not None else None
        if bad is not None and len(bad):
            batch, step = losses.tags[int(bad[0, 0])]
            raise NonFiniteLossError(epoch=self.epoch_index + 1, step=step, batch=batch)

    # -- set-up --------------------------------------------------------------------------------
    def _begin(self, model: nn.Module, epochs: int, session: distributed.Session,
               device: str | torch.device, callbacks: list[Any], options: StepOptions,
               custom: CustomStep | None, strategy: str,
               resume_from: bool | str | Path | None, steps_per_epoch: int | None,
               validation_steps: int | None) -> int:
        """Set up the state of a fit (and restore a checkpoint); returns the first epoch."""
        self.device = session.device or resolve_device(device)
        self.model = distributed.wrap(model.to(self.device), self.optimizer, strategy, self.device)
        self._train_data = distributed.shard(self.training)
        self._val_data = None if self.validation is None else distributed.shard(self.validation)
        generators = checkpointing.data_generators(self._train_data, self._val_data)
        self._stream = TrainingStream(self._train_data, steps_per_epoch, generators)
        self._validation_steps = validation_steps
        self.epoch_count = epochs
        self.fit_callbacks = callbacks
        self._handlers, self._deferred = resolve_handlers(callbacks), []
        self._add_callback_metrics(callbacks)
        self._options, self._custom = options, custom
        self._step = self._make_step(self.model, options, custom)
        self.history, self.global_step, self.stop_training = History(), 0, False
        self.interrupted, self.preempted, self.position, self._plan = False, False, Position(), None
        self._warming_up = self._step.compiled
        batches = steps_per_epoch or length(self._train_data)
        self.total_steps = None if batches is None else epochs * math.ceil(
            batches / options.accumulate_grad_batches)
        if not resume_from:
            return 0
        path = resume.find(resume_from, [c.dir for c in callbacks if isinstance(c, Checkpoint)])
        plan = resume.restore(path, model=self.model, optimizer=self.optimizer,
                              scaler=self._step.scaler, history=self.history, callbacks=callbacks,
                              stream=self._stream, validation=self._val_data)
        self.global_step = plan.global_step
        self._plan = None if plan.phase is Phase.EPOCH_END else plan
        return plan.first_epoch

    def _add_callback_metrics(self, callbacks: Sequence[Any]) -> None:
        """Append the metrics callbacks contribute (their ``metrics`` list) for this fit."""
        self._remove_callback_metrics()
        added = [metric for callback in callbacks for metric in getattr(callback, "metrics", ())]
        for metric in added:
            if not isinstance(metric, Metric):
                raise TypeError(f"a callback's metrics must be trainingloop.metrics.Metric "
                                f"objects, got {metric!r}")
        names = [metric.name for metric in [*self.metrics, *added]]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"metric names must be unique; callbacks repeat: {repeated}")
        self._callback_metrics = added
        self.metrics = [*self.metrics, *added]

    def _remove_callback_metrics(self) -> None:
        """Take the callbacks' metrics out again (the fit has ended)."""
        added = {id(metric) for metric in self._callback_metrics}
        self.metrics = [metric for metric in self.metrics if id(metric) not in added]
        self._callback_metrics = []

    def _make_step(self, model: nn.Module, options: StepOptions, custom: CustomStep | None,
                   device: torch.device | None = None, inference: bool = False) -> Step:
        """The step for ``model``, with the loop bound into the user's updater and step."""
        device = device or self.device
        assert device is not None
        optimizer = self.optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = functools.partial(optimizer, self)
        return Step(model, optimizer, self.loss, device, self._fire, options,
                    None if custom is None else functools.partial(custom, self),
                    inference=inference)

    @contextlib.contextmanager
    def _borrowed_state(self) -> Iterator[None]:
        """Put back every attribute a pass outside ``fit`` (``evaluate``) changes."""
        names = ("model", "device", "metrics", "is_training", "batch_index", "batch_count",
                 "last_input", "last_target", "last_output", "last_loss", "position",
                 "_handlers", "_deferred", "_step", "_phase_stats", "_losses")
        saved = {name: getattr(self, name) for name in names}
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)

    @contextlib.contextmanager
    def _interrupt_guard(self) -> Iterator[None]:
        """Turn Ctrl-C and SIGTERM into a stop after the current batch.

        A second Ctrl-C stops at once; further SIGTERMs are ignored, so that the checkpoint
        the first one asked for is written whole (a scheduler's SIGKILL after its grace
        period still finds the previous ``last`` intact: writes are atomic).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_interrupt(signum: int, frame: Any) -> None:
            if self.interrupted and not self.preempted:
                raise KeyboardInterrupt
            self.interrupted = True

        def on_terminate(signum: int, frame: Any) -> None:
            self.interrupted = self.preempted = True

        previous = signal.signal(signal.SIGINT, on_interrupt)
        previous_term = signal.signal(signal.SIGTERM, on_terminate)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            signal.signal(signal.SIGTERM, previous_term)
