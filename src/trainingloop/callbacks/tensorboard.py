"""TensorBoardLogger: real TensorBoard event files, one timestamped run folder per fit.

Each fit writes ``<log_dir>/<timestamp>/train/`` and ``.../validation/`` so that
``tensorboard --logdir <log_dir>`` overlays the phases. Scalars: ``epoch_<metric>`` at step =
epoch (1-based) for both phases, ``epoch_learning_rate`` for training, and ``batch_<metric>``
at step = global step for training batches. Batch values are snapshotted on the device and
written at epoch end (no host sync per step). Needs the ``tensorboard`` package (the
``tensorboard`` extra).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainingloop import distributed
from trainingloop.callbacks.base import Callback
from trainingloop.metrics import MetricTrace

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(Callback):
    """Logs epoch and batch scalars of a fit to TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike[str] = "run/tensorboard/stats") -> None:
        self.log_dir = Path(log_dir)
        self.run_dir: Path | None = None
        self._writers: dict[str, Any] = {}
        self._trace = MetricTrace()
        self._enabled = True  # rank 0 writes; refreshed at each fit's start

    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = distributed.is_main_process()
        if not self._enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("TensorBoardLogger needs tensorboard: "
                              "pip install 'trainingloop[tensorboard]'") from error
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir, n = self.log_dir / stamp, 1
        while run_dir.exists():
            n += 1
            run_dir = self.log_dir / f"{stamp}-{n}"
        self.run_dir = run_dir
        self._writers = {phase: SummaryWriter(str(run_dir / phase))
                         for phase in ("train", "validation")}

    def writer(self, phase: str = "train") -> Any:
        """This fit's ``SummaryWriter`` of ``phase`` (``train``, ``validation``); None before
        the fit starts and on ranks other than 0. Other callbacks write extra data through it."""
        return self._writers.get(phase)

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self._writers and loop.is_training:
            self._trace.record(loop.metrics, loop.global_step)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if not self._writers:
            return
        names = [m.name for m in loop.metrics]
        train = self._writers["train"]
        for step, values in self._trace.read():
            for name, value in zip(names, values):
                train.add_scalar(f"batch_{name}", value, step)
        record = loop.history.epochs[-1]
        epoch = int(record["epoch"])
        for key, value in record.items():
            phase, _, name = key.partition("/")
            if name and phase in ("train", "validation"):
                self._writers[phase].add_scalar(f"epoch_{name}", value, epoch)
        rate = loop.learning_rate
        if rate is not None:
            train.add_scalar("epoch_learning_rate", rate, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_fit_end(self, loop: TrainingLoop) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
