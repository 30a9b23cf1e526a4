"""Metrics that accumulate on the device and are read only when asked.

This module owns the :class:`Metric` protocol, the built-in metrics and the adapter for
``torchmetrics`` objects. It knows nothing of the loop: the loop calls ``reset()`` at each
phase start, ``update(loss, output, target)`` after each batch, and ``compute()`` when a value
must reach the host (a display refresh, a log flush, the end of a phase).

``update`` must never read a tensor on the host: running sums stay tensors on the batch's
device. ``compute`` is the one place a metric syncs.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Accuracy",
    "Loss",
    "MatthewsCorrelation",
    "Metric",
    "MetricTrace",
    "Perplexity",
    "Tape",
    "TopKAccuracy",
    "TorchMetric",
    "batch_size",
    "contributed_metrics",
    "resolve_metrics",
    "take_rows",
    "token_count",
    "update_metrics",
]


def batch_size(obj: Any) -> int:
    """Number of examples in a (possibly nested) batch: the first tensor's leading dimension."""
    if isinstance(obj, Tensor):
        return int(obj.shape[0]) if obj.dim() > 0 else 1
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            n = batch_size(item)
            if n:
                return n
    return 0


def token_count(batch_input: Any) -> int:
    """Tokens in a batch of token ids: an integer tensor of batch × sequence (or more dims), or
    a dict's ``input_ids``; 0 for anything else. Reads only the shape and dtype (no sync)."""
    if isinstance(batch_input, Mapping):
        batch_input = batch_input.get("input_ids")
    if (isinstance(batch_input, Tensor) and batch_input.dim() >= 2
            and not batch_input.is_floating_point() and not batch_input.is_complex()
            and batch_input.dtype is not torch.bool):
        return batch_input.numel()
    return 0


class Metric:
    """Base class of metrics: ``reset()``, ``update(loss, output, target)``, ``compute()``.

    ``name`` names the metric in History keys, logs and ``last_stats``. Subclasses that keep
    additive running sums in :attr:`sums` (a 1-d device tensor) and :attr:`count` (a host
    number) get ``value_tensor``, ``compute`` and distributed reduction for free: they implement
    ``update`` (in-place device ops only) and ``value``.
    """

    name: str = "metric"
    #: A training-only metric is not updated in validation and has no validation value.
    training_only: bool = False

    def __init__(self) -> None:
        self.sums: Tensor | None = None
        self.count: float = 0.0

    def reset(self) -> None:
        """Forget everything accumulated."""
        self.sums = None
        self.count = 0.0

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        """Add one batch to the running state, on the device; never read a value here."""
        raise NotImplementedError

    def value(self, sums: Tensor, count: float) -> Tensor:
        """The metric as a 0-d tensor computed from the running state."""
        raise NotImplementedError

    def _sums_like(self, like: Tensor, size: int = 1) -> Tensor:
        if self.sums is None:
            self.sums = torch.zeros(size, dtype=_accumulator_dtype(like.device), device=like.device)
        return self.sums

    def value_tensor(self) -> Tensor | None:
        """The running value as a device tensor, without reading it (None before any batch)."""
        return None if self.sums is None else self.value(self.sums, self.count)

    def compute(self) -> float:
        """The running value as a float: this reads the device (a sync)."""
        value = self.value_tensor()
        return math.nan if value is None else float(value)


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps long sums exact; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class Loss(Metric):
    """Mean loss over examples: each batch's loss weighs by its number of examples."""

    name = "loss"

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        n = batch_size(target) or batch_size(output) or 1
        self._sums_like(loss).add_(loss.detach(), alpha=n)
        self.count += n

    def value(self, sums: Tensor, count: float) -> Tensor:
        return sums[0] / max(count, 1.0)


