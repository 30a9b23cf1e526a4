"""S4TF's LeNet-MNIST: ReLU LeNet, SGD lr 0.1, batch 128 (468 full batches), 12 epochs,
logged to CSV."""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl
from trainingloop.data.pipeline import Transform
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.mlp_mnist import MEAN, STD
from trainingloop.examples.models import LeNet

DESCRIPTION = "S4TF LeNet on MNIST with the CSV logger"
DEFAULTS = {"epochs": 12, "batch_size": 128, "lr": 0.1}


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    pixels: list[Transform] = [tl.transforms.Rescale(1 / 255, 0), tl.transforms.Normalize(MEAN, STD),
              tl.transforms.HWC2CHW()]
    train = (tl.datasets.mnist("train", o.data_dir).map(pixels, "image").shuffle(seed=0)
             .batch(o.batch_size, drop_remainder=True))
    test = tl.datasets.mnist("test", o.data_dir).map(pixels, "image").batch(o.batch_size)
    net = LeNet(activation=nn.ReLU)
    loop = tl.TrainingLoop(train, test, optimizer=torch.optim.SGD(net.parameters(), lr=o.lr),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=outputs(o))
    return fit(loop, net, o)
