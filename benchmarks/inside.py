"""Overhead of looking inside a run: W1 with ``tl.EMA`` and ``tl.GradientMonitor`` against without.

MLP 784-512-512-10, batch 64, 938 steps of synthetic data, SGD, accuracy, default callbacks
(as ``benchmarks/overhead.py``); one side adds ``EMA(decay=0.999)`` (a foreach lerp of the
weights after every update, validation on the average) and ``GradientMonitor()`` (a foreach
norm of the gradients at every update, summed on the device). Runs are interleaved; the
script prints each side's median time and their ratio. It asserts nothing.

    python benchmarks/inside.py [--repeats 7] [--steps 938]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch
from overhead import make_data, make_model
from torch import nn

import trainingloop as tl
import trainingloop.devices


def run(data: list, validation: list, device: torch.device, inside: bool) -> float:
    model = make_model()
    callbacks = [tl.EMA(decay=0.999), tl.GradientMonitor()] if inside else []
    loop = tl.TrainingLoop(data, validation, optimizer=torch.optim.SGD(model.parameters(),
                                                                       lr=0.01),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=callbacks)
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
    validation = make_data(10)
    run(data[:50], validation, device, False)  # warm-up both paths
    run(data[:50], validation, device, True)
    plain, inside = [], []
    for i in range(args.repeats):
        plain.append(run(data, validation, device, False))
        inside.append(run(data, validation, device, True))
        print(f"pair {i + 1}: {plain[-1]:.3f} s, {inside[-1]:.3f} s "
              f"(ratio {inside[-1] / plain[-1]:.3f})", flush=True)
    ratio = statistics.median(inside) / statistics.median(plain)
    ratios = [b / a for a, b in zip(plain, inside)]
    print(f"device {device}, {args.steps} steps, {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} threads")
    print(f"fit                       median {statistics.median(plain):.3f} s "
          f"(min {min(plain):.3f}, max {max(plain):.3f})")
    print(f"fit + EMA + GradientMonitor median {statistics.median(inside):.3f} s "
          f"(min {min(inside):.3f}, max {max(inside):.3f})")
    print(f"ratio of medians          {ratio:.3f}  (per-pair ratios: median "
          f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