def _class_predictions(output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Predicted and true class indices; one-logit outputs are thresholded at 0."""
    output = output.detach()
    if output.dim() == target.dim() and output.dim() >= 2 and output.shape == target.shape \
            and output.shape[-1] > 1:
        target = target.argmax(-1)  # one-hot or soft targets
    if output.dim() == target.dim() + 1 and output.shape[-1] > 1:
        return output.argmax(-1), target
    if output.dim() == target.dim() + 1 and output.shape[-1] == 1:
        output = output.squeeze(-1)
    if output.shape != target.shape:
        raise ValueError(
            f"cannot match output of shape {tuple(output.shape)} to target of shape "
            f"{tuple(target.shape)} for a classification metric"
        )
    return (output > 0).long(), target.long()


class Accuracy(Metric):
    """Fraction of examples whose arg-max class (or logit > 0, for one logit) is the target."""

    name = "accuracy"

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        predicted, target = _class_predictions(output, target)
        self._sums_like(predicted).add_((predicted == target).sum())
        self.count += target.numel()

    def value(self, sums: Tensor, count: float) -> Tensor:
        return sums[0] / max(count, 1.0)


class TopKAccuracy(Metric):
    """Fraction of examples whose target is among the ``k`` highest scores."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"TopKAccuracy needs k >= 1, got {k}")
        self.k = k
        self.name = f"top{k}_accuracy"

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        output = output.detach()
        top = output.topk(min(self.k, output.shape[-1]), dim=-1).indices
        self._sums_like(top).add_((top == target.unsqueeze(-1)).any(-1).sum())
        self.count += target.numel()

    def value(self, sums: Tensor, count: float) -> Tensor:
        return sums[0] / max(count, 1.0)


class MatthewsCorrelation(Metric):
    """Matthews correlation coefficient, as scikit-learn's ``matthews_corrcoef``.

    Accumulates a confusion matrix on the device (``sums`` holds it flattened); binary
    one-logit outputs are thresholded at 0.
    """

    name = "mcc"

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        multi = output.dim() > target.dim() and output.shape[-1] > 1
        classes = output.shape[-1] if multi else 2
        predicted, target = _class_predictions(output, target)
        cells = (target.reshape(-1) * classes + predicted.reshape(-1)).clamp_(0, classes**2 - 1)
        sums = self._sums_like(cells, classes * classes)
        if sums.numel() != classes * classes:
            raise ValueError(
                f"mcc: the number of classes changed within a phase (now {classes})"
            )
        sums.index_add_(0, cells, torch.ones_like(cells, dtype=sums.dtype))
        self.count += target.numel()

    def value(self, sums: Tensor, count: float) -> Tensor:
        classes = math.isqrt(sums.numel())
        matrix = sums.view(classes, classes)
        t_sum, p_sum = matrix.sum(1), matrix.sum(0)
        n = matrix.sum()
        cov_tp = matrix.trace() * n - t_sum @ p_sum
        cov_pp = n * n - p_sum @ p_sum
        cov_tt = n * n - t_sum @ t_sum
        product = cov_tt * cov_pp
        safe = torch.where(product > 0, product, torch.ones_like(product))
        return torch.where(product > 0, cov_tp / safe.sqrt(), torch.zeros_like(cov_tp))


class Perplexity(Metric):
    """``exp`` of the mean cross-entropy of ``output`` logits against integer targets.

    Every target element (a token, for language models) weighs the same.
    """

    name = "perplexity"

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        logits = output.detach()
        total = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="sum"
        )
        self._sums_like(total).add_(total)
        self.count += target.numel()

    def value(self, sums: Tensor, count: float) -> Tensor:
        return torch.exp(sums[0] / max(count, 1.0))


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class TorchMetric(Metric):
    """Adapter for a ``torchmetrics.Metric``: called as ``metric(output, target)``.

    Running values (display, logs) are computed from this rank's states alone, never
    gathered: a rank-0-only callback must not enter a collective. :meth:`synchronize`, which
    every rank calls once at a phase end, gathers the states and keeps the global value for
    the rest of the phase.
    """

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric
        self.name = getattr(metric, "name", None) or _snake_case(type(metric).__name__)
        self._updated = False
        self._global: Tensor | None = None

    def reset(self) -> None:
        self.metric.reset()
        self._updated = False
        self._global = None

    def update(self, loss: Tensor, output: Any, target: Any) -> None:
        output = output.detach() if isinstance(output, Tensor) else output
        if isinstance(output, Tensor) and self.metric.device != output.device:
            self.metric.to(output.device)
        self.metric.update(output, target)
        self._updated = True
        self._global = None

    def _compute(self, gather: bool) -> Tensor:
        """torchmetrics' ``compute()``, gathering the states first iff ``gather`` (it restores
        the local ones after), and leaving no cached value behind for a later call."""
        metric = self.metric
        if not hasattr(metric, "_to_sync"):  # a look-alike without torchmetrics' sync: local
            value = metric.compute()
            return value if isinstance(value, Tensor) else torch.tensor(float(value))
        wanted = metric._to_sync  # torchmetrics: whether compute() gathers (sync_on_compute)
        metric._to_sync, metric._computed = gather, None
        try:
            value = metric.compute()
        finally:
            metric._to_sync, metric._computed = wanted, None
        return value if isinstance(value, Tensor) else torch.tensor(float(value))

    def synchronize(self) -> None:
        """Gather the states of every rank and keep the global value (a collective: every rank
        calls it, once per phase end); the local states stay as they were."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        updated = torch.tensor([float(self._updated)],
                               device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(updated, op=dist.ReduceOp.MAX)
        if not bool(updated):  # no rank saw an example: nothing to gather
            return
        with warnings.catch_warnings():  # "compute before update" on a rank of only padding
            warnings.simplefilter("ignore", UserWarning)
            self._global = self._compute(gather=True)
        self._updated = True

    def value_tensor(self) -> Tensor | None:
        if self._global is not None:
            return self._global
        return self._compute(gather=False) if self._updated else None


def take_rows(obj: Any, rows: int) -> Any:
    """The first ``rows`` examples of a (possibly nested) batch: tensors sliced on dim 0."""
    if isinstance(obj, Tensor):
        return obj[:rows] if obj.dim() > 0 else obj
    if isinstance(obj, dict):
        return {key: take_rows(value, rows) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [take_rows(value, rows) for value in obj]
        return type(obj)(items) if type(obj) in (list, tuple) else type(obj)(*items)
    return obj


def update_metrics(metrics: Sequence[Metric], loss: Tensor, output: Any, target: Any,
                   rows: int | None = None,
                   loss_fn: Callable[[Any, Any], Tensor] | None = None) -> None:
    """Update ``metrics`` with one batch, of which only the first ``rows`` are real examples
    (None: all; the rest is padding of a distributed shard, and no metric counts it).

    On a batch with padding the loss metric gets ``loss_fn`` on the real rows (or, without a
    loss function, the batch's loss weighed by its real rows); a batch of padding alone changes
    nothing. No host read here: ``rows`` is host arithmetic on the batch index.
    """
    if rows is not None:
        if rows == 0:
            return
        output, target = take_rows(output, rows), take_rows(target, rows)
        if loss_fn is not None:
            with torch.no_grad():
                loss = loss_fn(output, target).detach()
    for metric in metrics:
        metric.update(loss, output, target)


_BUILT_IN: dict[str, Callable[[], Metric]] = {
    "loss": Loss,
    "accuracy": Accuracy,
    "top5_accuracy": lambda: TopKAccuracy(5),
    "mcc": MatthewsCorrelation,
    "perplexity": Perplexity,
}


def contributed_metrics(metrics: Sequence[Metric], callbacks: Sequence[Any]) -> list[Metric]:
    """The metrics ``callbacks`` contribute through a ``metrics`` list (``GradientMonitor``'s
    ``grad_norm``), checked to be Metric objects whose names repeat none of ``metrics``."""
    added = [metric for callback in callbacks for metric in getattr(callback, "metrics", ())]
    for metric in added:
        if not isinstance(metric, Metric):
            raise TypeError(f"a callback's metrics must be trainingloop.metrics.Metric "
                            f"objects, got {metric!r}")
    names = [metric.name for metric in [*metrics, *added]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"metric names must be unique; callbacks repeat: {repeated}")
    return added


def resolve_metrics(metrics: Sequence[Any]) -> list[Metric]:
    """Turn the loop's ``metrics=`` argument into Metric objects, ``loss`` first and once."""
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    resolved: list[Metric] = []
    for item in metrics:
        if isinstance(item, str):
            key = item.lower()
            match = re.fullmatch(r"top(\d+)_accuracy", key)
            if key in _BUILT_IN:
                resolved.append(_BUILT_IN[key]())
            elif match:
                resolved.append(TopKAccuracy(int(match.group(1))))
            else:
                raise ValueError(
                    f"unknown metric name {item!r}; known names: {sorted(_BUILT_IN)} "
                    "or 'top<k>_accuracy'"
                )
        elif isinstance(item, Metric):
            resolved.append(item)
        elif hasattr(item, "update") and hasattr(item, "compute") and hasattr(item, "reset"):
            resolved.append(TorchMetric(item))
        else:
            raise TypeError(
                f"metric {item!r} is neither a metric name, a trainingloop.metrics.Metric "
                "nor a torchmetrics.Metric"
            )
    losses = [m for m in resolved if isinstance(m, Loss)]
    others = [m for m in resolved if not isinstance(m, Loss)]
    names = [m.name for m in others]
    duplicates = {n for n in names if names.count(n) > 1 or n == "loss"}
    if duplicates:
        raise ValueError(f"metric names must be unique; repeated: {sorted(duplicates)}")
    return [losses[0] if losses else Loss(), *others]


class Tape:
    """Small device tensors recorded once per batch, each with a host-side tag, read in bulk.

    ``add`` keeps the tensor on its device (no host read); every ``chunk`` additions the
    pending ones are concatenated, which bounds the number of live tensors on long phases.
    ``flat`` is everything recorded, concatenated on the device; ``tags`` the tags in order.
    """

    def __init__(self, chunk: int = 1024) -> None:
        self.chunk = chunk
        self.tags: list[Any] = []
        self._chunks: list[Tensor] = []
        self._pending: list[Tensor] = []

    def __len__(self) -> int:
        return len(self.tags)

    def add(self, values: Tensor, tag: Any) -> None:
        """Record ``values`` (flattened) under ``tag``."""
        self._pending.append(values.reshape(-1))
        self.tags.append(tag)
        if len(self._pending) >= self.chunk:
            self._chunks.append(torch.cat(self._pending))
            self._pending = []

    def flat(self) -> Tensor | None:
        """Every recorded value in one device tensor (None when empty)."""
        parts = self._chunks + ([torch.cat(self._pending)] if self._pending else [])
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def first_non_finite(self) -> Any:
        """The tag of the first NaN or infinite value recorded (one device read), or None."""
        flat = self.flat()
        bad = torch.nonzero(~torch.isfinite(flat.float())) if flat is not None else None
        return self.tags[int(bad[0, 0])] if bad is not None and len(bad) else None

    def clear(self) -> None:
        """Forget everything recorded."""
        self.tags, self._chunks, self._pending = [], [], []


class MetricTrace:
    """Per-batch running values of a phase's metrics, kept on the device and read in bulk.

    ``record`` costs one small device copy per batch (the metrics' running sums, concatenated,
    on a :class:`Tape`); ``read`` moves everything recorded to the host at once and turns it
    into values. Loggers use it to write per-batch rows without a host sync per step.
    """

    def __init__(self) -> None:
        self._tape = Tape()

    def __len__(self) -> int:
        return len(self._tape)

    def record(self, metrics: Sequence[Metric], tag: Any) -> None:
        """Snapshot the running values of ``metrics`` under ``tag`` (no host read)."""
        metrics = list(metrics)
        if all(type(m).value_tensor is Metric.value_tensor and m.sums is not None
               for m in metrics):
            sums = [m.sums for m in metrics]
            self._tape.add(torch.cat(sums), (tag, metrics,  # type: ignore[arg-type]
                                             [s.numel() for s in sums],  # type: ignore[union-attr]
                                             [m.count for m in metrics]))
            return
        found = [m.value_tensor() for m in metrics]
        device = next((v.device for v in found if v is not None and v.device.type != "cpu"),
                      torch.device("cpu"))
        dtype = _accumulator_dtype(device)
        # A value not there yet is NaN made on the device; one on the CPU is copied without
        # waiting (a blocking copy would sync the host at every batch).
        values = [torch.full((), math.nan, device=device, dtype=dtype) if v is None
                  else v.detach().reshape(()).to(device=device, dtype=dtype, non_blocking=True)
                  for v in found]
        self._tape.add(torch.stack(values), (tag, metrics, None, []))

    def read(self) -> list[tuple[Any, list[float]]]:
        """``(tag, values)`` of every snapshot since the last read; one host transfer."""
        flat_device = self._tape.flat()
        if flat_device is None:
            return []
        flat = flat_device.cpu()
        rows: list[tuple[Any, list[float]]] = []
        offset = 0
        for tag, metrics, sizes, counts in self._tape.tags:
            if sizes is None:
                rows.append((tag, flat[offset:offset + len(metrics)].tolist()))
                offset += len(metrics)
                continue
            values = []
            for metric, size, count in zip(metrics, sizes, counts):
                values.append(float(metric.value(flat[offset:offset + size], count)))
                offset += size
            rows.append((tag, values))
        self._tape.clear()
        return rows
