"""ProgressPrinter: the default callback that shows a fit's progress.

In a terminal it draws an animated bar per phase with ``rich``; elsewhere (a pipe, a log, CI)
it prints plain lines in Swift for TensorFlow's format::

    Epoch 1/12
    468/468 [==============================] - loss: 0.4819 - accuracy: 0.8513
    79/79 [==============================] - loss: 0.4012 - accuracy: 0.8601
    examples/second: 52340.1

Metric values cross to the host only at the refresh rate (terminal) or at phase ends (plain).
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

from trainingloop import distributed
from trainingloop.callbacks.base import Callback

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["ProgressPrinter"]

_BAR_WIDTH = 30


def format_stats(stats: dict[str, float]) -> str:
    """``" - loss: 0.4819 - accuracy: 0.8513"``."""
    return "".join(f" - {name}: {value:.4f}" for name, value in stats.items())


def plain_line(done: int, total: int | None, stats: dict[str, float]) -> str:
    """One S4TF progress line: ``done/total [=====>....] - name: value ...``."""
    total_text = "?" if total is None else str(total)
    filled = _BAR_WIDTH if not total else min(_BAR_WIDTH, _BAR_WIDTH * done // total)
    bar = "=" * filled if filled == _BAR_WIDTH else "=" * filled + ">" + "." * (
        _BAR_WIDTH - filled - 1)
    return f"{done}/{total_text} [{bar}]{format_stats(stats)}"


class ProgressPrinter(Callback):
    """Shows each epoch's progress and metrics, and examples/second at each epoch end.

    ``refresh_rate`` is the least number of seconds between two terminal redraws (each reads
    the metrics from the device). ``stream`` defaults to standard output; ``terminal`` forces
    the animated (True) or plain (False) display.
    """

    def __init__(
        self, refresh_rate: float = 0.2, stream: IO[str] | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.refresh_rate = refresh_rate
        self.stream = stream
        self.terminal = terminal
        self._live: Any = None
        self._task: Any = None
        self._last_draw = 0.0
        self._animated = False
        self._enabled = True  # rank 0 prints; refreshed at each fit's start

    # -- helpers ---------------------------------------------------------------------------
    def _out(self) -> IO[str]:
        return self.stream if self.stream is not None else sys.stdout

    def _is_terminal(self) -> bool:
        if self.terminal is not None:
            return self.terminal
        isatty = getattr(self._out(), "isatty", None)
        return bool(isatty and isatty())

    def _print(self, text: str) -> None:
        if self._enabled:
            print(text, file=self._out(), flush=True)

    # -- events ----------------------------------------------------------------------------
    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = distributed.is_main_process()
        self._animated = self._enabled and self._is_terminal() and _rich_available()

    def on_epoch_start(self, loop: TrainingLoop) -> None:
        self._print(f"Epoch {loop.epoch_index + 1}/{loop.epoch_count}")

    def on_training_start(self, loop: TrainingLoop) -> None:
        self._start_bar(loop, "train")

    def on_validation_start(self, loop: TrainingLoop) -> None:
        self._start_bar(loop, "validation")

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.refresh_rate:
            self._last_draw = now
            self._live.update(self._task, completed=loop.batch_index + 1,
                              stats=format_stats(loop.last_stats))
            self._live.refresh()

    def on_training_end(self, loop: TrainingLoop) -> None:
        self._end_bar(loop)

    def on_validation_end(self, loop: TrainingLoop) -> None:
        self._end_bar(loop)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        rate = loop.history.epochs[-1].get("examples_per_second") if loop.history.epochs else None
        if rate is not None:
            self._print(f"examples/second: {rate:.1f}")

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- bars ------------------------------------------------------------------------------
    def _start_bar(self, loop: TrainingLoop, phase: str) -> None:
        if not self._animated:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._live = Progress(
            TextColumn(f"{phase:>10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), console=Console(file=self._out()),
            auto_refresh=False, transient=False,
        )
        self._live.start()
        self._task = self._live.add_task(phase, total=loop.batch_count, stats="")
        self._last_draw = time.monotonic()

    def _end_bar(self, loop: TrainingLoop) -> None:
        done = loop.batch_index + 1 if loop.batch_count is None else loop.batch_count
        stats = loop.last_stats
        if self._live is not None:
            self._live.update(self._task, total=done, completed=done, stats=format_stats(stats))
            self._live.refresh()
            self._live.stop()
            self._live = None
        else:
            self._print(plain_line(done, loop.batch_count, stats))


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True
