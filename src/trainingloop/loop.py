"""The training loop: the nest fit → epoch → phase → batch → step, its events and its state.

:class:`TrainingLoop` owns iteration and every counter callbacks read, as plain 0-based
attributes; one helper, :meth:`TrainingLoop._with_events`, writes "fire START, run the body,
catch its ``Cancel*``, fire END" for every level. Around the nest, each piece has its module:
firing the events is :class:`trainingloop.callbacks.base.Dispatcher`'s; the step (forward,
loss, backward, update) is :class:`trainingloop.step.Step`, a function of the batch it is
given; what a phase counts (metrics, examples, the losses) is
:class:`trainingloop.meter.PhaseMeter`; the training data's position is
:class:`trainingloop.stream.TrainingStream`'s; exact resume is :mod:`trainingloop.resume`;
Ctrl-C and SIGTERM are :mod:`trainingloop._signals`; everything else (progress, logging,
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
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainingloop import _signals, checkpointing, devices, distributed, resume
from trainingloop.callbacks.base import Dispatcher, describe_handlers
from trainingloop.callbacks.checkpoint import Checkpoint
from trainingloop.devices import resolve_device, synchronize
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
from trainingloop.meter import PhaseMeter
from trainingloop.metrics import Metric, contributed_metrics, resolve_metrics
from trainingloop.resume import Phase, Position
from trainingloop.step import LossFunction, Step, StepOptions, check_arguments, split_batch
from trainingloop.stream import TrainingStream, check_counts, phase_length

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
        check_arguments(optimizer, loss)
        self.training = training
        self.validation = validation
        self.optimizer: torch.optim.Optimizer | Updater = optimizer  # type: ignore[assignment]  # checked: not None
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
        self.tokens_per_second: float | None = None  # for token inputs (language models)
        self.total_steps: int | None = None  # optimizer updates in the whole fit, if known
        self.interrupted = False  # set by Ctrl-C; the fit stops after the current batch
        self.preempted = False  # set by SIGTERM; the fit stops after the current batch
        self.position = Position()  # the phase and its finished batches, for checkpoints
        self.fit_callbacks: list[Any] = []  # this fit's callbacks: the loop's and fit()'s

        self._events = Dispatcher(self)  # this fit's callbacks' handlers
        self._phase_stats: dict[str, float] | None = None
        self._step: Step | None = None
        self._options = StepOptions()
        self._custom: CustomStep | None = None
        self._train_data: Any = training
        self._val_data: Any = validation
        self._stream = TrainingStream(training, None)
        self._validation_steps: int | None = None
        self._plan: resume.Plan | None = None  # set by a resume until its phase has run
        self._meter = PhaseMeter([], False, (), False, None)  # the current phase's counts
        self._warming_up = False
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
        check_counts(self.training, steps_per_epoch, validation_steps)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self.loss is None and step is None:
            raise ValueError("TrainingLoop needs loss=... unless fit() is given a custom step")
        options = StepOptions(precision, accumulate_grad_batches, clip_grad_norm, compile)
        session = distributed.setup(None if device == "auto" else resolve_device(device))
        failed = True
        try:
            first_epoch = self._begin(model, epochs, session, device, [*self.callbacks, *callbacks],
                                      options, step, strategy, resume, steps_per_epoch,
                                      validation_steps)
            self._sync_debug = bool(sync_debug)
            with _signals.stop_after_batch(self):
                self._with_events(Event.FIT_START, Event.FIT_END, CancelFit, self._run_epochs,
                                  first_epoch, always_end=True)
            failed = False
        finally:
            if self._step is not None:
                self._step.close()  # learning rates that compiling made tensors: floats again
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
            self._events = Dispatcher(self)
            self._step = self._make_step(self.model, self._options, self._custom, inference=True)
            try:
                self._run_phase(_VALIDATION, data, record=False)
            finally:
                model.train(was_training)  # as predict: the caller's model keeps its mode
            assert self._phase_stats is not None
            return dict(self._phase_stats)

    def predict(
        self, model: nn.Module, data: Iterable[Any], device: str | torch.device = "auto"
    ) -> list[Any]:
        """The model's outputs, one per batch, on the CPU; targets in the batches are ignored.

        Runs as validation does: eval mode, no gradients, the last fit's precision and
        compiled forward.
        """
        target_device = resolve_device(device)
        return self._make_step(model.to(target_device), self._options, None,
                               device=target_device, inference=True).predict_all(data)

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
            self._check_finite({"loss": self.metrics[0].compute()})

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
        print(describe_handlers(self.callbacks))

    def call_after_event(self, action: Callable[[], None]) -> None:
        """Run ``action`` once every handler of the event being fired has run.

        A checkpoint uses this so that it sees every callback's state for this event,
        wherever it stands in the callback list.
        """
        self._events.defer(action)

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
        self._start_phase(events, data, record)
        self._with_events(events.start, events.end, events.cancel, self._run_batches, data,
                          before_end=lambda cancelled: self._end_phase(events, cancelled))

    def _run_batches(self, data: Iterable[Any]) -> None:
        training, meter = self.is_training, self._meter
        with torch.set_grad_enabled(training):
            batches = self._batches(data, training)
            assert self.device is not None
            for self.batch_index, batch in batches:
                self.last_output = self.last_loss = None
                # the copy to the device stays outside the sync check below
                self.last_input, self.last_target = split_batch(
                    batch, self.device, self._custom is not None, self.position.phase.label,
                    self.batch_index)
                with devices.sync_debug(self._sync_debug, self.device):
                    self._with_events(Event.BATCH_START, Event.BATCH_END, CancelBatch,
                                      self._run_step, before_end=self._end_batch)
                meter.batches += 1
                if training and self._warming_up:  # exclude compilation from the rate
                    self._warming_up = False
                    synchronize(self.device)
                    meter.restart_clock()
                if self.interrupted:
                    _signals.stop(self.preempted, f"after {self.position.phase.label} batch "
                                  f"{self.batch_index} of epoch {self.epoch_index + 1}")
            if training and self._step is not None and self._step.pending:
                with contextlib.suppress(CancelBatch):  # micro-batches left at the phase's end
                    self._update()

    def _run_step(self) -> None:
        assert self._step is not None
        try:
            if self.is_training:
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
                # a shard's padding sits at the end of its pass: found by the pass position
                position, tag = self._stream.drawn - 1, (self.batch_index, step)
            else:
                self.last_loss, _ = self._step.infer(
                    self.last_input, self.last_target, on_prediction=self._on_prediction,
                    where=f"validation batch {self.batch_index}")
                position, tag = self.batch_index, None
            self._meter.add(self.last_loss, self.last_output, self.last_input, self.last_target,
                            position, tag)
        except Exception as error:
            devices.raise_if_host_sync(error, "the step", "the training loop or the step")
            raise

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
            self._events.fire(start)
            body(*args)
        except cancel:
            cancelled = True
        except BaseException:
            if always_end:
                self._events.fire(end)
            raise
        if before_end is not None:
            before_end(cancelled)
        self._events.fire(end)

    def _on_prediction(self, output: Any) -> None:
        if output is not None:
            self.last_output = output
        self._events.fire(Event.INFERENCE_PREDICTION_END)

    def _start_phase(self, events: _PhaseEvents, data: Iterable[Any], record: bool) -> None:
        assert self.model is not None
        training = events.phase is Phase.TRAINING
        self.is_training = training
        self.model.train(training)
        self.batch_count = self._stream.batches_per_epoch if training else phase_length(
            data, self._validation_steps)
        self._phase_stats = None
        self.position = Position(events.phase, 0)
        self._meter = PhaseMeter(self.metrics, training, data, record, self.loss)

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

    def _end_batch(self, cancelled: bool) -> None:
        self.position.completed = self.batch_index + 1

    def _end_phase(self, events: _PhaseEvents, cancelled: bool) -> None:
        """The phase's one sync: reduce and read its metrics, check the loss, record them."""
        meter = self._meter
        stats = meter.finish()
        if meter.training:
            resumed = self._plan is not None and self._plan.completed > 0
            if meter.batches == 0 and not cancelled and self.epoch_index == 0 and not resumed:
                raise ValueError(f"the training data ({type(meter.data).__name__}) yielded no "
                                 "batch")
            self.examples_per_second, self.tokens_per_second = meter.rates()
            self._check_finite(stats)
        self._phase_stats = stats
        if meter.record:
            epoch = self.history.epochs[-1]
            epoch.update({events.prefix + name: value for name, value in stats.items()})
            if meter.training:
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

    def _check_finite(self, stats: dict[str, float]) -> None:
        """Raise NonFiniteLossError naming the first bad batch if the phase's loss is not finite."""
        bad = self._meter.first_non_finite(stats)
        if bad is not None:
            raise NonFiniteLossError(epoch=self.epoch_index + 1, step=bad[1], batch=bad[0])

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
        self._events = Dispatcher(self, callbacks)
        self._remove_callback_metrics()
        self._callback_metrics = contributed_metrics(self.metrics, callbacks)
        self.metrics = [*self.metrics, *self._callback_metrics]
        self._options, self._custom = options, custom
        self._step = self._make_step(self.model, options, custom)
        self.history, self.global_step, self.stop_training = History(), 0, False
        self.interrupted, self.preempted, self.position, self._plan = False, False, Position(), None
        self._warming_up = self._step.compiled
        batches = self._stream.batches_per_epoch
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
        return Step(model, optimizer, self.loss, device, self._events.fire, options,
                    None if custom is None else functools.partial(custom, self),
                    inference=inference)

    @contextlib.contextmanager
    def _borrowed_state(self) -> Iterator[None]:
        """Put back every attribute a pass outside ``fit`` (``evaluate``) changes."""
        names = ("model", "device", "metrics", "is_training", "batch_index", "batch_count",
                 "last_input", "last_target", "last_output", "last_loss", "position",
                 "_events", "_step", "_phase_stats", "_meter")
        saved = {name: getattr(self, name) for name in names}
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
