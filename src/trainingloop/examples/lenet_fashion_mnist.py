"""d2l's LeNet (7.6) on Fashion-MNIST: sigmoid, average pooling, Xavier init, lr 0.9."""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import LeNet, xavier_init
from trainingloop.examples.softmax_fashion_mnist import data

DESCRIPTION = "d2l LeNet (sigmoid, avg-pool) on Fashion-MNIST"
DEFAULTS = {"epochs": 10, "batch_size": 256, "lr": 0.9}


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    net = LeNet()
    net.apply(xavier_init)
    train, test = data(o.batch_size, o.data_dir)
    loop = tl.TrainingLoop(train, test, optimizer=torch.optim.SGD(net.parameters(), lr=o.lr),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=outputs(o))
    return fit(loop, net, o)
