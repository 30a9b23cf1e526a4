"""CSVLogger: one row of running metric values per batch, both phases, append-only.

Header ``epoch,batch,phase,<metric names>``; epoch and batch are 1-based; phase is ``train`` or
``validation``. Values are snapshotted on the device at each batch end
(:class:`~trainingloop.metrics.MetricTrace`) and written in bulk at each epoch end and at fit
end, so logging costs no host sync per step. The file is only ever appended to; after a
resume, rows the checkpoint had not yet seen are cut (atomically) so none is duplicated.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainingloop import distributed
from trainingloop._files import atomic_write
from trainingloop.callbacks.base import Callback
from trainingloop.metrics import MetricTrace

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Writes per-batch running metrics of both phases to ``path`` (must end in ``.csv``)."""

    def __init__(self, path: str | os.PathLike[str] = "run/log.csv") -> None:
        self.path = Path(path)
        if self.path.suffix != ".csv":
            raise ValueError(f"CSVLogger path must end in .csv, got {str(path)!r}")
        self.rows_written = 0
        self._trace = MetricTrace()
        self._resume_rows: int | None = None
        self._header: list[str] = []
        self._enabled = True  # rank 0 writes; refreshed at each fit's start

    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = distributed.is_main_process()
        if not self._enabled:
            return
        self._header = ["epoch", "batch", "phase", *(m.name for m in loop.metrics)]
        keep = self._resume_rows
        self._resume_rows = None
        text, self.rows_written = ",".join(self._header) + "\n", 0
        if keep is not None and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            if lines and lines[0].rstrip("\r\n").split(",") == self._header:
                text, self.rows_written = "".join(lines[: keep + 1]), min(keep, len(lines) - 1)
        with atomic_write(self.path) as tmp:
            tmp.write_text(text, newline="")

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self._enabled:
            self._trace.record(loop.metrics, (loop.epoch_index + 1, loop.batch_index + 1,
                                              loop.position.phase.value))

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        self.flush()

    def on_fit_end(self, loop: TrainingLoop) -> None:
        self.flush()

    def flush(self) -> None:
        """Append every buffered row to the file (one host read for all of them)."""
        rows = self._trace.read() if len(self._trace) else []
        if not rows:
            return
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            for (epoch, batch, phase), values in rows:
                writer.writerow([epoch, batch, phase, *(repr(float(v)) for v in values)])
            f.flush()
            os.fsync(f.fileno())
        self.rows_written += len(rows)

    def state_dict(self) -> dict[str, Any]:
        """The number of rows on disk (buffered rows are flushed first)."""
        if self._enabled:
            self.flush()
        return {"rows_written": self.rows_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """On resume: keep exactly the rows the checkpoint had seen."""
        self._resume_rows = int(state["rows_written"])
