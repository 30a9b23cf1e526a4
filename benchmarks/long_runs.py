"""nanoGPT's recipe through ``fit`` against nanoGPT's own loop shape, the same work on both sides.

The ``nanogpt-shakespeare`` model (4 layers, 4 heads, width 128, block 64, batch 12) on Tiny
Shakespeare characters for ``--steps`` optimizer steps: ``fit`` with ``steps_per_epoch``, a
``TokenDataset.random`` stream, a custom step, clipping and the warm-up + cosine schedule,
against a hand-written loop shaped as nanoGPT's ``train.py`` (sample, forward, backward, clip,
step, ``zero_grad(set_to_none=True)``, the learning rate set every step). Neither side
validates or logs. Runs are interleaved; prints the medians and their ratio; asserts nothing.

    TRAININGLOOP_DATA=../shared/data python benchmarks/long_runs.py [--steps 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import trainingloop as tl
from trainingloop.examples import nanogpt_shakespeare as recipe
from trainingloop.examples.models import NanoGPT
from trainingloop.schedules import warmup_cosine

BLOCK, BATCH, LR = 64, 12, 1e-3


def nanogpt_rate(step: int, total: int) -> float:
    """nanoGPT's get_lr: linear warm-up over 100 steps, cosine to lr/10 at ``total``."""
    if step < 100:
        return LR * (step + 1) / 101
    ratio = (step - 100) / max(total - 100, 1)
    return LR / 10 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - LR / 10)


def hand(tokens: torch.Tensor, vocabulary: int, steps: int) -> float:
    torch.manual_seed(1337)
    model = NanoGPT(vocabulary, block_size=BLOCK)
    optimizer = model.optimizer(LR)
    g = torch.Generator().manual_seed(1337)
    model.train()
    started = time.perf_counter()
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = nanogpt_rate(it, steps)
        ix = torch.randint(len(tokens) - BLOCK, (BATCH,), generator=g)
        x = torch.stack([tokens[i:i + BLOCK] for i in ix])
        y = torch.stack([tokens[i + 1:i + 1 + BLOCK] for i in ix])
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def fit(tokens: torch.Tensor, vocabulary: int, steps: int) -> float:
    torch.manual_seed(1337)
    model = NanoGPT(vocabulary, block_size=BLOCK)
    loop = tl.TrainingLoop(
        tl.data.TokenDataset.random(tokens, BLOCK, BATCH, seed=1337),
        optimizer=model.optimizer(LR),
        callbacks=[tl.LearningRateScheduler(warmup_cosine(LR, 100, end_rate=LR / 10,
                                                          start_rate=LR / 101))],
        include_default_callbacks=False)
    started = time.perf_counter()
    loop.fit(model, epochs=1, device="cpu", step=recipe.step, clip_grad_norm=1.0,
             steps_per_epoch=steps)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    train, _, vocabulary = recipe.characters()
    hand(train, len(vocabulary), 20)  # warm-up: allocator, kernels
    fit(train, len(vocabulary), 20)
    times: dict[str, list[float]] = {"hand": [], "fit": []}
    for _ in range(args.repeats):
        times["hand"].append(hand(train, len(vocabulary), args.steps))
        times["fit"].append(fit(train, len(vocabulary), args.steps))
    h, f = statistics.median(times["hand"]), statistics.median(times["fit"])
    pairs = [b / a for a, b in zip(times["hand"], times["fit"])]
    print(f"nanoGPT recipe, {args.steps} steps, {args.repeats} interleaved repeats: hand {h:.2f} s,"
          f" fit {f:.2f} s; ratio of medians {f / h:.3f} (per-pair median "
          f"{statistics.median(pairs):.3f})")


if __name__ == "__main__":
    main()
