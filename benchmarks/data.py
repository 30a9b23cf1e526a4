"""Batches per second of the MNIST pipeline: ArrayDataset vs DataLoader.

All produce the same normalised, channel-first float batches of 64 from 60000 MNIST-shaped
uint8 examples, shuffled. Ours: ``ArrayDataset(...).map(...).shuffle(0).batch(64)``
(transforms per batch) and the same with ``.cache()`` after the deterministic transforms; the
floor of a shuffled batch (a bare ``index_select`` per column, no pipeline) and the unshuffled
order (batches are views) for scale.
Theirs: ``DataLoader(TensorDataset(...), batch_size=64, shuffle=True)`` with the transforms
applied to each collated batch, and a map-style dataset that transforms each example (the
torchvision habit). One full epoch each, interleaved.

    python benchmarks/data.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trainingloop as tl

TRANSFORMS = [tl.transforms.Rescale(1 / 255, 0),
              tl.transforms.Normalize(mean=(0.1307,), std=(0.3081,)), tl.transforms.HWC2CHW()]


class PerExample(Dataset):
    """A map-style dataset applying the transforms to one example at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i : i + 1]  # transforms take batches: a batch of one
        for transform in TRANSFORMS:
            x = transform(x)
        return x[0], self.labels[i]


def epoch_seconds(batches: object) -> tuple[float, int]:
    started, count = time.perf_counter(), 0
    for _batch in batches:  # type: ignore[attr-defined]
        count += 1
    return time.perf_counter() - started, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60000, 28, 28, 1), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (60000,), generator=g)
    mapped = tl.data.ArrayDataset({"image": images, "label": labels}).map(TRANSFORMS, "image")
    tensor_loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True)

    def batch_transformed() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in tensor_loader:
            for transform in TRANSFORMS:
                x = transform(x)
            yield x, y

    def bare_gather() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The floor: one index_select per column of the cached tensors, no pipeline at all.
        images_cached, labels_cached = cached.column("image"), cached.column("label")
        for index in torch.randperm(len(labels_cached)).split(64):
            yield images_cached.index_select(0, index), labels_cached.index_select(0, index)

    runs = {
        "ArrayDataset .map().shuffle().batch(64)": lambda: mapped.shuffle(seed=0).batch(64),
        "ArrayDataset .map().cache().shuffle().batch(64)":
            lambda: cached.shuffle(seed=0).batch(64),
        "floor: bare index_select of the cached columns": bare_gather,
        "ArrayDataset .map().cache().batch(64), in order": lambda: cached.batch(64),
        "DataLoader(TensorDataset) + batch transforms": batch_transformed,
        "DataLoader(per-example transforms)":
            lambda: DataLoader(PerExample(images, labels), batch_size=64, shuffle=True),
    }
    started = time.perf_counter()
    cached = mapped.cache()
    print(f"cache(): {time.perf_counter() - started:.2f} s once")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, make in runs.items():
            seconds, count = epoch_seconds(make())
            rates[name].append(count / seconds)
    base = statistics.median(rates["DataLoader(TensorDataset) + batch transforms"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:50} {rate:9,.0f} batches/s  {rate / base:5.1f}x")


if __name__ == "__main__":
    main()
