"""Prefetching host batches onto a CUDA device while the current step runs.

:class:`Prefetcher` owns the copy of the *next* batch: pinned host memory, a side stream, an event
the consumer stream waits on, and ``record_stream`` so the allocator keeps the copied memory until
the consumer is done with it. It knows nothing of training; the loop sees plain data whose
length, ``set_epoch``, ``state_dict``/``load_state_dict`` and ``batch_size`` are the wrapped
data's. Data already on the device (``ArrayDataset(...).to("cuda")``) needs no prefetcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from trainingloop.devices import move_to_device

__all__ = ["Prefetcher"]


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in page-locked memory if it is on the host (needed for an asynchronous copy)."""
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        return tensor.pin_memory()
    return tensor


class Prefetcher:
    """Iterate ``data`` with the next batch already on its way to ``device``.

    On CUDA each batch (nested tuples/lists/dicts of tensors) is pinned and copied with
    ``non_blocking=True`` on a side stream one batch ahead; the consumer stream waits on the
    copy's event, so there is no host sync. Elsewhere it yields ``data``'s batches unchanged.
    ``len``, ``set_epoch``, ``state_dict``/``load_state_dict``, ``batch_size`` and (for
    ``torchrun``) ``shard``/``shard_sizes`` are the wrapped data's where it has them;
    ``state_dict`` counts only the batches handed out, not the one fetched ahead, so an exact
    resume continues at the right batch. (A wrapped DataLoader is not sharded by the loop.)

    >>> batches = [(torch.ones(2, 3), torch.zeros(2))]
    >>> [x.shape for x, _ in Prefetcher(batches, "cpu")]
    [torch.Size([2, 3])]
    """

    def __init__(self, data: Iterable[Any], device: str | torch.device) -> None:
        self.data = data
        self.device = torch.device(device)
        self._state: dict[str, Any] | None = None  # the data's state after the last batch out
        if callable(getattr(data, "set_epoch", None)):
            self.set_epoch = data.set_epoch  # type: ignore[attr-defined]
        if callable(getattr(data, "state_dict", None)):
            self.state_dict = self._state_dict
        if callable(getattr(data, "load_state_dict", None)):
            self.load_state_dict = self._load_state_dict
        if hasattr(data, "batch_size"):
            self.batch_size = data.batch_size
        if hasattr(data, "sampler"):  # a DataLoader's DistributedSampler gets set_epoch
            self.sampler = data.sampler
        if callable(getattr(data, "shard_sizes", None)):  # padding left out of the metrics
            self.shard_sizes = data.shard_sizes  # type: ignore[attr-defined]
        if callable(getattr(data, "shard", None)):  # the loop shards it under torchrun
            self.shard = self._shard

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]  # TypeError when data has no length

    def __iter__(self) -> Iterator[Any]:
        self._state = None
        if self.device.type != "cuda":
            return iter(self.data)
        return self._ahead(self._cuda_copier())

    def _shard(self, rank: int, world_size: int) -> Prefetcher:
        return Prefetcher(self.data.shard(rank, world_size), self.device)  # type: ignore[attr-defined]

    def _state_dict(self) -> dict[str, Any]:
        return self._state if self._state is not None else self.data.state_dict()  # type: ignore[attr-defined]

    def _load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._state = None
        self.data.load_state_dict(state)  # type: ignore[attr-defined]

    def _snapshot(self) -> dict[str, Any] | None:
        state_dict = getattr(self.data, "state_dict", None)
        return state_dict() if callable(state_dict) else None

    def _ahead(self, start: Callable[[Any], Callable[[], Any]]) -> Iterator[Any]:
        """Yield the batches of ``data``, starting the copy of the next one (``start(batch)``
        returns a ``finish()`` that hands the copied batch to the consumer) before yielding."""
        iterator = iter(self.data)
        pending = None
        for batch in iterator:
            state = self._snapshot()  # taken before the next batch is fetched ahead
            following = (start(batch), state)
            if pending is not None:
                finish, self._state = pending
                pending = following
                yield finish()
            else:
                pending = following
        if pending is not None:
            finish, self._state = pending
            yield finish()
        self._state = None  # all handed out: the data's own state is right again

    def _cuda_copier(self) -> Callable[[Any], Callable[[], Any]]:
        device = self.device
        stream = torch.cuda.Stream(device)

        def start(batch: Any) -> Callable[[], Any]:
            with torch.cuda.stream(stream):
                moved = move_to_device(_map_tensors(batch, _pinned), device, non_blocking=True)
                copied = stream.record_event()

            def finish() -> Any:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(copied)
                # Allocated on the side stream but used on the consumer's: without this the
                # allocator could hand the memory to the next copy while the step still reads it.
                _map_tensors(moved, lambda t: t.record_stream(consumer) if t.is_cuda else None)
                return moved

            return finish

        return start
