"""Events of the loop and the exceptions that steer it.

This module owns the closed set of events (:class:`Event`) and the control-flow exceptions a
callback raises to cancel part of a fit (after Swift for TensorFlow's ``TrainingLoopAction``).

Where each ``Cancel*`` jumps, and which ``*_END`` events still fire:

=====================  ==========================================  ===========================
raised during          skips                                       still fires
=====================  ==========================================  ===========================
``CancelBatch``        the rest of this batch (step, metrics)      ``BATCH_END``
``CancelTraining``     the remaining training batches              ``TRAINING_END``, then
                                                                   validation as usual
``CancelValidation``   the remaining validation batches            ``VALIDATION_END``
``CancelEpoch``        the rest of the epoch (validation too)      ``EPOCH_END``
``CancelFit``          everything that is left                     ``FIT_END``
=====================  ==========================================  ===========================

A ``Cancel*`` raised by an ``*_END`` handler ends the remaining handlers of that event; one
of that level or below (``CancelBatch`` at ``BATCH_END``, ``CancelTraining`` at
``TRAINING_END``, anything at ``FIT_END``) ends nothing else, one of a higher level then jumps
as above (``CancelFit`` at ``EPOCH_END`` ends the fit). S4TF let ``CancelBatch`` at
``BATCH_END`` escape the fit; we do not. Any other exception aborts the fit; ``FIT_END`` fires
and the error is re-raised after it.
"""

from __future__ import annotations

import enum


class Event(enum.Enum):
    """The twelve events of a fit, in the order they fire (see the module docstring)."""

    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    TRAINING_START = "training_start"
    BATCH_START = "batch_start"
    UPDATE_START = "update_start"
    BATCH_END = "batch_end"
    TRAINING_END = "training_end"
    VALIDATION_START = "validation_start"
    INFERENCE_PREDICTION_END = "inference_prediction_end"
    VALIDATION_END = "validation_end"
    EPOCH_END = "epoch_end"
    FIT_END = "fit_end"

    @property
    def method_name(self) -> str:
        """The :class:`~trainingloop.Callback` method that handles this event."""
        return "on_" + self.value

    @property
    def depth(self) -> int:
        """How deep in the nest fit → epoch → phase → batch the event fires (fit: 0)."""
        return _DEPTH[self]


_DEPTH = {Event.FIT_START: 0, Event.EPOCH_START: 1, Event.TRAINING_START: 2,
          Event.BATCH_START: 3, Event.UPDATE_START: 3, Event.BATCH_END: 3,
          Event.TRAINING_END: 2, Event.VALIDATION_START: 2, Event.INFERENCE_PREDICTION_END: 3,
          Event.VALIDATION_END: 2, Event.EPOCH_END: 1, Event.FIT_END: 0}


class LoopControl(Exception):
    """Base of the ``Cancel*`` signals; never raised itself."""


class CancelBatch(LoopControl):
    """Skip the rest of the current batch; ``BATCH_END`` still fires."""


class CancelTraining(LoopControl):
    """End the training phase of this epoch; validation still runs."""


class CancelValidation(LoopControl):
    """End the validation phase of this epoch."""


class CancelEpoch(LoopControl):
    """End the current epoch; ``EPOCH_END`` still fires."""


class CancelFit(LoopControl):
    """End the fit; ``FIT_END`` still fires and ``fit`` returns its History."""


class Preempted(Exception):
    """The fit was stopped by SIGTERM (what SLURM and Kubernetes send before a kill).

    Raised after the current batch, the checkpoint (with a ``tl.Checkpoint``) and ``FIT_END``;
    a script catches it and exits with 143 so that the scheduler requeues the job, and
    ``fit(..., resume=True)`` continues exactly.
    """


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite.

    ``epoch`` (1-based) and ``step`` (the global step of the first bad batch) name where.
    """

    def __init__(self, epoch: int, step: int, batch: int) -> None:
        self.epoch = epoch
        self.step = step
        self.batch = batch
        super().__init__(
            f"non-finite loss first appeared in epoch {epoch}, training batch {batch + 1} "
            f"(global step {step}); the fit was stopped before validation"
        )


_END_LEVEL = {Event.BATCH_END: 0, Event.TRAINING_END: 1, Event.VALIDATION_END: 1,
              Event.EPOCH_END: 2, Event.FIT_END: 3}
_CANCEL_LEVEL: dict[type[LoopControl], int] = {CancelBatch: 0, CancelTraining: 1,
                                               CancelValidation: 1, CancelEpoch: 2, CancelFit: 3}


def ends_within(control: LoopControl, event: Event) -> bool:
    """Whether ``control``, raised by a handler of ``event``, ends only that event's handlers.

    True for an ``*_END`` event and a ``Cancel*`` of its level or below; False otherwise (the
    cancel then jumps to its own level).
    """
    level = _END_LEVEL.get(event)
    if level is None:
        return False
    return max((v for k, v in _CANCEL_LEVEL.items() if isinstance(control, k)), default=3) <= level
