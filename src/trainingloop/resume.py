"""Where a fit stands, and how a checkpoint captures and restores it for an exact resume.

This module owns the loop's position (:class:`Phase`, :class:`Position`), the content of a
checkpoint's ``state.pt`` (:func:`capture`) and the way back (:func:`restore`, then
:func:`batches` for the interrupted training phase). The loop calls these with its state;
storage (files, sums, atomic writes) is :mod:`trainingloop.checkpointing`.

A resumed fit continues at the checkpoint's position: after an epoch's end it starts the next
epoch; mid-training it restores the RNG states of the epoch's start, lets the data skip (its
own ``load_state_dict``) or replays the batches already done, restores the running metric
sums and the RNG states of the checkpoint; in validation it redoes that validation.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainingloop import checkpointing, distributed
from trainingloop.history import History
from trainingloop.metrics import Metric

__all__ = ["Phase", "Plan", "Position", "batches", "capture", "find", "restore"]


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
    """What :func:`restore` found: where to continue and what the training phase restores."""

    first_epoch: int
    global_step: int
    phase: Phase
    completed: int
    metrics: list[Any] | None
    epoch_rng: dict[str, Any] | None
    rng: dict[str, Any]
    data_restored: bool


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
            callbacks: Sequence[Any], data: Any, generators: Sequence[torch.Generator],
            epoch_rng: dict[str, Any] | None) -> dict[str, Any]:
    """Everything an exact resume needs except the weights, as tensors and plain data.

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
    data_state = getattr(data, "state_dict", None)
    rng = checkpointing.rng_state(generators)
    return {
        "epoch_index": epoch_index,
        "phase": position.phase.value,
        "position": position.completed,
        "global_step": global_step,
        "history": history.state_dict(),
        "metrics": [[m.sums, m.count] if m.sums is not None else None
                    for m in metrics] if mid_training else None,
        "rng": rng,
        "epoch_rng": epoch_rng,
        "rng_by_rank": distributed.gather_objects([rng, epoch_rng])
        if distributed.world_size() > 1 else None,
        "data": data_state() if callable(data_state) and mid_training else None,
        "optimizer": optimizer_state,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "callbacks": states,
    }


def restore(path: Path, *, model: nn.Module, optimizer: Any, scaler: Any, history: History,
            callbacks: Sequence[Any], data: Any, generators: Sequence[torch.Generator]) -> Plan:
    """Load the checkpoint at ``path`` into the fit's objects; returns where to continue."""
    state = checkpointing.load(path, model)
    if state.get("rng_by_rank"):
        state["rng"], state["epoch_rng"] = state["rng_by_rank"][distributed.rank()]
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
    if phase is not Phase.TRAINING:  # the RNGs continue from the checkpoint's moment
        checkpointing.restore_rng(state["rng"], generators)
    if state["data"] is not None:
        data.load_state_dict(state["data"])
    return Plan(first_epoch=epoch + 1 if phase is Phase.EPOCH_END else epoch,
                global_step=int(state["global_step"]), phase=phase,
                completed=int(state["position"]), metrics=state["metrics"],
                epoch_rng=state["epoch_rng"], rng=state["rng"],
                data_restored=state["data"] is not None)


def batches(plan: Plan, data: Iterable[Any], generators: Sequence[torch.Generator],
            metrics: Sequence[Metric], device: torch.device) -> Iterator[tuple[int, Any]]:
    """``(batch index, batch)`` of the interrupted training phase, from where it stopped.

    Restores the epoch's starting RNG states, skips (data that restored its own position) or
    replays the batches already done, then the checkpoint's RNG states and metric sums.
    """
    if plan.epoch_rng is not None:
        checkpointing.restore_rng(plan.epoch_rng, generators)
    iterator = iter(data)
    if not plan.data_restored:  # no saved position: replay the epoch's order up to it
        for _ in range(plan.completed):
            next(iterator)
    checkpointing.restore_rng(plan.rng, generators)
    for metric, saved in zip(metrics, plan.metrics or []):
        if saved is not None:
            metric.sums = saved[0].to(device)
            metric.count = saved[1]
    return enumerate(iterator, start=plan.completed)
