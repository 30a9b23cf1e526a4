"""airbench94's network and recipe on CIFAR-10, as a TrainingLoop with callbacks.

Keller Jordan's airbench94 (94 % test accuracy in 2.59 s on one A100) keeps the whole data set
on the GPU and augments each batch there; so does this example: ``ArrayDataset(...).to(device)``
with ``RandomCrop(32, padding=2)`` (translate by up to 2 pixels) and ``RandomHorizontalFlip``.
Kept from airbench94: a 2×2 whitening convolution (24 channels, weights from the eigenvectors of
the training patches' covariance, frozen; ``--set whiten=0`` leaves it randomly initialised and
trainable), then three conv-BN-GELU groups of widths 64/256/256 (each: conv, max-pool, BN,
GELU, conv, BN, GELU; 3×3 convs without bias, Dirac-initialised; BN with momentum 0.6 in its
convention, eps 1e-12, fixed scale and a learned bias), a 3×3 max-pool, a bias-free linear
layer scaled by 1/9; label smoothing 0.2; SGD with Nesterov momentum 0.85, its learning rate
11.5 and weight decay 0.0153 per 1024 examples with BN biases at 64× the rate (written for a
mean loss, which gives the same updates as its summed one); batch 1024; a linear warm-up from
0.2× to 1× over the first 23 % of the steps, then down to 0.07×; 10 epochs (its 9.9); bf16
autocast on CUDA (``--precision`` other than 32 is taken as given).

What differs from airbench94: the whitening bias trains for the whole run (airbench: its first
3 epochs only); crops pad with zeros and flips are random (airbench: reflection padding and
alternating flips); no lookahead/EMA of the weights, no test-time augmentation, bf16 autocast
over float32 weights rather than an fp16 network (channels-last on CUDA, as airbench's), and
the step is compiled only with ``--compile``. Expect somewhat
under its 94 % on the full set, and far less on the mirror's 4000-image subset (``--set
data=...`` chooses the copy as in ``resnet-cifar10``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import trainingloop as tl
from trainingloop.data.pipeline import Transform
from trainingloop.examples import Options, Settings, fit, outputs
from trainingloop.examples.resnet_cifar10 import MEAN, STD, datasets

DESCRIPTION = "airbench94's network and recipe on CIFAR-10 (--set data=full|subset|auto)"
DEFAULTS = {"epochs": 10, "batch_size": 1024, "lr": 11.5}
EXTRA = {"data": "full, subset or auto, as for resnet-cifar10",
         "whiten": "1 (default): whitening init of the first conv, frozen; 0: plain and trained",
         "widths": "the three groups' widths (default 64,256,256)",
         "channels_last": "1 (default): on CUDA, the network in channels-last memory format, as "
                          "airbench; 0: PyTorch's default layout"}
MOMENTUM, WEIGHT_DECAY, BIAS_SCALER, LABEL_SMOOTHING = 0.85, 0.0153, 64.0, 0.2
WHITEN_WIDTH = 24  # 2 · 3 channels · 2×2 patch


class BatchNorm(nn.BatchNorm2d):
    """airbench's BN: momentum 0.6 in its convention (PyTorch's 0.4), eps 1e-12, scale fixed
    at one, bias learned."""

    def __init__(self, channels: int, momentum: float = 0.6) -> None:
        super().__init__(channels, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    """3×3 'same' convolution without bias, Dirac-initialised on its first input channels."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(channels_in, channels_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        weight = self.weight.data
        nn.init.dirac_(weight[: weight.size(1)])


class ConvGroup(nn.Sequential):
    """conv, max-pool, BN, GELU, conv, BN, GELU."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(Conv(channels_in, channels_out), nn.MaxPool2d(2), BatchNorm(channels_out),
                         nn.GELU(), Conv(channels_out, channels_out), BatchNorm(channels_out),
                         nn.GELU())


class Scale(nn.Module):
    """Multiply by a constant."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def make_net(widths: tuple[int, int, int] = (64, 256, 256)) -> nn.Sequential:
    """airbench94's network (the whitening weights are set by :func:`whiten`)."""
    return nn.Sequential(
        nn.Conv2d(3, WHITEN_WIDTH, kernel_size=2, padding=0, bias=True), nn.GELU(),
        ConvGroup(WHITEN_WIDTH, widths[0]), ConvGroup(widths[0], widths[1]),
        ConvGroup(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(),
        nn.Linear(widths[2], 10, bias=False), Scale(1 / 9))


@torch.no_grad()
def whiten(conv: nn.Conv2d, images: Tensor, eps: float = 5e-4) -> None:
    """Set ``conv``'s 2×2 filters to the scaled eigenvectors (and their negatives) of the patch
    covariance of ``images`` (N×3×H×W, normalised), and freeze them, as airbench does."""
    covariance = torch.zeros(12, 12, device=images.device)
    count = 0
    for chunk in images.split(500):  # bounded memory: ~1000 patches per image
        patches = chunk.float().unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
        covariance += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance / count)
    scaled = eigenvectors.T.reshape(-1, 3, 2, 2) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
    conv.weight.copy_(torch.cat((scaled, -scaled)).to(conv.weight.dtype))
    conv.weight.requires_grad_(False)


