"""ArrayDataset: batching, shuffling, per-epoch orders, positions, transforms on batches,
memory-mapped columns (same batches as in memory, read a batch at a time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import trainingloop as tl
from trainingloop.data import ArrayDataset
from trainingloop.data.pipeline import is_mapped


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
    assert state == {"epoch": 2, "position": 4, "length": 20}
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


# -- memory-mapped columns ---------------------------------------------------------------------
def _arrays(n: int = 53) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, 4, 3), dtype=np.uint8),
            rng.standard_normal((n, 2)).astype(np.float32))


def _mapped(tmp_path: Path, n: int = 53) -> dict[str, np.ndarray]:
    """The same columns as ``_arrays`` through np.load(mmap_mode), np.memmap and a strided view."""
    images, features = _arrays(n)
    np.save(tmp_path / "images.npy", images)
    wide = np.lib.format.open_memmap(tmp_path / "wide.npy", mode="w+", dtype=np.float32,
                                     shape=(n, 4))
    wide[:, ::2] = features  # the column is a non-contiguous view of this file
    wide.flush()
    del wide
    images.reshape(-1).tofile(tmp_path / "raw.bin")
    return {"image": np.load(tmp_path / "images.npy", mmap_mode="r"),
            "features": np.load(tmp_path / "wide.npy", mmap_mode="r")[:, ::2],
            "raw": np.memmap(tmp_path / "raw.bin", dtype=np.uint8, mode="r", shape=(n, 4, 3))}


def _pipeline(columns: dict) -> ArrayDataset:
    return ArrayDataset(columns).map(lambda t: t.float() / 255, "image")


@pytest.mark.parametrize("seed, shard, drop", [(None, None, False), (3, None, False),
                                               (5, (1, 3), False), (7, (0, 2), True)])
def test_memmap_batches_equal_the_in_memory_ones(tmp_path: Path, seed: int | None,
                                                 shard: tuple[int, int] | None,
                                                 drop: bool) -> None:
    images, features = _arrays()
    memory = _pipeline({"image": images, "features": features, "raw": images})
    mapped = _pipeline(_mapped(tmp_path))
    assert all(is_mapped(mapped.column(name)) for name in mapped.column_names)
    for ds in (memory, mapped):
        assert ds.column_names == ["image", "features", "raw"]
    pairs = []
    for ds in (memory, mapped):
        ds = ds.shuffle(seed) if seed is not None else ds
        ds = ds.shard(*shard) if shard else ds
        pairs.append(ds.batch(8, drop_remainder=drop))
    assert len(pairs[0]) == len(pairs[1]) > 0
    for epoch in range(2):
        for ds in pairs:
            ds.set_epoch(epoch)
        count = 0
        for a, b in zip(*pairs, strict=True):
            count += 1
            for x, y in zip(a, b, strict=True):
                assert x.dtype == y.dtype and torch.equal(x, y)
        assert count == len(pairs[0])


def test_memmap_examples_indexing_and_resume(tmp_path: Path) -> None:
    images, features = _arrays()
    memory = ArrayDataset({"image": images, "features": features}).shuffle(2)
    mapped_columns = _mapped(tmp_path)
    mapped = ArrayDataset({"image": mapped_columns["image"],
                           "features": mapped_columns["features"]}).shuffle(2)
    for (a, b), (c, d) in zip(memory, mapped, strict=True):  # unbatched: one row at a time
        assert torch.equal(a, c) and torch.equal(b, d)
    assert all(torch.equal(a, b) for a, b in zip(memory[-3], mapped[-3], strict=True))
    full = list(memory.batch(5))
    interrupted = mapped.batch(5)
    interrupted.set_epoch(0)
    it = iter(interrupted)
    for _ in range(4):
        next(it)
    resumed = ArrayDataset({"image": mapped_columns["image"],
                            "features": mapped_columns["features"]}).shuffle(2).batch(5)
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 4
    for (a, b), (c, d) in zip(full[4:], rest, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_memmap_column_stays_mapped_without_warnings_and_batches_are_writable(
        tmp_path: Path) -> None:
    columns = _mapped(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns on a read-only array
        ds = ArrayDataset({"image": columns["image"]}).batch(4)
        first = next(iter(ds))
        first += 1  # its own memory: the read-only mapping is untouched
    assert ds.column("image") is columns["image"]
    assert torch.equal(first - 1, torch.from_numpy(np.array(columns["image"][:4])))
    assert int(columns["image"][0, 0, 0]) == int(first[0, 0, 0]) - 1


def test_memmap_rows_are_read_in_ascending_order_once_per_batch(tmp_path: Path) -> None:
    images, _ = _arrays()
    np.save(tmp_path / "images.npy", images)
    reads: list[np.ndarray] = []

    class Recording(np.memmap):  # every gather of rows, by indexing or np.take
        def __getitem__(self, key: object) -> object:
            if isinstance(key, np.ndarray):
                reads.append(key.copy())
            return super().__getitem__(key)

        def take(self, indices: object, *args: object, **kwargs: object) -> object:
            reads.append(np.array(indices))
            return super().take(indices, *args, **kwargs)  # type: ignore[arg-type]

    offset = np.load(tmp_path / "images.npy", mmap_mode="r").offset
    column = Recording(tmp_path / "images.npy", dtype=np.uint8, mode="r",
                       offset=offset, shape=images.shape)
    ds = ArrayDataset({"image": column}).shuffle(1).batch(8)
    batches = list(ds)
    assert len(reads) == len(batches)
    order = ds.order().split(8)
    for read, wanted, batch in zip(reads, order, batches, strict=True):
        assert np.all(np.diff(read) >= 0)  # sorted for locality ...
        assert torch.equal(batch, torch.from_numpy(images[wanted.numpy()]))  # ... shuffled back


def test_memmap_to_and_cache_read_it_into_memory(tmp_path: Path) -> None:
    images, features = _arrays()
    memory = _pipeline({"image": images, "features": features}).shuffle(4).batch(6)
    columns = _mapped(tmp_path)
    mapped = _pipeline({"image": columns["image"],
                        "features": columns["features"]}).shuffle(4).batch(6)
    moved, cached = mapped.to("cpu"), mapped.cache(chunk=10)
    for ds in (moved, cached):
        assert all(isinstance(ds.column(k), torch.Tensor) for k in ds.column_names)
    assert cached.column("image").dtype == torch.float32  # the transform was applied once
    for a, b, c in zip(memory, moved, cached, strict=True):
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))


def test_load_state_dict_refuses_data_that_changed_size() -> None:
    saved = _ds(20).shuffle(seed=0).batch(3).state_dict()
    with pytest.raises(ValueError, match=r"for 20 examples but this ArrayDataset has 19"):
        _ds(19).shuffle(seed=0).batch(3).load_state_dict(saved)
    old = {"epoch": 1, "position": 2}  # a state dict from before "length" was stored
    ds = _ds(19).shuffle(seed=0).batch(3)
    ds.load_state_dict(old)
    assert (ds.epoch, ds.position) == (1, 2)


_RSS_SCRIPT = """
import json, sys, threading, time
import numpy as np, torch
from trainingloop.data import ArrayDataset

