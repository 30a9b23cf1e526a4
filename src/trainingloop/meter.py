"""What one phase of a fit counts: its metrics, examples, tokens, time and training losses.

The loop makes a :class:`PhaseMeter` at each phase's start, feeds it every batch with
:meth:`PhaseMeter.add` and reads it once at the phase's end (:meth:`PhaseMeter.finish`, the
phase's one host read). Per batch it reads nothing on the host: metrics accumulate on the
device, the training losses are kept in a :class:`~trainingloop.metrics.Tape` to name the
first non-finite one, and examples and tokens are counted from the batch's shapes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from trainingloop import distributed
from trainingloop.metrics import Metric, Tape, batch_size, token_count, update_metrics

__all__ = ["PhaseMeter"]


class PhaseMeter:
    """The counts of one phase over ``data`` (training when ``training``, else validation).

    ``metrics`` are all of the fit's metrics; they are reset here, and a validation phase
    updates those that are not ``training_only``. ``loss`` is the loop's loss function, which
    recomputes the loss on the real rows of a batch that a shard padded.
    """

    def __init__(self, metrics: Sequence[Metric], training: bool, data: Iterable[Any],
                 record: bool, loss: Any) -> None:
        for metric in metrics:
            metric.reset()
        self.all_metrics = list(metrics)
        self.metrics = [m for m in metrics if training or not m.training_only]
        self.training, self.data, self.record, self.loss = training, data, record, loss
        self.padding = distributed.padding(data)  # a shard's padding: left out of the metrics
        self.losses = Tape() if training else None  # (batch index, global step) of each loss
        self.batches = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        """Count examples, tokens and time from now (after a compiled step's warm-up)."""
        self.examples = self.tokens = 0
        self.started = time.perf_counter()

    def add(self, loss: Tensor, output: Any, input: Any, target: Any, position: int,
            tag: tuple[int, int] | None = None) -> None:
        """Count one batch: ``position`` is its place in the pass (where a shard's padding is
        found), ``tag`` a training loss's (batch index, global step)."""
        if self.losses is not None and tag is not None:
            self.losses.add(loss, tag)
        if target is not None:
            rows = None if self.padding is None else self.padding.rows(position)
            update_metrics(self.metrics, loss, output, target, rows, self.loss)
        else:  # a batch without a target (a custom step's): the loss, weighed by examples
            self.metrics[0].update(loss, input, None)
        self.examples += batch_size(target) or batch_size(input)
        self.tokens += token_count(input)

    def finish(self) -> dict[str, float]:
        """The phase's metrics, reduced over the ranks and read on the host (a sync)."""
        distributed.reduce_metrics(self.all_metrics)  # global values on every rank
        return {metric.name: metric.compute() for metric in self.metrics}

    def rates(self) -> tuple[float, float | None]:
        """Examples per second and tokens per second (None without token inputs)."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        return self.examples / seconds, (self.tokens / seconds if self.tokens else None)

    def first_non_finite(self, stats: dict[str, float]) -> tuple[int, int] | None:
        """(batch index, global step) of the first non-finite training loss when the phase's
        loss in ``stats`` is not finite (one device read then), else None."""
        if math.isfinite(stats.get("loss", 0.0)) or self.losses is None:
            return None
        tag = self.losses.first_non_finite()
        return None if tag is None else (int(tag[0]), int(tag[1]))
