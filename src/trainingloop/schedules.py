"""Segment-based learning-rate schedules with Swift for TensorFlow's semantics.

A schedule is a list of :class:`ScheduleSegment`. A segment of ``step_count`` n covers n steps
and shares its first step with the previous segment's last; where two segments meet, the earlier
segment's value applies (S4TF: "for the step that connects the neighbor segments, always return
the value at the previous segment"), and the later one's start rate only anchors its later
steps. Only the last segment may omit ``step_count`` and then runs to the
end of training; a segment's ``start_rate`` defaults to the previous segment's ``end_rate``.
:func:`make_schedule` returns ``schedule(T)``, and ``schedule(T)(k)`` is the rate of step k of
a fit of T optimizer steps. This module knows nothing of the loop;
:class:`trainingloop.LearningRateScheduler` applies a schedule.

    >>> s = make_schedule([ScheduleSegment(shapes.linear, 0.0, 1.0, step_count=3),
    ...                    ScheduleSegment(shapes.linear, end_rate=0.0)])
    >>> [round(s(5)(k), 3) for k in range(5)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

__all__ = [
    "ScheduleSegment",
    "make_schedule",
    "one_cycle",
    "shapes",
    "warmup_cosine",
    "warmup_linear",
]

Shape = Callable[[float], float]


def _linear(x: float) -> float:
    return x


def _cosine(x: float) -> float:
    return (1.0 - math.cos(math.pi * x)) / 2.0


class _Exponential:
    """Geometric interpolation ``start * (end / start) ** x`` (both rates positive)."""

    def __call__(self, x: float) -> float:
        return (math.exp(x) - 1.0) / (math.e - 1.0)

    def interpolate(self, start: float, end: float, x: float) -> float:
        if start > 0 and end > 0:
            return start * (end / start) ** x
        return start + (end - start) * self(x)

    def __repr__(self) -> str:
        return "shapes.exponential"


shapes = SimpleNamespace(linear=_linear, cosine=_cosine, exponential=_Exponential())
"""The built-in shapes: ``linear``, ``cosine`` (half a cosine wave) and ``exponential``."""


@dataclass(frozen=True)
class ScheduleSegment:
    """One piece of a schedule: ``shape`` from ``start_rate`` to ``end_rate`` in ``step_count``."""

    shape: Shape = _linear
    start_rate: float | None = None
    end_rate: float = 0.0
    step_count: int | None = None

    def rate(self, start: float, x: float) -> float:
        """The rate at fraction ``x`` in [0, 1] of this segment."""
        interpolate = getattr(self.shape, "interpolate", None)
        if interpolate is not None:
            return float(interpolate(start, self.end_rate, x))
        f0, f1 = self.shape(0.0), self.shape(1.0)
        return start + (self.end_rate - start) * (self.shape(x) - f0) / (f1 - f0)


def _check(segments: Sequence[ScheduleSegment]) -> None:
    if not segments:
        raise ValueError("a schedule needs at least one segment")
    if segments[0].start_rate is None:
        raise ValueError("the first segment needs a start_rate")
    for i, segment in enumerate(segments):
        if segment.step_count is None and i != len(segments) - 1:
            raise ValueError(f"segment {i} omits step_count; only the last segment may")
        if segment.step_count is not None and segment.step_count < 1:
            raise ValueError(f"segment {i} has step_count {segment.step_count}; it must be >= 1")
        interpolate = getattr(segment.shape, "interpolate", None)
        if interpolate is None and segment.shape(0.0) == segment.shape(1.0):
            raise ValueError(f"segment {i}'s shape has f(0) == f(1); it cannot interpolate")


def make_schedule(segments: Sequence[ScheduleSegment]) -> Callable[[int], Callable[[int], float]]:
    """``schedule(T)(k)``: the rate of step k (0-based) of a fit of T steps."""
    segments = list(segments)
    _check(segments)

    def for_total(total_steps: int) -> Callable[[int], float]:
        # (first step, step count, start rate) of each segment; the earlier one wins a shared step.
        spans: list[tuple[int, int, float, ScheduleSegment]] = []
        first, previous_end = 0, segments[0].start_rate
        for segment in segments:
            count = segment.step_count if segment.step_count is not None else max(
                total_steps - first, 1)
            start = segment.start_rate if segment.start_rate is not None else previous_end
            assert start is not None
            spans.append((first, count, start, segment))
            first += count - 1
            previous_end = segment.end_rate

        def rate(step: int) -> float:
            step = max(step, 0)
            for i, (first_step, count, start, segment) in enumerate(spans):
                if step <= first_step + count - 1 or i == len(spans) - 1:
                    offset = min(step - first_step, count - 1)
                    x = 1.0 if count == 1 else offset / (count - 1)
                    return segment.rate(start, x)
            raise AssertionError("unreachable: the last segment takes every later step")

        return rate

    return for_total


def warmup_linear(peak: float, warmup_steps: int, end_rate: float = 0.0,
                  start_rate: float = 0.0) -> Callable[[int], Callable[[int], float]]:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then linear decay to ``end_rate``."""
    return make_schedule([
        ScheduleSegment(shapes.linear, start_rate, peak, step_count=warmup_steps),
        ScheduleSegment(shapes.linear, end_rate=end_rate),
    ])


def warmup_cosine(peak: float, warmup_steps: int, end_rate: float = 0.0,
                  start_rate: float = 0.0) -> Callable[[int], Callable[[int], float]]:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to ``end_rate``."""
    return make_schedule([
        ScheduleSegment(shapes.linear, start_rate, peak, step_count=warmup_steps),
        ScheduleSegment(shapes.cosine, end_rate=end_rate),
    ])


def one_cycle(max_rate: float, pct_start: float = 0.25, div: float = 25.0,
              final_div: float = 1e5) -> Callable[[int], Callable[[int], float]]:
    """fastai's one-cycle: cosine from ``max_rate/div`` up to ``max_rate`` over ``pct_start``
    of training, then cosine down to ``max_rate/(div*final_div)``."""
    if not 0.0 < pct_start < 1.0:
        raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")

    def for_total(total_steps: int) -> Callable[[int], float]:
        warm = max(2, round(total_steps * pct_start))
        return make_schedule([
            ScheduleSegment(shapes.cosine, max_rate / div, max_rate, step_count=warm),
            ScheduleSegment(shapes.cosine, end_rate=max_rate / (div * final_div)),
        ])(total_steps)

    return for_total
