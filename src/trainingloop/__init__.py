"""trainingloop: one generalized, callback-driven training loop for PyTorch.

>>> import trainingloop as tl
>>> sorted(e.name for e in tl.Event)[:2]
['BATCH_END', 'BATCH_START']

Optional parts (callbacks that need rich, matplotlib, tensorboard, mlflow, wandb or optuna;
data sets; examples) are imported on first use, so ``import trainingloop`` costs little more
than ``import torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trainingloop.callbacks.base import Callback
from trainingloop.devices import try_gpu
from trainingloop.events import (
    CancelBatch,
    CancelEpoch,
    CancelFit,
    CancelTraining,
    CancelValidation,
    Event,
    NonFiniteLossError,
    Preempted,
)
from trainingloop.history import History
from trainingloop.loop import TrainingLoop
from trainingloop.step import BatchError

__version__ = "0.1.0"

# name -> module that defines it; imported lazily on first attribute access.
_LAZY = {
    "ProgressPrinter": "trainingloop.callbacks.progress",
    "CSVLogger": "trainingloop.callbacks.csv_logger",
    "LearningRateScheduler": "trainingloop.callbacks.lr_scheduler",
    "TensorBoardLogger": "trainingloop.callbacks.tensorboard",
    "ProgressPlot": "trainingloop.callbacks.progress_plot",
    "Checkpoint": "trainingloop.callbacks.checkpoint",
    "EarlyStopping": "trainingloop.callbacks.early_stopping",
    "EMA": "trainingloop.callbacks.ema",
    "GradientMonitor": "trainingloop.callbacks.gradient_monitor",
    "Profiler": "trainingloop.callbacks.profiler",
    "lr_find": "trainingloop.lr_finder",
    "LRFinderResult": "trainingloop.lr_finder",
    "summary": "trainingloop.model_summary",
    "MLflowLogger": "trainingloop.callbacks.mlflow_logger",
    "WandbLogger": "trainingloop.callbacks.wandb_logger",
    "OptunaPruning": "trainingloop.callbacks.optuna_pruning",
    "make_schedule": "trainingloop.schedules",
    "ScheduleSegment": "trainingloop.schedules",
}
_LAZY_MODULES = {
    "metrics": "trainingloop.metrics",
    "shapes": "trainingloop.schedules",
    "schedules": "trainingloop.schedules",
    "data": "trainingloop.data",
    "transforms": "trainingloop.data.transforms",
    "datasets": "trainingloop.data.datasets",
    "examples": "trainingloop.examples",
    "distributed": "trainingloop.distributed",
}

__all__ = [
    "EMA",
    "BatchError",
    "CSVLogger",
    "Callback",
    "CancelBatch",
    "CancelEpoch",
    "CancelFit",
    "CancelTraining",
    "CancelValidation",
    "Checkpoint",
    "EarlyStopping",
    "Event",
    "GradientMonitor",
    "History",
    "LRFinderResult",
    "LearningRateScheduler",
    "MLflowLogger",
    "NonFiniteLossError",
    "OptunaPruning",
    "Preempted",
    "Profiler",
    "ProgressPlot",
    "ProgressPrinter",
    "ScheduleSegment",
    "TensorBoardLogger",
    "TrainingLoop",
    "WandbLogger",
    "lr_find",
    "make_schedule",
    "summary",
    "try_gpu",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name == "shapes":
        value = importlib.import_module("trainingloop.schedules").shapes
    elif name in _LAZY_MODULES:
        value = importlib.import_module(_LAZY_MODULES[name])
    else:
        raise AttributeError(f"module 'trainingloop' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_LAZY_MODULES])


if TYPE_CHECKING:
    from trainingloop import data, distributed, examples, metrics, schedules  # noqa: F401
    from trainingloop.callbacks.checkpoint import Checkpoint
    from trainingloop.callbacks.csv_logger import CSVLogger
    from trainingloop.callbacks.early_stopping import EarlyStopping
    from trainingloop.callbacks.ema import EMA
    from trainingloop.callbacks.gradient_monitor import GradientMonitor
    from trainingloop.callbacks.lr_scheduler import LearningRateScheduler
    from trainingloop.callbacks.mlflow_logger import MLflowLogger
    from trainingloop.callbacks.optuna_pruning import OptunaPruning
    from trainingloop.callbacks.profiler import Profiler
    from trainingloop.callbacks.progress import ProgressPrinter
    from trainingloop.callbacks.progress_plot import ProgressPlot
    from trainingloop.callbacks.tensorboard import TensorBoardLogger
    from trainingloop.callbacks.wandb_logger import WandbLogger
    from trainingloop.data import datasets, transforms  # noqa: F401
    from trainingloop.lr_finder import LRFinderResult, lr_find
    from trainingloop.model_summary import summary
    from trainingloop.schedules import ScheduleSegment, make_schedule, shapes  # noqa: F401
