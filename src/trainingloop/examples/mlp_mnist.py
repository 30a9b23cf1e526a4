"""MindSpore's quick-start MLP on MNIST: 784-512-512-10, SGD lr 1e-2, batch 64."""

from __future__ import annotations

import os

import torch
from torch import nn

import trainingloop as tl
from trainingloop.data.pipeline import Transform
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import MLP

DESCRIPTION = "MindSpore quick-start MLP on MNIST"
DEFAULTS = {"epochs": 2, "batch_size": 64, "lr": 1e-2}
MEAN, STD = (0.1307,), (0.3081,)


def data(batch_size: int, root: str | os.PathLike[str] | None = None
         ) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    """The MindSpore pipeline: Rescale(1/255), Normalize(0.1307, 0.3081), HWC2CHW."""
    pixels: list[Transform] = [tl.transforms.Rescale(1 / 255, 0), tl.transforms.Normalize(mean=MEAN, std=STD),
              tl.transforms.HWC2CHW()]
    train = (tl.datasets.mnist("train", root).map(pixels, "image")
             .map(tl.transforms.TypeCast(torch.int64), "label").shuffle(seed=0).batch(batch_size))
    test = tl.datasets.mnist("test", root).map(pixels, "image").batch(batch_size)
    return train, test


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    net = MLP()
    train, test = data(o.batch_size, o.data_dir)
    loop = tl.TrainingLoop(train, test, optimizer=torch.optim.SGD(net.parameters(), lr=o.lr),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=outputs(o))
    return fit(loop, net, o)
