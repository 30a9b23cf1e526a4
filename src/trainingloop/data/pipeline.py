"""The vectorised data pipeline: ``ArrayDataset(...).map(...).shuffle(...).batch(...)``.

:class:`ArrayDataset` owns columns of equal length held as contiguous tensors (or, for NumPy
memory-mapped arrays, as the mapping itself), the transforms mapped onto each column, the
shuffle seed, the batch size, the epoch and the position inside it. A batched dataset slices
whole batches (one ``index_select`` per column, no per-example Python, no collate) and applies
each column's transforms to the whole batch, on whatever device the columns live on
(``.to(device)`` moves them, after airbench). A memory-mapped column is read one batch of rows
at a time, so a data set larger than RAM trains in a few batches of the process's own memory.
Every call returns a new dataset; the original is unchanged, as in MindSpore's
``dataset.map(...).batch(...)``. :mod:`trainingloop.data.tokens` builds on the same machinery.
"""

from __future__ import annotations

import copy
import math
import mmap
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ArrayDataset", "is_mapped", "load", "read_rows"]

Transform = Callable[[Tensor], Tensor]
Column = Tensor | np.ndarray  # an ndarray only when it is memory-mapped


def is_mapped(array: Any) -> bool:
    """Whether ``array`` is a NumPy array over a memory-mapped file (or a view of one).

    >>> is_mapped(np.zeros(3))
    False
    """
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def _as_column(name: str, array: Any) -> Column:
    if isinstance(array, Tensor):
        return array
    if isinstance(array, np.ndarray):
        if is_mapped(array):  # read per batch: a tensor over it could copy or be read-only
            return array
        return torch.from_numpy(np.ascontiguousarray(array))
    try:
        return torch.as_tensor(array)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"column {name!r} is not array-like: {error}") from None


_scratch = threading.local()  # per thread: the buffer a sorted gather lands in before reordering


def _scratch_rows(like: np.ndarray, count: int) -> np.ndarray:
    """A reused ``count``-row buffer shaped like ``like``'s rows (a fresh one per batch would be
    handed back to the OS by malloc's trimming and page-faulted in again: 5× slower here)."""
    shape = (count, *like.shape[1:])
    nbytes = like.itemsize * math.prod(shape)
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _scratch.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(like.dtype).reshape(shape)


