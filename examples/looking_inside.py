"""Looking inside a run (SPEC §12) on the embedded digits data: summary, show, the learning-rate
finder (its plot goes to ``docs/lr_finder.png``), then a fit with EMA, GradientMonitor, the
profiler and EarlyStopping(restore_best=True), under ``run/looking_inside/``:

    python examples/looking_inside.py [--epochs 15] [--plot docs/lr_finder.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import trainingloop as tl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("run/looking_inside"))
    parser.add_argument("--plot", type=Path, default=Path("docs/lr_finder.png"))
    args = parser.parse_args()
    torch.manual_seed(0)

    pixels = [tl.transforms.Rescale(1 / 16, 0), tl.transforms.HWC2CHW()]
    train = tl.datasets.digits("train").map(pixels, "image").shuffle(seed=0).batch(32)
    test = tl.datasets.digits("test").map(pixels, "image").batch(256)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    profiler = tl.Profiler(args.out / "profile", wait=1, warmup=1, active=3)
    loop = tl.TrainingLoop(
        train, test, optimizer=optimizer, loss=nn.functional.cross_entropy, metrics=["accuracy"],
        callbacks=[tl.EMA(decay=0.99), tl.GradientMonitor(),
                   profiler,
                   tl.EarlyStopping(monitor="validation/loss", patience=5, restore_best=True),
                   tl.Checkpoint(args.out / "checkpoints", monitor="validation/loss")])

    print(tl.summary(model, next(iter(train))[0]))
    loop.show()

    result = tl.lr_find(loop, model, start_lr=1e-5, end_lr=10, steps=100, device="cpu")
    result.plot(args.plot)
    print(f"lr_find: {len(result.learning_rates)} steps, diverged={result.diverged}, "
          f"suggestion {result.suggestion:.3g}; plot written to {args.plot}")
    for group in optimizer.param_groups:
        group["lr"] = result.suggestion

    history = loop.fit(model, epochs=args.epochs, device="cpu")
    averaged = loop.evaluate(tl.EMA.averaged(loop), test, device="cpu")
    print(f"validation loss of the averaged weights per epoch: "
          f"{[round(v, 4) for v in history['validation/loss']]}")
    print(f"train/grad_norm per epoch: {[round(v, 3) for v in history['train/grad_norm']]}")
    print(f"final averaged weights: {averaged}")
    print(f"profiler traces: {[p.name for p in profiler.trace_files]}")


if __name__ == "__main__":
    main()
