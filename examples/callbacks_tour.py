"""Every shipped callback in one fit: an MLP on Fashion-MNIST.

CSV log, TensorBoard run, live curves, a warm-up + cosine learning-rate schedule and early
stopping, all under ``run/callbacks_tour/``:

    TRAININGLOOP_DATA=../shared/data python examples/callbacks_tour.py [--epochs 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import trainingloop as tl
from trainingloop.schedules import warmup_cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("run/callbacks_tour"))
    args = parser.parse_args()
    torch.manual_seed(0)

    pixels = [tl.transforms.Rescale(1 / 255, 0),
              tl.transforms.Normalize(mean=(0.2860,), std=(0.3530,)), tl.transforms.HWC2CHW()]
    train = tl.datasets.fashion_mnist("train").map(pixels, "image").shuffle(seed=0).batch(256)
    test = tl.datasets.fashion_mnist("test").map(pixels, "image").batch(1024)

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    loop = tl.TrainingLoop(
        training=train,
        validation=test,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9),
        loss=nn.functional.cross_entropy,
        metrics=["accuracy"],
        callbacks=[
            tl.CSVLogger(args.out / "log.csv"),
            tl.TensorBoardLogger(args.out / "tensorboard"),
            tl.ProgressPlot(args.out / "curves.png"),
            tl.LearningRateScheduler(warmup_cosine(peak=0.1, warmup_steps=100)),
            tl.EarlyStopping(monitor="validation/loss", patience=2),
        ],
    )
    history = loop.fit(model, epochs=args.epochs, device="auto")
    best = max(history["validation/accuracy"])
    print(f"best validation accuracy {best:.4f}; outputs in {args.out}")


if __name__ == "__main__":
    main()
