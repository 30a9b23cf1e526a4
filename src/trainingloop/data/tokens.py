"""Next-token windows over one long 1-D token array, as language-model training reads it.

This module owns two views of a token array (a tensor, a NumPy array, or a memory-mapped
``.bin`` file of ``uint16`` as nanoGPT's ``prepare.py`` writes it):

- :class:`TokenDataset`: the fixed windows ``i = 0, stride, 2·stride, …``, an
  :class:`~trainingloop.data.pipeline.ArrayDataset` whose two columns (``"input"`` and
  ``"target"``) are computed from the tokens by index arithmetic, so ``.shuffle``, ``.batch``,
  ``.map``, ``.shard`` and exact resume are the pipeline's own;
- :class:`RandomWindows` (``TokenDataset.random``): nanoGPT's sampler, an endless seeded stream
  of batches of uniformly random windows with its own ``torch.Generator``, resumable bit for bit.

Neither materialises the windows: a batch gathers its rows from a strided view of the tokens
(``Tensor.unfold`` / ``sliding_window_view``), so a memory-mapped file stays mapped and only
each batch's tokens are read.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainingloop.data.pipeline import ArrayDataset, is_mapped, load, read_rows

__all__ = ["RandomWindows", "TokenDataset", "read_tokens"]

Tokens = Tensor | np.ndarray
TokenSource = Tensor | np.ndarray | str | os.PathLike[str]


def read_tokens(tokens: TokenSource, dtype: Any = np.uint16) -> Tokens:
    """A 1-D integer token array; a path is memory-mapped (read-only) as ``dtype``.

    >>> read_tokens(np.array([3, 1, 2], dtype=np.uint16)).tolist()
    [3, 1, 2]
    """
    if isinstance(tokens, (str, os.PathLike)):
        path = Path(tokens)
        size, item = path.stat().st_size, np.dtype(dtype).itemsize
        if size % item:
            raise ValueError(f"token file {str(path)!r} has {size} bytes, not a multiple of "
                             f"{item} (the size of {np.dtype(dtype).name})")
        if size == 0:  # np.memmap refuses an empty file
            return np.empty(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")
    array: Tokens = tokens if isinstance(tokens, (Tensor, np.ndarray)) else torch.as_tensor(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(array.shape)}")
    integer = (not array.dtype.is_floating_point and not array.dtype.is_complex
               and array.dtype != torch.bool) if isinstance(array, Tensor) else (
        np.issubdtype(array.dtype, np.integer))
    if not integer:
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    return array


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_block_size(block_size: int, count: int) -> int:
    block_size = _positive("block_size", block_size)
    if block_size >= count:
        raise ValueError(f"block_size {block_size} is not smaller than the token count {count}: "
                         "a window needs block_size + 1 tokens")
    return block_size


def _window_view(tokens: Tokens, width: int, stride: int) -> Tokens:
    """Rows ``tokens[i : i + width]`` for ``i = 0, stride, …`` while they fit: a view, no copy."""
    if isinstance(tokens, Tensor):
        return tokens.unfold(0, width, stride)
    return np.lib.stride_tricks.sliding_window_view(tokens, width)[::stride]


def _take_windows(windows: Tokens, indices: Tensor | slice) -> tuple[Tensor, Tensor]:
    """``(input, target)`` int64 batches of the window rows ``indices`` (fresh tensors)."""
    if isinstance(windows, np.ndarray):  # read just these rows, in file order
        rows = read_rows(windows, indices)
    elif isinstance(indices, slice):
        rows = windows[indices]
    else:
        rows = windows.index_select(0, indices.to(windows.device, non_blocking=True))
    def fresh(t: Tensor) -> Tensor:
        return t.to(dtype=torch.int64, memory_format=torch.contiguous_format, copy=True)

    return fresh(rows[:, :-1]), fresh(rows[:, 1:])


def _load_tokens(tokens: Tokens, device: str | torch.device, pin: bool = False) -> Tensor:
    """The tokens on ``device`` as int32 (int64 where their dtype does not fit in int32)."""
    fits = (np.can_cast(tokens.dtype, np.int32) if isinstance(tokens, np.ndarray)
            else torch.can_cast(tokens.dtype, torch.int32) and tokens.dtype != torch.int64)
    return load(tokens, device, pin=pin, dtype=torch.int32 if fits else torch.int64)


class TokenDataset(ArrayDataset):
    """Next-token windows: item ``k`` is ``(tokens[i : i+block_size], tokens[i+1 : i+1+block_size])``
    as int64, ``i = k·stride``, for every ``i`` with ``i + block_size + 1 <= len(tokens)``.

    >>> ds = TokenDataset(torch.arange(10), block_size=3)
    >>> [(x.tolist(), y.tolist()) for x, y in ds]
    [([0, 1, 2], [1, 2, 3]), ([3, 4, 5], [4, 5, 6]), ([6, 7, 8], [7, 8, 9])]
    >>> len(TokenDataset(torch.arange(10), 3, stride=1).shuffle(seed=0).batch(4))
    2

    ``tokens`` is a 1-D integer tensor or NumPy array, or the path of a raw token file
    (nanoGPT's ``train.bin``), memory-mapped as ``dtype`` (``uint16`` by default). ``stride``
    defaults to ``block_size`` (windows side by side). Columns ``"input"`` and ``"target"``:
    ``.map(transform, "input")``, ``.shuffle(seed)``, ``.batch(n)``, ``.shard(rank, world)``,
    ``state_dict()`` are :class:`ArrayDataset`'s. A batch gathers its windows from a strided
    view of the tokens, so a memory-mapped file stays mapped; :meth:`to` and
    :meth:`pin_memory` load the tokens (not the windows) as int32, :meth:`cache` materialises
    the windows as a plain :class:`ArrayDataset`.
    """

    _unit = "windows"

    def __init__(self, tokens: TokenSource, block_size: int, stride: int | None = None, *,
                 dtype: Any = np.uint16) -> None:
        self._tokens = read_tokens(tokens, dtype)
        self.block_size = _check_block_size(block_size, len(self._tokens))
        self.stride = self.block_size if stride is None else _positive("stride", stride)
        self._windows = _window_view(self._tokens, self.block_size + 1, self.stride)
        self._setup(len(self._windows), ["input", "target"])

    @staticmethod
    def random(tokens: TokenSource, block_size: int, batch_size: int, seed: int = 0, *,
               dtype: Any = np.uint16) -> RandomWindows:
        """nanoGPT's sampler: an endless, seeded, resumable stream of random-window batches.

        >>> stream = TokenDataset.random(torch.arange(100), block_size=8, batch_size=4, seed=0)
        >>> x, y = next(iter(stream))
        >>> tuple(x.shape), bool((y - x == 1).all())
        ((4, 8), True)
        """
        return RandomWindows(tokens, block_size, batch_size, seed, dtype=dtype)

    @property
    def tokens(self) -> Tokens:
        """The token array (a memory-mapped one stays mapped)."""
        return self._tokens

    def column(self, name: str) -> Tensor:
        """Every window's ``"input"`` or ``"target"``, materialised (``len × block_size``)."""
        if name not in self._transforms:
            raise KeyError(f"no column {name!r}; columns: {self.column_names}")
        return self._rows(slice(0, self._length), [name])[name]

    def _device(self) -> torch.device:
        return self._tokens.device if isinstance(self._tokens, Tensor) else torch.device("cpu")

    def _in_memory(self, name: str) -> Tensor | None:
        return None  # windows are always computed

    def _rows(self, indices: Tensor | slice,
              names: Any = None) -> dict[str, Tensor]:
        inputs, targets = _take_windows(self._windows, indices)
        rows = {"input": inputs, "target": targets}
        return rows if names is None else {name: rows[name] for name in names}

    def _moved(self, tokens: Tensor) -> TokenDataset:
        other = self._derive()
        assert isinstance(other, TokenDataset)
        other._tokens = tokens
        other._windows = _window_view(tokens, self.block_size + 1, self.stride)
        return other

    def to(self, device: str | torch.device, non_blocking: bool = False) -> TokenDataset:
        """The same windows over the tokens loaded onto ``device`` (as int32: half of int64's
        memory); batches and transforms are then computed there."""
        return self._moved(_load_tokens(self._tokens, device))

    def pin_memory(self) -> TokenDataset:
        """The same windows over the tokens loaded into pinned host memory (as int32)."""
        return self._moved(_load_tokens(self._tokens, "cpu", pin=True))

    def __repr__(self) -> str:
        mapped = ", memory-mapped" if is_mapped(self._tokens) else ""
        return (f"TokenDataset({len(self._tokens)} tokens{mapped}, block_size={self.block_size}, "
                f"stride={self.stride}, windows={self._length}, batch_size={self._batch_size}, "
                f"shuffle_seed={self._seed})")


class RandomWindows:
    """An endless stream of ``(x, y)`` batches (``batch_size × block_size``, int64) of uniformly
    random windows, as nanoGPT's ``get_batch``: ``ix = torch.randint(len(tokens) - block_size,
    (batch_size,), generator=g)``, ``x = tokens[ix : ix+block_size]``, ``y`` shifted by one.

    >>> stream = RandomWindows(torch.arange(50), block_size=4, batch_size=2, seed=1)
    >>> batches = iter(stream)
    >>> x, y = next(batches)
    >>> stream.drawn, tuple(y.shape)
    (1, (2, 4))

    It draws from its own ``torch.Generator`` seeded with ``seed`` (never the global RNG), so
    the same seed gives the same stream, the same as nanoGPT's after ``torch.manual_seed(seed)``.
    There is one stream per object: every ``iter()`` continues it, so it has no ``len`` (train
    it with ``fit(..., steps_per_epoch=k)``) and :meth:`set_epoch` does nothing. ``state_dict``
    holds the generator's state and the number of batches drawn; ``load_state_dict`` continues
    the stream bit for bit. :meth:`shard` gives rank ``r`` of ``w`` its own stream, seeded
    ``seed · w + r`` (rank 0 of 1 is ``seed`` itself; distinct ranks, distinct seeds). A
    memory-mapped token file stays mapped: each batch reads its ``batch_size`` windows only.
    """

    def __init__(self, tokens: TokenSource, block_size: int, batch_size: int, seed: int = 0, *,
                 dtype: Any = np.uint16) -> None:
        self._tokens = read_tokens(tokens, dtype)
        self.block_size = _check_block_size(block_size, len(self._tokens))
        self.batch_size = _positive("batch_size", batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = 0, 1
        self.device: torch.device | None = None  # None: where the tokens are
        self._windows = _window_view(self._tokens, self.block_size + 1, 1)
        self._generator = torch.Generator().manual_seed(self.stream_seed)
        self.drawn = 0  # batches drawn so far

    @property
    def stream_seed(self) -> int:
        """The generator's seed: ``seed · world_size + rank``."""
        return self.seed * self.world_size + self.rank

    @property
    def tokens(self) -> Tokens:
        """The token array (a memory-mapped one stays mapped)."""
        return self._tokens

    def _copy(self) -> RandomWindows:
        other = object.__new__(RandomWindows)
        other.__dict__.update(self.__dict__)
        other._generator = torch.Generator()
        other._generator.set_state(self._generator.get_state())
        return other

    def shard(self, rank: int, world_size: int) -> RandomWindows:
        """Rank ``rank``'s own stream, from its start: seeded ``seed · world_size + rank``."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        other = self._copy()
        other.rank, other.world_size = rank, world_size
        other._generator = torch.Generator().manual_seed(other.stream_seed)
        other.drawn = 0
        return other

    def to(self, device: str | torch.device) -> RandomWindows:
        """The same stream (from its current point) with batches on ``device``; on CUDA they are
        copied from pinned memory without blocking, as nanoGPT does. The tokens stay put."""
        other = self._copy()
        other.device = torch.device(device)
        return other

    def set_epoch(self, epoch: int) -> None:
        """Nothing: an endless stream has no passes (the loop may call it)."""

    def _draw(self) -> tuple[Tensor, Tensor]:
        ix = torch.randint(len(self._windows), (self.batch_size,), generator=self._generator)
        x, y = _take_windows(self._windows, ix)
        self.drawn += 1
        device = self.device
        if device is None or x.device == device:
            return x, y
        if device.type == "cuda" and x.device.type == "cpu":  # no host sync on the way
            return (x.pin_memory().to(device, non_blocking=True),
                    y.pin_memory().to(device, non_blocking=True))
        return x.to(device), y.to(device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self._draw()

    def state_dict(self) -> dict[str, Any]:
        """The generator's state, the batches drawn, and the shape of the stream."""
        return {"generator": self._generator.get_state(), "drawn": self.drawn,
                "tokens": len(self._tokens), "block_size": self.block_size,
                "batch_size": self.batch_size, "stream_seed": self.stream_seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue the stream where ``state`` was taken; ValueError if the tokens, block size
        or batch size differ (the same state would then draw other windows)."""
        for key, mine in (("tokens", len(self._tokens)), ("block_size", self.block_size),
                          ("batch_size", self.batch_size)):
            if int(state[key]) != mine:
                raise ValueError(f"the saved stream is for {key} {int(state[key])} but this "
                                 f"one has {mine}: it cannot continue the same windows")
        self._generator.set_state(state["generator"])
        self.drawn = int(state["drawn"])

    def __repr__(self) -> str:
        mapped = ", memory-mapped" if is_mapped(self._tokens) else ""
        return (f"RandomWindows({len(self._tokens)} tokens{mapped}, block_size="
                f"{self.block_size}, batch_size={self.batch_size}, seed={self.seed}, "
                f"rank={self.rank}/{self.world_size}, drawn={self.drawn})")
