"""The embedded default: an MLP on scikit-learn's bundled 8×8 digits (no download needed).

Run with ``trainingloop run digits`` (or ``make demo``).
"""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl
from trainingloop.data.pipeline import Transform
from trainingloop.examples import Options, fit, outputs

DESCRIPTION = "MLP on scikit-learn's 8x8 digits (embedded, no download)"
DEFAULTS = {"epochs": 10, "batch_size": 32, "lr": 0.1}


def model() -> nn.Module:
    """64-128-10 MLP."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def data(batch_size: int) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    """Train and validation pipelines: pixels 0-16 scaled to [0, 1]."""
    transforms: list[Transform] = [tl.transforms.Rescale(1 / 16, 0), tl.transforms.HWC2CHW()]
    train = tl.datasets.digits("train").map(transforms, "image").shuffle(seed=0).batch(batch_size)
    test = tl.datasets.digits("test").map(transforms, "image").batch(256)
    return train, test


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    net = model()
    train, test = data(o.batch_size)
    loop = tl.TrainingLoop(train, test, optimizer=torch.optim.SGD(net.parameters(), lr=o.lr,
                                                                  momentum=0.9),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=outputs(o))
    return fit(loop, net, o)