def read_rows(array: np.ndarray, indices: Tensor | slice) -> Tensor:
    """Rows ``indices`` of a (memory-mapped) NumPy array as a new tensor, in the order asked.

    Only those rows are read, in ascending file order (a sorted gather: front to back, each
    page once), then put back into the order of ``indices``; the result owns its memory, so
    it is writable even when the mapping is read-only.

    >>> read_rows(np.arange(10) * 10, torch.tensor([7, 2, 5])).tolist()
    [70, 20, 50]
    """
    if isinstance(indices, slice):
        return torch.from_numpy(np.array(array[indices]))
    index = indices.cpu().numpy()  # CPU already, unless a tensor column lives on a GPU
    order = np.argsort(index, kind="stable")
    ascending = index[order]
    if len(ascending) and (ascending[0] < 0 or ascending[-1] >= len(array)):
        raise IndexError(f"row indices {ascending[0]}..{ascending[-1]} are out of range for "
                         f"{len(array)} rows")
    rows = _scratch_rows(array, len(index))
    np.take(array, ascending, axis=0, out=rows, mode="clip")  # "clip": unbuffered, in range
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return torch.from_numpy(np.take(rows, back, axis=0))


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def load(column: Column, device: str | torch.device = "cpu", *, pin: bool = False,
         non_blocking: bool = False, dtype: torch.dtype | None = None) -> Tensor:
    """``column`` as one tensor on ``device``; a mapped array is read in chunks of about 64 MiB
    (its only copy is the result, also on a GPU).

    >>> load(np.arange(3)).tolist()
    [0, 1, 2]
    """
    if isinstance(column, Tensor):
        moved = column.pin_memory() if pin else column
        moved = moved.to(device, non_blocking=non_blocking)
        return moved if dtype is None else moved.to(dtype)
    out = torch.empty(column.shape, dtype=dtype or _torch_dtype(column.dtype),
                      device=device, pin_memory=pin)
    row_bytes = max(1, column.itemsize * math.prod(column.shape[1:]))
    chunk = max(1, (64 << 20) // row_bytes)
    for lo in range(0, len(column), chunk):
        out[lo:lo + chunk].copy_(torch.from_numpy(np.array(column[lo:lo + chunk])))
    return out


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

    A NumPy memory-mapped column (``np.load(path, mmap_mode="r")``, ``np.memmap``, or a view
    of one) stays mapped: each batch reads just its rows (see :func:`read_rows`) into a new
    tensor, so the process's own memory is a few batches, not the file (the operating
    system's page cache of the file is not the process's memory). Batches, orders, shards
    and positions are those of the same data in memory. :meth:`to`, :meth:`pin_memory` and
    :meth:`cache` read a mapped column into memory.
    """

    _unit = "examples"  # what one item is, for error messages

    def __init__(self, columns: Mapping[str, Any] | Sequence[Any]) -> None:
        if isinstance(columns, Mapping):
            named = dict(columns)
        else:
            named = {f"column_{i}": column for i, column in enumerate(columns)}
        if not named:
            raise ValueError("ArrayDataset needs at least one column")
        self._columns: dict[str, Column] = {k: _as_column(k, v) for k, v in named.items()}
        lengths = {k: (len(v) if v.ndim else 0) for k, v in self._columns.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"ArrayDataset columns differ in length: {lengths}")
        self._setup(next(iter(lengths.values())), list(self._columns))

    def _setup(self, length: int, names: Sequence[str]) -> None:
        self._length = length
        self._transforms: dict[str, list[Transform]] = {k: [] for k in names}
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
        other.attributes = dict(self.attributes)
        return other

    def _with_columns(self, columns: dict[str, Column],
                      transforms: Mapping[str, list[Transform]]) -> ArrayDataset:
        """A plain ArrayDataset over ``columns`` with this one's order, batching and position."""
        other = ArrayDataset(columns)
        other._transforms = {k: list(transforms.get(k, [])) for k in other._transforms}
        other._seed, other._batch_size = self._seed, self._batch_size
        other._drop_remainder, other._shard = self._drop_remainder, self._shard
        other.epoch, other.position, other._resume_at = self.epoch, self.position, self._resume_at
        other.attributes = dict(self.attributes)
        return other

    def map(self, transforms: Transform | Sequence[Transform], column: str) -> ArrayDataset:
        """Apply ``transforms`` (one callable or a list, in order) to ``column`` of each batch."""
        if column not in self._transforms:
            raise KeyError(f"no column {column!r}; columns: {self.column_names}")
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
        normalisation, layout) and before random ones, which must stay per batch. The result
        lives in memory: a memory-mapped column is read whole (transformed or not).
        """
        kept = {name: self._in_memory(name) for name in self._transforms}
        todo = [name for name, tensor in kept.items()
                if tensor is None or self._transforms[name]]
        parts: dict[str, list[Tensor]] = {name: [] for name in todo}
        for start in range(0, max(self._length, 1), chunk) if todo else ():
            rows = self._rows(slice(start, start + chunk), todo)
            for name in todo:
                values = rows[name]
                for transform in self._transforms[name]:
                    values = transform(values)
                parts[name].append(values)
        columns: dict[str, Column] = {}
        for name in self._transforms:
            column = torch.cat(parts[name]) if name in parts else kept[name]
            assert column is not None  # kept in memory unless it is in parts
            columns[name] = column
        return self._with_columns(columns, {})

    def to(self, device: str | torch.device, non_blocking: bool = False) -> ArrayDataset:
        """Move every column to ``device`` (reading a memory-mapped one into memory there);
        transforms then run there too."""
        return self._with_columns({k: load(v, device, non_blocking=non_blocking)
                                   for k, v in self._columns.items()}, self._transforms)

    def pin_memory(self) -> ArrayDataset:
        """Pin the columns' host memory (reading memory-mapped ones into it) so that copies to a
        GPU can be asynchronous."""
        return self._with_columns({k: load(v, pin=True) for k, v in self._columns.items()},
                                  self._transforms)

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
        return list(self._transforms)

    def column(self, name: str) -> Column:
        """The raw (untransformed) column ``name``: a tensor, or the memory-mapped array."""
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

    def _device(self) -> torch.device:
        """Where index tensors go: the first in-memory column's device (mapped ones are read on
        the CPU)."""
        for column in self._columns.values():
            if isinstance(column, Tensor):
                return column.device
        return torch.device("cpu")

    def order(self, epoch: int | None = None) -> Tensor:
        """Indices of this rank's examples for ``epoch``, in the order they are visited."""
        epoch = self.epoch if epoch is None else epoch
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
        return indices.to(self._device())

    def _in_memory(self, name: str) -> Tensor | None:
        """Column ``name`` as a tensor if it is one already (nothing to read for it)."""
        column = self._columns[name]
        return column if isinstance(column, Tensor) else None

    def _rows(self, indices: Tensor | slice,
              names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """The raw rows ``indices`` of the columns ``names`` (default all), in column order."""
        out = {}
        for name in self._transforms if names is None else names:
            column = self._columns[name]
            if not isinstance(column, Tensor):
                out[name] = read_rows(column, indices)
            elif isinstance(indices, slice):
                out[name] = column[indices]
            else:  # index_select is several times faster than advanced indexing for a gather
                out[name] = column.index_select(0, indices)
        return out

    def _gather(self, indices: Tensor | slice) -> tuple[Tensor, ...]:
        out = []
        for name, values in self._rows(indices).items():
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
        """Epoch, position (batches already yielded) and length, for an exact resume."""
        return {"epoch": self.epoch, "position": self.position, "length": self._length}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Make the next iteration of ``state['epoch']`` start after its yielded batches.

        Raises ValueError if the data changed size since ``state`` was taken (a memory-mapped
        file rewritten, say): the saved position would not be in the same order. A state
        without ``length`` (from an older version) is taken as it is.
        """
        saved = state.get("length")
        if saved is not None and int(saved) != self._length:
            raise ValueError(
                f"the saved data position is for {int(saved)} {self._unit} but this "
                f"{type(self).__name__} has {self._length}: the data changed size since the "
                f"checkpoint (a memory-mapped file rewritten?), so its order cannot continue")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._resume_at = (self.epoch, self.position)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self._columns.items()}  # mapped ones too
        return (f"ArrayDataset({shapes}, batch_size={self._batch_size}, "
                f"shuffle_seed={self._seed})")
