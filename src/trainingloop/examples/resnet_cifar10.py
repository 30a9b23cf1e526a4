"""ResNet-20 (or 56) on CIFAR-10 with the usual augmentation: pad-4 random crops and flips.

SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128 and a one-cycle schedule.
The offline mirror holds a 4000/1000 subset; the full set gives He et al.'s accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import ResNetCIFAR
from trainingloop.schedules import one_cycle

DESCRIPTION = "ResNet-20 on CIFAR-10 (depth 56 with extra={'depth': 56})"
DEFAULTS = {"epochs": 30, "batch_size": 128, "lr": 0.1}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def data(batch_size: int, device: torch.device | None = None) -> tuple[tl.data.ArrayDataset,
                                                                        tl.data.ArrayDataset]:
    """Augmented training pipeline and plain test pipeline (transforms on ``device``)."""
    pixels = [tl.transforms.Rescale(1 / 255, 0), tl.transforms.Normalize(MEAN, STD)]
    augment = [tl.transforms.RandomCrop(32, padding=4), tl.transforms.RandomHorizontalFlip()]
    train, test = tl.datasets.cifar10("train"), tl.datasets.cifar10("test")
    if device is not None:
        train, test = train.to(device), test.to(device)
    train = train.map([*pixels, *augment, tl.transforms.HWC2CHW()], "image")
    test = test.map([*pixels, tl.transforms.HWC2CHW()], "image")
    return train.shuffle(seed=0).batch(batch_size), test.batch(512)


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    device = tl.devices.resolve_device(o.device)
    net = ResNetCIFAR(depth=int(o.extra.get("depth", 20)))
    train, test = data(o.batch_size, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    loop = tl.TrainingLoop(train, test, optimizer=optimizer, loss=nn.functional.cross_entropy,
                           metrics=["accuracy", "top5_accuracy"],
                           callbacks=[tl.LearningRateScheduler(one_cycle(o.lr)), *outputs(o)])
    return fit(loop, net, o)
