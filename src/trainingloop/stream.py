"""The training data as a stream of passes: epochs of all batches, or of ``steps_per_epoch``.

:class:`TrainingStream` owns the iterator over the training data and where it stands: the pass
(one full iteration of the data, 0-based), the batches drawn in it, and the RNG states at the
pass's start. Without ``steps_per_epoch`` every epoch is one pass; with it (Keras's semantics)
an epoch is the next k batches, the iterator carries on across epochs and a new pass starts,
with ``set_epoch(pass)``, only when the old one is exhausted.

On resume the stream reopens its pass at the saved position without loading what it skips
where it can: data with ``state_dict``/``load_state_dict`` (the library's datasets, torchdata's
``StatefulDataLoader``) restore it themselves, a ``DataLoader`` skips its sampler's indices,
a list or tuple is sliced; anything else is replayed batch by batch, with a warning.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from trainingloop import checkpointing
from trainingloop.distributed import loader_settings, set_epoch

__all__ = ["TrainingStream", "check_counts", "length", "phase_length"]


def length(data: Any) -> int | None:
    """``len(data)``, or None for data without a length (a generator, an IterableDataset)."""
    try:
        return len(data)
    except TypeError:
        return None


def check_counts(training: Iterable[Any], steps_per_epoch: int | None,
                 validation_steps: int | None) -> None:
    """Raise ValueError for a ``steps_per_epoch`` or ``validation_steps`` that is not an
    integer >= 1 or None, or training data that cannot make an epoch (empty, or without a
    length and without ``steps_per_epoch``)."""
    for name, value in (("steps_per_epoch", steps_per_epoch),
                        ("validation_steps", validation_steps)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")
    count = length(training)
    if steps_per_epoch is None and count is None:
        raise ValueError(f"the training data ({type(training).__name__}) has no length (a "
                         "generator, an IterableDataset, a stream): pass steps_per_epoch=... "
                         "to say how many batches make an epoch")
    if count == 0:
        raise ValueError(f"the training data ({type(training).__name__}) is empty")


def phase_length(data: Iterable[Any], steps: int | None) -> int | None:
    """Batches in a phase over ``data`` limited to ``steps`` (None: unknown)."""
    count = length(data)
    if steps is None:
        return count
    return steps if count is None else min(count, steps)


class _SkipBatches(Sampler[list[int]]):
    """A batch sampler that draws, and drops, the first ``skip`` batches of ``batches``."""

    def __init__(self, batches: Iterable[list[int]], skip: int) -> None:
        self.batches, self.skip = batches, skip
        self._primed: tuple[Iterator[list[int]], list[int] | None] | None = None

    def prime(self) -> None:
        """Draw the order now (the sampler's random draws) and skip, loading nothing.

        Called right after the loader's iterator is made (which draws its base seed), so
        the draws come in the order of a plain iteration (they may share one generator),
        while the RNG states still are the pass's.
        """
        iterator = iter(self.batches)
        for _ in itertools.islice(iterator, self.skip):
            pass
        self._primed = (iterator, next(iterator, None))

    def __iter__(self) -> Iterator[list[int]]:
        if self._primed is None:
            self.prime()
        assert self._primed is not None
        iterator, first = self._primed
        self._primed = None
        if first is not None:
            yield first
            yield from iterator

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)  # type: ignore[arg-type]


def _skipping_loader(loader: DataLoader[Any], skip: int) -> DataLoader[Any] | None:
    """A one-off loader over the same data and settings that starts after ``skip`` batches
    (None where the loader has no batch sampler to skip in, e.g. an IterableDataset)."""
    if loader.batch_sampler is None or isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return None
    options = loader_settings(loader)  # the user's settings, as distributed.shard keeps them
    options["persistent_workers"] = False  # a loader for the rest of one pass only
    return DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip),
                      **options)


class TrainingStream:
    """Batches of ``data`` for each epoch, ``steps_per_epoch`` at a time or a pass at a time.

    ``generators`` are the data's own ``torch.Generator`` objects, saved with the RNG states.
    """

    def __init__(self, data: Iterable[Any], steps_per_epoch: int | None,
                 generators: Sequence[torch.Generator] = ()) -> None:
        self.data = data
        self.steps_per_epoch = steps_per_epoch
        self.generators = list(generators)
        self.pass_index = -1  # no pass opened yet
        self.drawn = 0  # batches drawn in the current pass
        self.pass_rng: dict[str, Any] | None = None  # RNG states when the pass was opened
        self.exhausted = False  # a pass ran out within the current epoch
        self._iterator: Iterator[Any] | None = None
        self._reopen: tuple[int, int, dict[str, Any] | None] | None = None
        self._data_restored = False
        self._rng_after: dict[str, Any] | None = None
        self._epoch_set: int | None = None  # the pass whose set_epoch begin_epoch called

    @property
    def batches_per_epoch(self) -> int | None:
        """``steps_per_epoch``, or the data's length (None: unknown)."""
        return self.steps_per_epoch or length(self.data)

    @property
    def mid_pass(self) -> bool:
        """Whether a pass is open with batches drawn (its position then matters to a resume)."""
        if self._reopen is not None:
            return self._reopen[1] > 0
        return self._iterator is not None and self.drawn > 0

    def begin_epoch(self, epoch_index: int) -> None:
        """At an epoch's start: a pass per epoch calls ``set_epoch(epoch_index)`` now (before
        ``EPOCH_START``, as SPEC §4 has it); with ``steps_per_epoch`` a pass calls it when it
        opens."""
        if self.steps_per_epoch is None and self._reopen is None:
            set_epoch(self.data, epoch_index)
            self._epoch_set = epoch_index

    def epoch(self, epoch_index: int, done: int = 0) -> Iterator[Any]:
        """The batches of epoch ``epoch_index`` (``done`` of them were trained before a resume):
        its whole pass, or the next ``steps_per_epoch - done`` batches."""
        self.exhausted = False
        if self.steps_per_epoch is None:
            if self._reopen is None:
                self._open(epoch_index)
            return self._draw(None)
        return self._draw(self.steps_per_epoch - done)

    def _draw(self, count: int | None) -> Iterator[Any]:
        drawn = 0
        while count is None or drawn < count:
            if self._iterator is None:
                if self._reopen is not None:
                    self._resume_pass()
                else:
                    self._open(self.pass_index + 1)
            assert self._iterator is not None
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                if count is None:
                    return
                if self.drawn == 0:  # a fresh pass yielded nothing: a spent one-shot iterator
                    self.exhausted = True
                    return
                continue
            self.drawn += 1
            drawn += 1
            yield batch

    def _open(self, pass_index: int) -> None:
        self.pass_index, self.drawn = pass_index, 0
        if self._epoch_set != pass_index:
            set_epoch(self.data, pass_index)
        self._epoch_set = None
        self.pass_rng = checkpointing.rng_state(self.generators)
        self._iterator = iter(self.data)

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pass, the batches drawn in it and the RNG states at its start."""
        if self._reopen is not None:  # resumed, not reopened yet: still the saved position
            pass_index, drawn, pass_rng = self._reopen
            return {"pass": pass_index, "drawn": drawn, "pass_rng": pass_rng}
        return {"pass": self.pass_index, "drawn": self.drawn, "pass_rng": self.pass_rng}

    def load_state_dict(self, state: dict[str, Any], data_restored: bool,
                        rng_after: dict[str, Any] | None = None) -> None:
        """Reopen the saved pass at its position when the next batch is asked for.

        ``data_restored``: the data restored its own position (its ``load_state_dict``).
        ``rng_after``: the RNG states to continue with once the pass is reopened (a
        mid-training checkpoint's); by default the states of that moment are kept.
        """
        self._reopen = (int(state["pass"]), int(state["drawn"]), state["pass_rng"])
        self._data_restored = data_restored
        self._rng_after = rng_after
        self._iterator = None

    def _resume_pass(self) -> None:
        assert self._reopen is not None
        pass_index, drawn, pass_rng = self._reopen
        self._reopen = None
        if pass_index < 0:  # saved before any batch: start at the beginning
            self._open(0)
            return
        self.pass_index, self.drawn, self.pass_rng = pass_index, drawn, pass_rng
        after = self._rng_after or checkpointing.rng_state(self.generators)
        if pass_rng is not None:  # the pass's order comes from the RNGs at its start
            checkpointing.restore_rng(pass_rng, self.generators)
        set_epoch(self.data, pass_index)
        self._iterator = self._skip(drawn)
        checkpointing.restore_rng(after, self.generators)

    def _skip(self, drawn: int) -> Iterator[Any]:
        data = self.data
        if self._data_restored or drawn == 0:
            return iter(data)
        if isinstance(data, DataLoader):
            loader = _skipping_loader(data, drawn)
            if loader is not None:
                iterator = iter(loader)
                loader.batch_sampler.prime()  # type: ignore[union-attr]
                return iterator
        if isinstance(data, Sequence):
            return iter(data[drawn:])
        if isinstance(data, Iterator):  # (calling iter() on a loader would draw a seed)
            raise ValueError(f"cannot resume mid-pass: the training data ({type(data).__name__}) "
                             f"is a one-shot iterator that cannot be replayed to batch {drawn}; "
                             "give it state_dict/load_state_dict, or make it re-iterable")
        warnings.warn(f"resuming mid-pass: replaying {drawn} batches of the "
                      f"{type(data).__name__} to reach the checkpoint's position (give the data "
                      "state_dict/load_state_dict, e.g. torchdata's StatefulDataLoader, to skip "
                      "this)", RuntimeWarning, stacklevel=4)
        replayed = iter(data)
        for _ in itertools.islice(replayed, drawn):
            pass
        return replayed
