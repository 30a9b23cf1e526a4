"""Resuming into the middle of a long epoch: seconds before the first step, skip vs replay.

A shuffled ``DataLoader`` over 1,000,000 examples (batch 64, 15,625 batches), a checkpoint
half-way through the epoch. The resumed fit reopens the pass by skipping the sampler's indices
(nothing is loaded or collated); the same loader hidden in a wrapper the loop does not know
is replayed batch by batch to the position (what a plain resume used to do, and what the
Transformers Trainer's users waited hours for: its issue #11284). Prints both times and their
ratio; asserts nothing.

    python benchmarks/resume.py [--examples 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import trainingloop as tl


class Wrapped:
    """A re-iterable the loop knows nothing about, so it can only be replayed."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def make(examples: int, wrapped: bool) -> tuple[Any, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(examples, 16, generator=g),
                            torch.randint(0, 4, (examples,), generator=g))
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    model = torch.nn.Linear(16, 4)
    return (Wrapped(loader) if wrapped else loader), model, torch.optim.SGD(
        model.parameters(), lr=0.01)


class FirstStep(tl.Callback):
    """Records when the first training batch starts, then ends the fit."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_batch_start(self, loop: tl.TrainingLoop) -> None:
        if loop.is_training:
            self.at = time.perf_counter()
            raise tl.CancelFit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        data, model, optimizer = make(args.examples, wrapped=False)
        middle = len(data) // 2

        def stop(loop: tl.TrainingLoop, event: tl.Event) -> None:
            if event is tl.Event.BATCH_END and loop.global_step == middle:
                raise tl.CancelFit

        loop = tl.TrainingLoop(data, optimizer=optimizer, loss=torch.nn.functional.cross_entropy,
                               callbacks=[tl.Checkpoint(directory, every_n_steps=middle), stop],
                               include_default_callbacks=False)
        started = time.perf_counter()
        loop.fit(model, epochs=1, device="cpu")
        print(f"{args.examples:,} examples, {len(data):,} batches; training to the checkpoint at "
              f"batch {middle:,}: {time.perf_counter() - started:.1f} s")
        times: dict[str, list[float]] = {"skip": [], "replay": []}
        for _ in range(args.repeats):
            for kind in ("skip", "replay"):
                data, model, optimizer = make(args.examples, wrapped=kind == "replay")
                first = FirstStep()
                loop = tl.TrainingLoop(data, optimizer=optimizer,
                                       loss=torch.nn.functional.cross_entropy,
                                       callbacks=[tl.Checkpoint(directory), first],
                                       include_default_callbacks=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    started = time.perf_counter()
                    loop.fit(model, epochs=1, device="cpu", resume=True)
                assert first.at is not None
                times[kind].append(first.at - started)
        skip, replay = statistics.median(times["skip"]), statistics.median(times["replay"])
        print(f"seconds before the first step, median of {args.repeats}: skip {skip:.3f}, "
              f"replay {replay:.3f} ({replay / skip:.0f}x)")


if __name__ == "__main__":
    main()
