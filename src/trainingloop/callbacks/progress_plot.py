"""ProgressPlot: d2l's Animator: live training curves, saved after every epoch.

Plots train loss, train accuracy and validation accuracy (whichever exist) against the epoch,
with points inside each epoch for the training curves (five per epoch, as d2l does). The image
(``.png`` or ``.svg`` by the path's suffix) is rewritten atomically after each epoch; in a
Jupyter kernel the figure is also shown as one PNG output that each epoch redraws in place
(nothing else in the cell, such as the progress bars, is cleared). Uses matplotlib's object
API with the Agg canvas, so no display is needed (the ``plot`` extra).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainingloop import distributed
from trainingloop._files import atomic_write
from trainingloop.callbacks.base import Callback
from trainingloop.callbacks.notebook import InPlaceOutput, in_notebook
from trainingloop.metrics import MetricTrace

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["ProgressPlot"]

_POINTS_PER_EPOCH = 5
_CURVES = ("train/loss", "train/accuracy", "validation/accuracy")
_STYLE = {"train/loss": "-", "train/accuracy": "m--", "validation/accuracy": "g-."}


class ProgressPlot(Callback):
    """Draws the curves to ``path`` after every epoch (and live in Jupyter)."""

    def __init__(self, path: str | os.PathLike[str] = "run/curves.png",
                 figsize: tuple[float, float] = (5.0, 3.5)) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".png", ".svg"):
            raise ValueError(f"ProgressPlot path must end in .png or .svg, got {str(path)!r}")
        self.figsize = figsize
        self.points: dict[str, tuple[list[float], list[float]]] = {}
        self._trace = MetricTrace()
        self._output: InPlaceOutput | None = None
        self._enabled = True  # rank 0 draws; refreshed at each fit's start

    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = distributed.is_main_process()
        self._output = InPlaceOutput() if self._enabled and in_notebook() else None
        if not loop.history.epochs:  # a fresh fit (a resumed one keeps its points)
            self.points = {}

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if not (self._enabled and loop.is_training):
            return
        count = loop.batch_count
        every = max(1, (count or 1) // _POINTS_PER_EPOCH)
        if count is not None and ((loop.batch_index + 1) % every == 0 or
                                  loop.batch_index + 1 == count):
            x = loop.epoch_index + (loop.batch_index + 1) / count
            self._trace.record(loop.metrics, x)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if not self._enabled:
            return
        names = [m.name for m in loop.metrics]
        for x, values in self._trace.read():
            for name, value in zip(names, values):
                key = "train/" + name
                if key in _CURVES and x < loop.epoch_index + 1:  # the epoch's end comes below
                    self._add(key, x, value)
        record = loop.history.epochs[-1]
        for key in _CURVES:
            if key in record:
                self._add(key, float(record["epoch"]), float(record[key]))
        self.draw(loop.epoch_count)

    def _add(self, key: str, x: float, y: float) -> None:
        xs, ys = self.points.setdefault(key, ([], []))
        xs.append(x)
        ys.append(y)

    def draw(self, epochs: int | None = None) -> Any:
        """Render the current curves to :attr:`path`; returns the matplotlib Figure."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=self.figsize)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for key in _CURVES:
            if key in self.points:
                xs, ys = self.points[key]
                axes.plot(xs, ys, _STYLE[key], label=key.replace("/", " "))
        axes.set_xlabel("epoch")
        if epochs:
            axes.set_xlim(0, max(epochs, 1))
        axes.grid(True)
        if self.points:
            axes.legend()
        figure.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as tmp:
            figure.savefig(tmp, format=self.path.suffix[1:])
        if self._output is not None:  # in a notebook: this fit's one figure output, redrawn
            from IPython.display import Image

            png = io.BytesIO()
            figure.savefig(png, format="png")
            self._output.show(Image(data=png.getvalue(), format="png"))
        return figure

    def state_dict(self) -> dict[str, Any]:
        """The points drawn so far."""
        return {"points": {k: [list(xs), list(ys)] for k, (xs, ys) in self.points.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.points = {k: (list(v[0]), list(v[1])) for k, v in state["points"].items()}
