"""Steps per second with 1 and 2 data-parallel processes (gloo on CPU, or nccl on GPUs).

Run it under torchrun; rank 0 prints steps/second of the timed epoch (after a warm-up epoch):

    python benchmarks/scaling.py
    torchrun --standalone --nproc-per-node 2 benchmarks/scaling.py

Each process trains the W1 MLP (784-512-512-10) with batch 64 on 9600 synthetic examples
(its shard of them under torchrun).
"""

from __future__ import annotations

import contextlib
import io
import time

import torch
from torch import nn

import trainingloop as tl
from trainingloop import distributed


def main() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = tl.data.ArrayDataset({"x": torch.randn(9600, 784, generator=g),
                                 "y": torch.randint(0, 10, (9600,), generator=g)}).batch(64)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    times: list[float] = []

    def clock(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event in (tl.Event.TRAINING_START, tl.Event.TRAINING_END):
            times.append(time.perf_counter())

    loop = tl.TrainingLoop(data, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                           loss=nn.functional.cross_entropy, callbacks=[clock])
    with contextlib.redirect_stdout(io.StringIO()):
        loop.fit(model, epochs=2, device="auto")
    steps = loop.global_step // 2
    if distributed.is_main_process():
        world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
        print(f"{world} process(es): {steps / (times[3] - times[2]):.1f} steps/s, "
              f"{steps * 64 * world / (times[3] - times[2]):,.0f} examples/s "
              f"(batch 64 per process)")


if __name__ == "__main__":
    main()