def anon():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

peak, done = [0], threading.Event()
def sample():  # every millisecond: a batch-sized copy freed before the next batch is seen too
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)

def pipeline(columns):
    return (ArrayDataset(columns).map(lambda t: t.float().div_(255).flatten(1), "image")
            .shuffle(0).batch(512))

images = np.load(sys.argv[1], mmap_mode="r")
labels = torch.zeros(len(images), dtype=torch.int64)
for x, y in pipeline({"image": images[:2048], "label": labels[:2048]}):  # allocator, threads
    x.sum()
base = anon()
threading.Thread(target=sample, daemon=True).start()
ds = pipeline({"image": images, "label": labels})
if sys.argv[2] == "load":
    ds = ds.to("cpu")
count, total = 0, torch.zeros(())
for x, y in ds:  # what a step needs of a batch: every value of it, as float32
    total += x.sum() + y.sum()
    count += 1
done.set()
time.sleep(0.01)
print(json.dumps({"base": base, "peak": max(peak[0], anon()), "batches": count,
                  "len": len(ds)}))
"""


def test_memmap_training_reads_batches_not_the_file(tmp_path: Path) -> None:
    rows, shape = 70_000, (32, 32, 3)  # 215 MB of uint8 (CIFAR-shaped rows)
    path = tmp_path / "images.npy"
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *shape))
    rng = np.random.default_rng(0)
    for lo in range(0, rows, 10_000):  # in pieces: this process's memory stays small too
        chunk = np.frombuffer(rng.bytes(10_000 * images[0].size), dtype=np.uint8)
        images[lo:lo + 10_000] = chunk.reshape(10_000, *shape)
    images.flush()
    del images
    size = path.stat().st_size
    env = {**os.environ, "PYTHONPATH": str(Path(tl.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), "mapped"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["batches"] == figures["len"] == 137  # one whole shuffled epoch
    grown = figures["peak"] - figures["base"]
    batch_bytes = 512 * 32 * 32 * 3 * 4  # one float32 batch: 6.3 MB
    # A few batches' worth (glibc keeps some freed batches in its heap), not the file's 215 MB:
    # reading the whole column (`.to("cpu")` does) grows it by the file size.
    assert grown < 8 * batch_bytes < size / 4, (grown, size)
