"""ArrayDataset: batching, shuffling, per-epoch orders, positions, transforms on batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trainingloop as tl
from trainingloop.data import ArrayDataset


def _ds(n: int = 10) -> ArrayDataset:
    return ArrayDataset({"x": torch.arange(n, dtype=torch.float32), "y": np.arange(n) * 10})


def test_batches_keep_the_short_last_one_and_can_drop_it() -> None:
    batches = list(_ds().batch(4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert len(_ds().batch(4)) == 3 and len(_ds().batch(4, drop_remainder=True)) == 2
    assert [len(x) for x, _ in _ds().batch(4, drop_remainder=True)] == [4, 4]
    assert torch.equal(batches[0][1], torch.tensor([0, 10, 20, 30]))


def test_spec_mnist_length() -> None:
    ds = ArrayDataset({"image": torch.zeros(60000, 1, 1, 1, dtype=torch.uint8),
                       "label": torch.zeros(60000)})
    assert len(ds.batch(64)) == 938


def test_every_example_once_per_epoch_and_orders_differ() -> None:
    ds = _ds(23).shuffle(seed=3).batch(5)
    orders = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        xs = torch.cat([x for x, _ in ds])
        assert sorted(xs.tolist()) == list(range(23))
        orders.append(xs)
    assert not torch.equal(orders[0], orders[1])
    again = _ds(23).shuffle(seed=3).batch(5)
    again.set_epoch(1)
    assert torch.equal(torch.cat([x for x, _ in again]), orders[1])
    other_seed = _ds(23).shuffle(seed=4).batch(5)
    assert not torch.equal(torch.cat([x for x, _ in other_seed]), orders[0])


def test_columns_stay_aligned_after_shuffle() -> None:
    for x, y in _ds(50).shuffle(seed=1).batch(7):
        assert torch.equal(y, (x * 10).long())


def test_map_is_applied_to_whole_batches_and_returns_a_new_dataset() -> None:
    calls = []

    def double(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return t * 2

    base = _ds()
    mapped = base.map(double, "x").batch(5)
    assert [x.tolist() for x, _ in mapped] == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18]]
    assert calls == [(5,), (5,)]
    assert next(iter(base.batch(5)))[0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError, match="'z'"):
        base.map(double, "z")


def test_unbatched_iteration_and_indexing() -> None:
    ds = _ds(3).map(lambda t: t + 1, "x")
    assert [(float(x), int(y)) for x, y in ds] == [(1.0, 0), (2.0, 10), (3.0, 20)]
    assert float(ds[-1][0]) == 3.0
    with pytest.raises(IndexError):
        ds[3]


def test_position_resume_continues_the_same_order() -> None:
    ds = _ds(20).shuffle(seed=0).batch(3)
    ds.set_epoch(2)
    full = [x for x, _ in ds]
    it = iter(ds)
    for _ in range(4):
        next(it)
    state = ds.state_dict()
    assert state == {"epoch": 2, "position": 4}
    fresh = _ds(20).shuffle(seed=0).batch(3)
    fresh.load_state_dict(state)
    fresh.set_epoch(2)
    rest = [x for x, _ in fresh]
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a, b) for a, b in zip(rest, full[4:]))
    assert len([x for x, _ in fresh]) == len(full)  # the next pass is whole again


def test_shards_are_disjoint_and_even() -> None:
    base = _ds(11).shuffle(seed=0).batch(2)
    shards = [base.shard(r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    seen = torch.cat([torch.cat([x for x, _ in s]) for s in shards])
    assert len(seen) == 12 and set(seen.tolist()) == set(range(11))  # one example repeated


def test_unequal_columns_fail() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset({"a": torch.zeros(3), "b": torch.zeros(4)})


def test_loop_calls_set_epoch() -> None:
    ds = tl.datasets.synthetic_linear([1.0], 0.0, 40).shuffle(seed=0).batch(8)
    epochs = []
    model = torch.nn.Linear(1, 1)
    loop = tl.TrainingLoop(ds, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                           loss=torch.nn.functional.mse_loss, include_default_callbacks=False,
                           callbacks=[lambda lp, ev: epochs.append(ds.epoch)
                                      if ev is tl.Event.TRAINING_START else None])
    loop.fit(model, epochs=3, device="cpu")
    assert epochs == [0, 1, 2]


def test_cache_applies_the_transforms_once_with_the_same_result() -> None:
    calls = []

    def double(t: torch.Tensor) -> torch.Tensor:
        calls.append(len(t))
        return t * 2

    mapped = _ds(10).map(double, "x")
    cached = mapped.cache(chunk=4)
    assert calls == [4, 4, 2]
    for (a, b), (c, d) in zip(mapped.shuffle(seed=1).batch(3), cached.shuffle(seed=1).batch(3)):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert calls == [4, 4, 2, 3, 3, 3, 1]  # only the uncached pipeline ran the transform again
