"""A small BERT-style encoder trained from scratch on CoLA, scored by Matthews correlation.

As in S4TF's BERT-CoLA: Adam with a linear warm-up then linear decay schedule and Adam's bias
correction applied by the scheduler (``bias_correction=(0.9, 0.999)``).
"""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import EncoderClassifier

DESCRIPTION = "small BERT-style encoder on CoLA (MCC)"
DEFAULTS = {"epochs": 6, "batch_size": 32, "lr": 5e-4}
MAX_LENGTH = 48


def run(options: Options) -> tl.History:
    """Train and return the History (``validation/mcc`` is the in-domain dev set's MCC)."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    train = tl.datasets.cola("train", o.data_dir, max_length=MAX_LENGTH)
    dev = tl.datasets.cola("validation", o.data_dir, max_length=MAX_LENGTH)
    vocabulary = len(train.attributes["tokenizer"])
    net = EncoderClassifier(vocabulary, classes=2, width=128, depth=2, heads=4,
                            max_length=MAX_LENGTH, dropout=0.2)
    schedule = tl.make_schedule([
        tl.ScheduleSegment(tl.shapes.linear, start_rate=0.0, end_rate=o.lr, step_count=100),
        tl.ScheduleSegment(tl.shapes.linear, end_rate=0.0)])
    labels = torch.as_tensor(train.column("label"))
    weight = (len(labels) / (2 * torch.bincount(labels).float()))  # balance the 30/70 classes

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target, weight=weight.to(output.device))

    loop = tl.TrainingLoop(train.shuffle(seed=0).batch(o.batch_size), dev.batch(256),
                           optimizer=torch.optim.Adam(net.parameters(), lr=o.lr,
                                                      weight_decay=0.0),
                           loss=loss, metrics=["mcc", "accuracy"],
                           callbacks=[tl.LearningRateScheduler(schedule,
                                                               bias_correction=(0.9, 0.999)),
                                      *outputs(o)])
    return fit(loop, net, o)
