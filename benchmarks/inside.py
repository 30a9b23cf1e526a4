"""Overhead of looking inside a run: W1 with ``tl.EMA`` and ``tl.GradientMonitor`` against without.

MLP 784-512-512-10, batch 64, 938 steps of synthetic data, SGD, accuracy, default callbacks
(as ``benchmarks/overhead.py``); one side adds ``EMA(decay=0.999)`` (a foreach lerp of the
weights after every update, validation on the average) and ``GradientMonitor()`` (a foreach
norm of the gradients at every update, summed on the device). Runs are interleaved; the
script prints each side's median time and their ratio. It asserts nothing.

``--floor`` measures the floor instead: a hand-written W1 loop against the same loop plus the
bare foreach lerp and foreach norm (no callbacks, no loop), the cost of the two tensor passes.

    python benchmarks/inside.py [--repeats 7] [--steps 938] [--floor]
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


def run_hand(data: list, device: torch.device, inside: bool) -> float:
    """The hand-written loop; with ``inside`` the lerp and the norm EMA and GradientMonitor do."""
    model = make_model().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    weights = [p.detach() for p in model.parameters()]
    average = [w.clone() for w in weights]
    norms = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for x, y in data:
        x, y = x.to(device), y.to(device)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if inside:
            grads = [p.grad for p in model.parameters()]
            norms += torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        optimizer.step()
        optimizer.zero_grad()
        if inside:
            with torch.no_grad():
                torch._foreach_lerp_(average, weights, 1 - 0.999)
    trainingloop.devices.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=938)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--floor", action="store_true",
                        help="hand loop with and without the bare lerp and norm")
    args = parser.parse_args()
    device = tl.devices.resolve_device(args.device)
    data = make_data(args.steps)
    validation = make_data(10)

    def measure(inside: bool, warm_up: bool = False) -> float:
        steps = data[:50] if warm_up else data
        return run_hand(steps, device, inside) if args.floor else run(steps, validation, device,
                                                                       inside)

    measure(False, warm_up=True)  # warm-up both paths
    measure(True, warm_up=True)
    plain, inside = [], []
    for i in range(args.repeats):
        plain.append(measure(False))
        inside.append(measure(True))
        print(f"pair {i + 1}: {plain[-1]:.3f} s, {inside[-1]:.3f} s "
              f"(ratio {inside[-1] / plain[-1]:.3f})", flush=True)
    ratio = statistics.median(inside) / statistics.median(plain)
    ratios = [b / a for a, b in zip(plain, inside)]
    print(f"device {device}, {args.steps} steps, {args.repeats} interleaved runs, "
          f"{torch.get_num_threads()} threads")
    names = ("hand loop", "hand loop + lerp + norm") if args.floor else (
        "fit", "fit + EMA + GradientMonitor")
    print(f"{names[0]:<27} median {statistics.median(plain):.3f} s "
          f"(min {min(plain):.3f}, max {max(plain):.3f})")
    print(f"{names[1]:<27} median {statistics.median(inside):.3f} s "
          f"(min {min(inside):.3f}, max {max(inside):.3f})")
    print(f"ratio of medians          {ratio:.3f}  (per-pair ratios: median "
          f"{statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
