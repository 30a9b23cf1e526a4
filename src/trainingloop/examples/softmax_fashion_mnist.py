"""d2l's concise softmax regression (4.5) on Fashion-MNIST: lr 0.1, batch 256, 10 epochs."""

from __future__ import annotations

import os

import torch
from torch import nn

import trainingloop as tl
from trainingloop.data.pipeline import Transform
from trainingloop.examples import Options, fit, outputs

DESCRIPTION = "d2l softmax regression on Fashion-MNIST"
DEFAULTS = {"epochs": 10, "batch_size": 256, "lr": 0.1}


def data(batch_size: int, root: str | os.PathLike[str] | None = None
         ) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    """Fashion-MNIST scaled to [0, 1] (d2l's ToTensor), channels first."""
    pixels: list[Transform] = [tl.transforms.Rescale(1 / 255, 0), tl.transforms.HWC2CHW()]
    train = tl.datasets.fashion_mnist("train", root).map(pixels, "image").shuffle(seed=0)
    test = tl.datasets.fashion_mnist("test", root).map(pixels, "image")
    return train.batch(batch_size), test.batch(batch_size)


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    linear = nn.Linear(784, 10)
    net = nn.Sequential(nn.Flatten(), linear)
    nn.init.normal_(linear.weight, std=0.01)
    train, test = data(o.batch_size, o.data_dir)
    loop = tl.TrainingLoop(train, test, optimizer=torch.optim.SGD(net.parameters(), lr=o.lr),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=outputs(o))
    return fit(loop, net, o)
