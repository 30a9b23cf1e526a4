"""The vectorised data pipeline: ``ArrayDataset(...).map(...).shuffle(...).batch(...)``.

:class:`ArrayDataset` owns columns of equal length held as contiguous tensors, the transforms
mapped onto each column, the shuffle seed, the batch size, the epoch and the position inside
it. A batched dataset slices whole batches (one ``index_select`` per column, no per-example
Python, no collate) and applies each column's transforms to the whole batch, on whatever device
the columns live on (``.to(device)`` moves them, after airbench). Every call returns a new
dataset; the original is unchanged, as in MindSpore's ``dataset.map(...).batch(...)``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ArrayDataset"]

Transform = Callable[[Tensor], Tensor]


def _as_tensor(name: str, array: Any) -> Tensor:
    if isinstance(array, Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(array))
    try:
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"column {name!r} is not array-like: {error}") from None


class ArrayDataset:
    """Columns of equal length, iterated as examples or (after :meth:`batch`) whole batches.

    >>> ds = ArrayDataset({"x": torch.arange(10.0), "y": torch.arange(10)}).batch(4)
    >>> [tuple(x.shape) for x, y in ds]
    [(4,), (4,), (2,)]

    Batches are tuples in column order (a single column yields bare tensors). With
    :meth:`shuffle`, each epoch (set by the loop through :meth:`set_epoch`) has its own order,
    drawn from ``seed`` and the epoch number alone, so it can be replayed exactly. Without a
    shuffle, a batch that no transform copies is a view of its column (as a tensor slice is):
    clone it before changing it in place.
    """

    def __init__(self, columns: Mapping[str, Any] | Sequence[Any]) -> None:
        if isinstance(columns, Mapping):
            named = dict(columns)
        else:
            named = {f"column_{i}": column for i, column in enumerate(columns)}
        if not named:
            raise ValueError("ArrayDataset needs at least one column")
        self._columns: dict[str, Tensor] = {k: _as_tensor(k, v) for k, v in named.items()}
        lengths = {k: (len(v) if v.dim() else 0) for k, v in self._columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ArrayDataset columns differ in length: {lengths}")
        self._length = next(iter(lengths.values()))
        self._transforms: dict[str, list[Transform]] = {k: [] for k in self._columns}
        self._seed: int | None = None
        self._batch_size: int | None = None
        self._drop_remainder = False
        self._shard = (0, 1)  # (rank, world size)
        self.epoch = 0
        self.position = 0  # batches already yielded in this epoch
        self._resume_at: tuple[int, int] | None = None
        self.attributes: dict[str, Any] = {}  # e.g. a tokenizer or class names

    # -- building -----------------------------------------------------------------------------
    def _derive(self) -> ArrayDataset:
        other = copy.copy(self)
        other._transforms = {k: list(v) for k, v in self._transforms.items()}
        other._columns = dict(self._columns)
        other.attributes = dict(self.attributes)
        return other

    def map(self, transforms: Transform | Sequence[Transform], column: str) -> ArrayDataset:
        """Apply ``transforms`` (one callable or a list, in order) to ``column`` of each batch."""
        if column not in self._columns:
            raise KeyError(f"no column {column!r}; columns: {list(self._columns)}")
        steps = [transforms] if callable(transforms) else list(transforms)
        for step in steps:
            if not callable(step):
                raise TypeError(f"transform {step!r} for column {column!r} is not callable")
        other = self._derive()
        other._transforms[column].extend(steps)
        return other

    def shuffle(self, seed: int = 0) -> ArrayDataset:
        """Reshuffle every epoch, from ``seed`` and the epoch number."""
        other = self._derive()
        other._seed = int(seed)
        return other

    def batch(self, size: int, drop_remainder: bool = False) -> ArrayDataset:
        """Yield whole batches of ``size`` examples; the short last one unless dropped."""
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"batch size must be a positive integer, got {size!r}")
        other = self._derive()
        other._batch_size = size
        other._drop_remainder = drop_remainder
        return other

    def cache(self, chunk: int = 4096) -> ArrayDataset:
        """Apply the transforms mapped so far to every example once and keep the results.

        As tf.data's ``cache()``: put it after deterministic transforms (scaling,
        normalisation, layout) and before random ones, which must stay per batch.
        """
        other = self._derive()
        for name, transforms in self._transforms.items():
            if not transforms:
                continue
            column = self._columns[name]
            parts = []
            for start in range(0, max(self._length, 1), chunk):
                values = column[start:start + chunk]
                for transform in transforms:
                    values = transform(values)
                parts.append(values)
            other._columns[name] = torch.cat(parts)
            other._transforms[name] = []
        return other

    def to(self, device: str | torch.device, non_blocking: bool = False) -> ArrayDataset:
        """Move every column to ``device``; transforms then run there too."""
        other = self._derive()
        other._columns = {k: v.to(device, non_blocking=non_blocking)
                          for k, v in self._columns.items()}
        return other

    def pin_memory(self) -> ArrayDataset:
        """Pin the columns' host memory so that copies to a GPU can be asynchronous."""
        other = self._derive()
        other._columns = {k: v.pin_memory() for k, v in self._columns.items()}
        return other

    def shard(self, rank: int, world_size: int) -> ArrayDataset:
        """Keep only rank ``rank``'s share of every epoch (each rank the same number of batches)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        other = self._derive()
        other._shard = (rank, world_size)
        return other

    # -- reading ------------------------------------------------------------------------------
    @property
    def column_names(self) -> list[str]:
        """Names of the columns, in order."""
        return list(self._columns)

    def column(self, name: str) -> Tensor:
        """The raw (untransformed) tensor of column ``name``."""
        return self._columns[name]

    @property
    def batch_size(self) -> int | None:
        """The batch size, or None for an unbatched dataset."""
        return self._batch_size

    def _examples_per_rank(self) -> int:
        world = self._shard[1]
        if world == 1:
            return self._length
        per_rank = self._length // world if self._drop_remainder else math.ceil(
            self._length / world)
        return per_rank

    def shard_sizes(self) -> tuple[int, int]:
        """``(real, total)`` examples of this rank's share of an epoch.

        ``total`` is the same on every rank; when the examples do not divide evenly (and the
        remainder is kept) the last ``total - real`` of them are wrap-around padding, which
        metrics must not count (the loop leaves them out).
        """
        total = self._examples_per_rank()
        rank, world = self._shard
        if world == 1 or self._drop_remainder:
            return total, total
        return max(0, math.ceil((self._length - rank) / world)), total

    def __len__(self) -> int:
        examples = self._examples_per_rank()
        if self._batch_size is None:
            return examples
        if self._drop_remainder:
            return examples // self._batch_size
        return math.ceil(examples / self._batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows (called by the loop)."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> Tensor:
        """Indices of this rank's examples for ``epoch``, in the order they are visited."""
        epoch = self.epoch if epoch is None else epoch
        device = next(iter(self._columns.values())).device
        if self._seed is None:
            indices = torch.arange(self._length)
        else:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch)
            indices = torch.randperm(self._length, generator=generator)
        rank, world = self._shard
        if world > 1:
            total = self._examples_per_rank() * world
            if total > self._length:  # pad by wrapping around, as DistributedSampler does
                indices = torch.cat([indices, indices[: total - self._length]])
            indices = indices[:total][rank::world]
        return indices.to(device)

    def _gather(self, indices: Tensor | slice) -> tuple[Tensor, ...]:
        out = []
        for name, column in self._columns.items():
            # index_select is several times faster than advanced indexing for a row gather
            values = column[indices] if isinstance(indices, slice) else column.index_select(
                0, indices)
            for transform in self._transforms[name]:
                values = transform(values)
            out.append(values)
        return tuple(out)

    def __iter__(self) -> Iterator[Any]:
        start = 0
        if self._resume_at is not None and self._resume_at[0] == self.epoch:
            start = self._resume_at[1]
        self._resume_at = None
        self.position = start
        if self._batch_size is None:
            indices = self.order()
            for i in range(start, len(indices)):
                self.position = i + 1
                yield self._unwrap(tuple(t[0] for t in self._gather(indices[i:i + 1])))
            return
        # The hot path: each epoch's batches are cut once (slices, i.e. views, in order; index
        # tensors from one split of the permutation otherwise), so a batch costs one gather per
        # column plus its transforms.
        size = self._batch_size
        pieces: Sequence[Tensor | slice]
        if self._seed is None and self._shard[1] == 1:
            pieces = [slice(lo, lo + size) for lo in range(0, self._length, size)]
        else:
            pieces = self.order().split(size)
        for b in range(start, len(self)):
            self.position = b + 1
            yield self._unwrap(self._gather(pieces[b]))

    @staticmethod
    def _unwrap(values: tuple[Tensor, ...]) -> Any:
        return values[0] if len(values) == 1 else values

    def __getitem__(self, index: int) -> Any:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} is out of range for {self._length} examples")
        index %= self._length
        return self._unwrap(tuple(t[0] for t in self._gather(slice(index, index + 1))))

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Epoch and position (batches already yielded) for an exact resume."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Make the next iteration of ``state['epoch']`` start after its yielded batches."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._resume_at = (self.epoch, self.position)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self._columns.items()}
        return (f"ArrayDataset({shapes}, batch_size={self._batch_size}, "
                f"shuffle_seed={self._seed})")
