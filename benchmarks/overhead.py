"""Overhead of ``TrainingLoop.fit`` against a hand-written loop doing the same work.

MLP 784-512-512-10, batch 64, 938 steps of synthetic data, SGD; both sides accumulate loss and
accuracy on the device and read them once per epoch. Runs are interleaved; the script prints
the median time of each side and their ratio. It asserts nothing: timings belong here, not in
tests.

    python benchmarks/overhead.py [--repeats 7] [--steps 938]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch
from torch import nn

import trainingloop as tl
import trainingloop.devices


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                         nn.ReLU(), nn.Linear(512, 10))


def make_data(steps: int, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 784, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(steps)]


def hand_written(data: list, device: torch.device) -> float:
    model = make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    start = time.perf_counter()
    model.train()
    for x, y in data:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        output = model(x)
        loss = nn.functional.cross_entropy(output, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum.add_(loss.detach(), alpha=y.shape[0])
        correct.add_((output.detach().argmax(-1) == y).sum())
        count += y.shape[0]
    print(f"loss {float(loss_sum) / count:.4f} accuracy {float(correct) / count:.4f}",
          file=io.StringIO())
    return time.perf_counter() - start


def with_trainingloop(data: list, device: torch.device) -> float:
    model = make_model()
    loop = tl.TrainingLoop(data, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # default callbacks, output not shown
        loop.fit(model, epochs=1, device=device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=938)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = tl.devices.resolve_device(args.device)
    data = make_data(args.steps)
    hand_written(data[:50], device)  # warm-up both paths
    with_trainingloop(data[:50], device)
    hand, loop = [], []
    for _ in range(args.repeats):
        hand.append(hand_written(data, device))
        loop.append(with_trainingloop(data, device))
    ratio = statistics.median(loop) / statistics.median(hand)
    ratios = [b / a for a, b in zip(hand, loop)]
    print(f"device {device}, {args.steps} steps, {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} threads")
    print(f"hand-written loop   median {statistics.median(hand):.3f} s "
          f"(min {min(hand):.3f}, max {max(hand):.3f})")
    print(f"trainingloop fit    median {statistics.median(loop):.3f} s "
          f"(min {min(loop):.3f}, max {max(loop):.3f})")
    print(f"ratio of medians    {ratio:.3f}  (per-pair ratios: median "
          f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
