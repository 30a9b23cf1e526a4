"""ResNet-20 (or 56) on CIFAR-10 with the usual augmentation: pad-4 random crops and flips.

SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128 and a one-cycle schedule.
Which copy is read is the ``data`` option: ``full`` (the 50000/10000 set, downloaded if missing
and allowed), ``subset`` (the offline mirror's ``cifar-10-subset/``, 4000/1000 images), or
``auto`` (the default: the full set if it is on disk, else the subset, with a warning naming
its folder). The full set gives He et al.'s accuracy; the subset does not.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

import trainingloop as tl
from trainingloop.data.datasets import data_root
from trainingloop.data.pipeline import Transform
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import ResNetCIFAR
from trainingloop.schedules import one_cycle

DESCRIPTION = "ResNet-20 on CIFAR-10 (--set depth=56; --set data=full|subset|auto)"
DEFAULTS = {"epochs": 30, "batch_size": 128, "lr": 0.1}
EXTRA = {"depth": "ResNet depth 6n+2 (default 20; 56 for ResNet-56)",
         "data": "full, subset (the mirror's cifar-10-subset/) or auto (default: full if on "
                 "disk, else subset with a warning)"}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def datasets(root: str | os.PathLike[str] | None = None, which: str = "auto"
             ) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    """Unbatched train and test sets of the copy ``which`` names: ``full``, ``subset`` or
    ``auto`` (see the module docstring)."""
    if which not in ("full", "subset", "auto"):
        raise ValueError(f"data must be 'full', 'subset' or 'auto', got {which!r}")
    if which == "auto":
        try:
            return (tl.datasets.cifar10("train", root, download=False),
                    tl.datasets.cifar10("test", root, download=False))
        except FileNotFoundError:
            subset = data_root(root) / "cifar-10-subset"
            if subset.is_dir():
                warnings.warn(f"the full CIFAR-10 is not in {data_root(root) / 'cifar-10'}: "
                              f"using the 4000/1000-image subset in {subset} (--set data=full "
                              "to require the full set)", stacklevel=2)
                which = "subset"
    use_subset = which == "subset"
    return (tl.datasets.cifar10("train", root, subset=use_subset),
            tl.datasets.cifar10("test", root, subset=use_subset))


def data(batch_size: int, device: torch.device | None = None,
         root: str | os.PathLike[str] | None = None, which: str = "auto"
         ) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    """Augmented training pipeline and plain test pipeline (transforms on ``device``) of the
    copy :func:`datasets` reads for ``which``."""
    pixels: list[Transform] = [tl.transforms.Rescale(1 / 255, 0), tl.transforms.Normalize(MEAN, STD)]
    augment: list[Transform] = [tl.transforms.RandomCrop(32, padding=4), tl.transforms.RandomHorizontalFlip()]
    train, test = datasets(root, which)
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
    train, test = data(o.batch_size, device, o.data_dir, str(o.extra.get("data", "auto")))
    optimizer = torch.optim.SGD(net.parameters(), lr=o.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    loop = tl.TrainingLoop(train, test, optimizer=optimizer, loss=nn.functional.cross_entropy,
                           metrics=["accuracy", "top5_accuracy"],
                           callbacks=[tl.LearningRateScheduler(one_cycle(o.lr)), *outputs(o)])
    return fit(loop, net, o)
