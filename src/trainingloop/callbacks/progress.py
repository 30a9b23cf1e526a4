"""ProgressPrinter: the default callback that shows a fit's progress.

In a terminal it draws an animated bar per phase with ``rich``; in a Jupyter kernel, one HTML
bar per phase updated in place (:mod:`~trainingloop.callbacks.notebook`); elsewhere (a pipe, a
log, CI) it prints plain lines in Swift for TensorFlow's format, with tqdm's timing appended
(elapsed<remaining, batches/s, and tokens/s when the inputs are integer token tensors)::

    Epoch 1/12
    468/468 [==============================] - loss: 0.4819 - accuracy: 0.8513 [00:03<00:00, 150.2 batch/s]
    79/79 [==============================] - loss: 0.4012 - accuracy: 0.8601 [00:00<00:00, 412.7 batch/s]
    examples/second: 52340.1

Metric values cross to the host only at the refresh rate (terminal, notebook) or at phase ends
(plain); the timing is computed at the same moments from ``time.perf_counter``.
"""

from __future__ import annotations

import html
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from trainingloop import distributed
from trainingloop.callbacks.base import Callback
from trainingloop.callbacks.notebook import InPlaceOutput, in_notebook
from trainingloop.devices import sync_allowed
from trainingloop.metrics import token_count

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["ProgressPrinter"]

_BAR_WIDTH = 30


def format_stats(stats: dict[str, float]) -> str:
    """``" - loss: 0.4819 - accuracy: 0.8513"``."""
    return "".join(f" - {name}: {value:.4f}" for name, value in stats.items())


def plain_line(done: int, total: int | None, stats: dict[str, float], timing: str = "") -> str:
    """One S4TF progress line: ``done/total [=====>....] - name: value ... [timing]``."""
    total_text = "?" if total is None else str(total)
    filled = _BAR_WIDTH if not total else min(_BAR_WIDTH, _BAR_WIDTH * done // total)
    bar = "=" * filled if filled == _BAR_WIDTH else "=" * filled + ">" + "." * (
        _BAR_WIDTH - filled - 1)
    return f"{done}/{total_text} [{bar}]{format_stats(stats)}" + (f" [{timing}]" if timing else "")


def format_duration(seconds: float | None) -> str:
    """``MM:SS``, or ``H:MM:SS`` from an hour on; ``?`` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _per_second(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.1f}"


def format_timing(done: int, total: int | None, elapsed: float, tokens: int = 0) -> str:
    """tqdm's ``elapsed<remaining, rate``: ``00:03<00:00, 150.2 batch/s, 9.6k tokens/s``.

    The remaining time assumes the phase's rate so far; it is ``?`` without a total.
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = (max(total - done, 0) / rate if rate else None) if total is not None else None
    speed = f"{rate:.1f} batch/s" if rate >= 1 or rate == 0 else f"{1 / rate:.2f} s/batch"
    text = f"{format_duration(elapsed)}<{format_duration(remaining)}, {speed}"
    if tokens and elapsed > 0:
        text += f", {_per_second(tokens / elapsed)} tokens/s"
    return text


def _html_bar(phase: str, done: int, total: int | None, stats: dict[str, float],
              timing: str) -> str:
    maximum = total if total else max(done, 1)
    return (f"<div style='font-family:monospace'>{html.escape(phase)} "
            f"<progress value='{done}' max='{maximum}' style='width:20em'></progress> "
            f"{done}/{'?' if total is None else total}{html.escape(format_stats(stats))} "
            f"[{html.escape(timing)}]</div>")


class ProgressPrinter(Callback):
    """Shows each epoch's progress and metrics, and examples/second at each epoch end.

    ``refresh_rate`` is the least number of seconds between two redraws of a terminal or
    notebook bar (each reads the metrics from the device). ``stream`` defaults to standard
    output; ``terminal`` forces the animated (True) or plain (False) display. Without either,
    a Jupyter kernel gets a live HTML bar per phase, updated in place.
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
        self._output: InPlaceOutput | None = None
        self._phase = ""
        self._last_draw = 0.0
        self._started = 0.0
        self._tokens = 0
        self._animated = False
        self._notebook = False
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
        self._notebook = (self._enabled and self.stream is None and self.terminal is None
                          and in_notebook())
        self._animated = (self._enabled and not self._notebook and self._is_terminal()
                          and _rich_available())

    def on_epoch_start(self, loop: TrainingLoop) -> None:
        self._print(f"Epoch {loop.epoch_index + 1}/{loop.epoch_count}")

    def on_training_start(self, loop: TrainingLoop) -> None:
        self._start_bar(loop, "train")

    def on_validation_start(self, loop: TrainingLoop) -> None:
        self._start_bar(loop, "validation")

    def on_batch_end(self, loop: TrainingLoop) -> None:
        self._tokens += token_count(loop.last_input)
        if self._live is None and self._output is None:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.refresh_rate:
            self._last_draw = now
            with sync_allowed():  # reading the running values is a sync, at the refresh rate
                stats = loop.last_stats
            self._draw(loop, loop.batch_index + 1, loop.batch_count, stats, now)

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
        self._output = None

    # -- bars ------------------------------------------------------------------------------
    def _start_bar(self, loop: TrainingLoop, phase: str) -> None:
        self._phase, self._tokens = phase, 0
        self._started = self._last_draw = time.perf_counter()
        if self._notebook:
            self._output = InPlaceOutput()
            self._draw(loop, 0, loop.batch_count, {}, self._started)
        if not self._animated:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._live = Progress(
            TextColumn(f"{phase:>10}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TextColumn("{task.fields[timing]}"),
            console=Console(file=self._out()), auto_refresh=False, transient=False,
        )
        self._live.start()
        self._task = self._live.add_task(phase, total=loop.batch_count, stats="", timing="")

    def _draw(self, loop: TrainingLoop, done: int, total: int | None, stats: dict[str, float],
              now: float) -> None:
        """Redraw the live bar (terminal or notebook) at ``done`` of ``total`` batches."""
        timing = format_timing(done, total, now - self._started, self._tokens)
        if self._live is not None:
            self._live.update(self._task, total=total, completed=done,
                              stats=format_stats(stats), timing=f"[{timing}]")
            self._live.refresh()
        if self._output is not None:
            self._output.show({"text/plain": plain_line(done, total, stats, timing),
                               "text/html": _html_bar(self._phase, done, total, stats, timing)},
                              raw=True)

    def _end_bar(self, loop: TrainingLoop) -> None:
        done = loop.batch_index + 1 if loop.batch_count is None else loop.batch_count
        stats = loop.last_stats
        now = time.perf_counter()
        if self._live is not None or self._output is not None:
            self._draw(loop, done, done, stats, now)
            if self._live is not None:
                self._live.stop()
            self._live = self._output = None
        else:
            timing = format_timing(done, loop.batch_count, now - self._started, self._tokens)
            self._print(plain_line(done, loop.batch_count, stats, timing))


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True
