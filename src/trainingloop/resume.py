"""Where a fit stands, and how a checkpoint captures and restores it for an exact resume.

This module owns the loop's position (:class:`Phase`, :class:`Position`), the content of a
checkpoint's ``state.pt`` (:func:`capture`) and the way back (:func:`restore`). The loop calls
these with its state; storage (files, sums, atomic writes) is :mod:`trainingloop.checkpointing`
and the data's position is the :class:`~trainingloop.stream.TrainingStream`'s.

A resumed fit continues at the checkpoint's position: after an epoch's end it starts the next
epoch; mid-training the stream reopens its pass where it stood (the RNG states of the pass's
start, then a skip or a replay, then the checkpoint's RNG states) and the running metric sums
come back; in validation it redoes that validation.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainingloop import checkpointing, distributed
from trainingloop.history import History
from trainingloop.metrics import Metric
from trainingloop.stream import TrainingStream, length

__all__ = ["Phase", "Plan", "Position", "capture", "find", "restore"]


class Phase(enum.Enum):
    """The part of the fit the loop is in; the value is the name logs use."""

    IDLE = "idle"
    TRAINING = "train"
    VALIDATION = "validation"
    EPOCH_END = "epoch_end"

    @property
    def label(self) -> str:
        """``training`` or ``validation``, as error messages say it."""
        return "training" if self is Phase.TRAINING else self.value


@dataclass
class Position:
    """Where the fit stands within its epoch (``loop.epoch_index`` says which epoch).

    ``completed`` counts the batches finished in the current phase. A checkpoint is valid at
    ``BATCH_END`` of a training batch that ended with an update, at ``EPOCH_END``, and after
    an interrupt.
    """

    phase: Phase = Phase.IDLE
    completed: int = 0


@dataclass
class Plan:
    """What :func:`restore` found: where to continue, and the interrupted phase's metric sums."""

    first_epoch: int
    global_step: int
    phase: Phase
    completed: int
    metrics: list[Any] | None

    def restore_metrics(self, metrics: Sequence[Metric], device: torch.device) -> None:
        """Put the running sums of the interrupted training phase back into ``metrics``."""
        for metric, saved in zip(metrics, self.metrics or []):
            if saved is not None:
                metric.sums = saved[0].to(device)
                metric.count = saved[1]


def keyed(callbacks: Sequence[Any]) -> list[tuple[str, Any]]:
    """Each callback with the key its state has in a checkpoint (index and class name)."""
    return [(f"{i}:{type(c).__name__}", c) for i, c in enumerate(callbacks)]


def find(resume: bool | str | Path, folders: Sequence[Path]) -> Path:
    """The checkpoint ``resume`` names: True is the newest intact one of ``folders[0]``."""
    if resume is True:
        if not folders:
            raise ValueError("resume=True needs a tl.Checkpoint callback (its folder is "
                             "searched); or pass the path of a checkpoint")
        return checkpointing.find_latest(Path(folders[0]))
    path = Path(resume)  # type: ignore[arg-type]
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path.resolve()


def capture(*, position: Position, epoch_index: int, global_step: int, history: History,
            metrics: Sequence[Metric], model: nn.Module, optimizer: Any, scaler: Any,
            callbacks: Sequence[Any], stream: TrainingStream,
            validation: Any = None) -> dict[str, Any]:
    """Everything an exact resume needs except the weights, as tensors and plain data.

    ``validation`` data without a length that keeps a state of its own (an endless random
    stream) is saved too, so that a resumed fit validates on the same batches.

    A collective under torchrun (it gathers each rank's RNG states): call it on every rank.
    """
    mid_training = position.phase is Phase.TRAINING
    states = {}
    for key, callback in keyed(callbacks):
        state_dict = getattr(callback, "state_dict", None)
        if callable(state_dict):
            states[key] = state_dict()
    optimizer_state = None
    if isinstance(optimizer, torch.optim.Optimizer):
        bare = checkpointing.unwrap(model)
        optimizer_state = (distributed.full_optimizer_state(bare, optimizer)
                           if distributed.is_sharded(bare) else optimizer.state_dict())
    data_state = getattr(stream.data, "state_dict", None)
    rng = checkpointing.rng_state(stream.generators)
    stream_state = stream.state_dict()
    return {
        "epoch_index": epoch_index,
        "phase": position.phase.value,
        "position": position.completed,
        "global_step": global_step,
        "history": history.state_dict(),
        "metrics": [[m.sums, m.count] if m.sums is not None else None
                    for m in metrics] if mid_training else None,
        "rng": rng,
        "stream": stream_state,
        "rng_by_rank": distributed.gather_objects([rng, stream_state["pass_rng"]])
        if distributed.world_size() > 1 else None,
        "data": data_state() if callable(data_state) and stream.mid_pass else None,
        "validation_data": validation.state_dict()  # a finite set restarts every phase
        if callable(getattr(validation, "state_dict", None)) and length(validation) is None
        else None,
        "optimizer": optimizer_state,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "callbacks": states,
    }


def restore(path: Path, *, model: nn.Module, optimizer: Any, scaler: Any, history: History,
            callbacks: Sequence[Any], stream: TrainingStream, validation: Any = None) -> Plan:
    """Load the checkpoint at ``path`` into the fit's objects and reopen the stream's pass at
    its position (when the next batch is asked for); returns where to continue."""
    state = checkpointing.load(path, model)
    stream_state = state.get("stream") or {  # written before streams had a state of their own
        "pass": int(state["epoch_index"]), "drawn": int(state["position"]),
        "pass_rng": state.get("epoch_rng")}
    if state.get("rng_by_rank"):
        state["rng"], stream_state["pass_rng"] = state["rng_by_rank"][distributed.rank()]
    if state["optimizer"] is not None:
        bare = checkpointing.unwrap(model)
        if distributed.is_sharded(bare):
            distributed.load_full_optimizer_state(bare, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] is not None and scaler is not None:
        scaler.load_state_dict(state["scaler"])
    history.load_state_dict(state["history"])
    for key, callback in keyed(callbacks):
        if key in state["callbacks"]:
            callback.load_state_dict(state["callbacks"][key])
        elif callable(getattr(callback, "load_state_dict", None)):
            warnings.warn(f"checkpoint {path} holds no state for callback {key}",
                          RuntimeWarning, stacklevel=4)
    phase = Phase(state["phase"])
    epoch = int(state["epoch_index"])
    mid_training = phase is Phase.TRAINING
    if not mid_training:  # the RNGs continue from the checkpoint's moment
        checkpointing.restore_rng(state["rng"], stream.generators)
    if state["data"] is not None:
        stream.data.load_state_dict(state["data"])  # type: ignore[attr-defined]
    if state.get("validation_data") is not None and validation is not None:
        validation.load_state_dict(state["validation_data"])
    if mid_training or stream.steps_per_epoch is not None:  # the pass goes on from there
        stream.load_state_dict(stream_state, data_restored=state["data"] is not None,
                               rng_after=state["rng"] if mid_training else None)
    return Plan(first_epoch=epoch + 1 if phase is Phase.EPOCH_END else epoch,
                global_step=int(state["global_step"]), phase=phase,
                completed=int(state["position"]), metrics=state["metrics"])
