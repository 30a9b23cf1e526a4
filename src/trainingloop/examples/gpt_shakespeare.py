"""A small character-level GPT on Tiny Shakespeare (nanoGPT's data split), with perplexity and
TensorBoard."""

from __future__ import annotations

import torch

import trainingloop as tl
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import GPT, language_model_loss
from trainingloop.schedules import warmup_cosine

DESCRIPTION = "small character-level GPT on Tiny Shakespeare (perplexity)"
DEFAULTS = {"epochs": 2, "batch_size": 64, "lr": 2e-3}
BLOCK = 64


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    train = tl.datasets.tiny_shakespeare("train", o.data_dir, block_size=BLOCK)
    validation = tl.datasets.tiny_shakespeare("validation", o.data_dir, block_size=BLOCK)
    net = GPT(len(train.attributes["tokenizer"]), width=128, depth=2, heads=4, block_size=BLOCK)
    loop = tl.TrainingLoop(train.shuffle(seed=0).batch(o.batch_size), validation.batch(256),
                           optimizer=torch.optim.AdamW(net.parameters(), lr=o.lr,
                                                       weight_decay=0.1),
                           loss=language_model_loss, metrics=["perplexity"],
                           callbacks=[tl.LearningRateScheduler(warmup_cosine(o.lr, 50)),
                                      *outputs(o)])
    return fit(loop, net, o)