def smoothed_cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy with airbench's label smoothing 0.2 (mean over the batch)."""
    return nn.functional.cross_entropy(output, target, label_smoothing=LABEL_SMOOTHING)


def triangle(total_steps: int) -> Callable[[int], float]:
    """airbench's learning-rate factor at step k: 0.2 → 1 over 23 % of the steps, then → 0.07."""
    warmup = max(1, int(0.23 * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.2 + 0.8 * step / warmup
        return 1.0 - 0.93 * min(1.0, (step - warmup) / max(1, total_steps - warmup))

    return factor


def optimizer(net: nn.Module, lr: float, batch_size: int) -> torch.optim.SGD:
    """airbench94's SGD: rates per 1024 examples turned into PyTorch's, BN biases 64× faster."""
    kilostep_scale = 1024 * (1 + 1 / (1 - MOMENTUM))
    rate = lr / kilostep_scale * batch_size  # ×batch: airbench sums the loss, we take the mean
    decay = WEIGHT_DECAY * batch_size / kilostep_scale  # per step, decoupled from the rate
    named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]
    norm_biases = [p for name, p in named if _is_norm(net, name)]
    others = [p for name, p in named if not _is_norm(net, name)]
    bias_rate = rate * BIAS_SCALER
    return torch.optim.SGD([dict(params=norm_biases, lr=bias_rate, weight_decay=decay / bias_rate),
                            dict(params=others, lr=rate, weight_decay=decay / rate)],
                           momentum=MOMENTUM, nesterov=True)


def _is_norm(net: nn.Module, name: str) -> bool:
    return isinstance(net.get_submodule(name.rpartition(".")[0]), nn.BatchNorm2d)


def pipelines(train: tl.data.ArrayDataset, test: tl.data.ArrayDataset, batch_size: int,
              device: torch.device) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    """The whole sets on ``device``; normalise, translate by ≤ 2 pixels and flip there per
    batch."""
    train, test = train.to(device), test.to(device)
    pixels: list[Transform] = [tl.transforms.Rescale(1 / 255, 0),
                               tl.transforms.Normalize(MEAN, STD)]
    augment: list[Transform] = [tl.transforms.RandomCrop(32, padding=2),
                                tl.transforms.RandomHorizontalFlip()]
    train = train.map([*pixels, *augment, tl.transforms.HWC2CHW()], "image")
    test = test.map([*pixels, tl.transforms.HWC2CHW()], "image")
    return train.shuffle(seed=0).batch(batch_size), test.batch(2000)


def recipe(train: tl.data.ArrayDataset, test: tl.data.ArrayDataset, options: Options,
           callbacks: list[Any] | None = None) -> tuple[tl.TrainingLoop, nn.Module, Settings]:
    """The loop, network and fit options for unbatched ``train``/``test`` sets of CIFAR-10's
    layout (``callbacks`` default: every output under ``options.out``)."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    device = tl.devices.resolve_device(o.device)
    widths = tuple(int(w) for w in str(o.extra.get("widths", "64,256,256")).split(","))
    if len(widths) != 3:
        raise ValueError(f"widths takes three numbers, got {o.extra['widths']!r}")
    train, test = pipelines(train, test, o.batch_size, device)
    net = make_net(widths).to(device)
    if device.type == "cuda" and str(o.extra.get("channels_last", "1")) != "0":
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # tensor cores' layout
    if str(o.extra.get("whiten", "1")) != "0":
        images = torch.as_tensor(train.column("image")[:5000])  # airbench uses 5000 images
        for transform in (tl.transforms.Rescale(1 / 255, 0), tl.transforms.Normalize(MEAN, STD),
                          tl.transforms.HWC2CHW()):
            images = transform(images)
        whiten(net[0], images)  # type: ignore[arg-type] # net[0] is the Conv2d
    sgd = optimizer(net, o.lr, o.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(sgd, triangle(o.epochs * len(train)))
    loop = tl.TrainingLoop(train, test, optimizer=sgd, loss=smoothed_cross_entropy,
                           metrics=["accuracy"],
                           callbacks=[tl.LearningRateScheduler(schedule),
                                      *(outputs(o) if callbacks is None else callbacks)])
    if device.type == "cuda" and o.precision == "32":
        o = dataclasses.replace(o, precision="bf16-mixed")
    return loop, net, o


def run(options: Options) -> tl.History:
    """Train and return the History."""
    loop, net, o = recipe(*datasets(options.data_dir, str(options.extra.get("data", "auto"))),
                          options)
    return fit(loop, net, o)
