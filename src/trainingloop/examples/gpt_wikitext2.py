"""A small word-level GPT on WikiText-2 (tokenized v1), with perplexity and TensorBoard.

With the train split present it trains on train and validates on valid. The offline mirror
has no train split: then it trains on valid and evaluates on test (not the standard protocol;
the vocabulary comes from valid and unknown test words become ``<unk>``).
"""

from __future__ import annotations

import torch

import trainingloop as tl
from trainingloop.data.datasets import data_root
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import GPT, language_model_loss
from trainingloop.schedules import warmup_cosine

DESCRIPTION = "small word-level GPT on WikiText-2 (perplexity)"
DEFAULTS = {"epochs": 3, "batch_size": 32, "lr": 2e-3}
BLOCK = 35


def splits() -> tuple[str, str]:
    """(training split, evaluation split) for the files that are present."""
    if (data_root() / "wikitext-2" / "wiki.train.tokens").exists():
        return "train", "validation"
    return "validation", "test"


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    fit_split, eval_split = splits()
    train = tl.datasets.wikitext2(fit_split, block_size=BLOCK, vocabulary_split=fit_split)
    evaluation = tl.datasets.wikitext2(eval_split, block_size=BLOCK, vocabulary_split=fit_split)
    net = GPT(len(train.attributes["tokenizer"]), width=128, depth=2, heads=4,
              block_size=BLOCK, dropout=0.2)
    loop = tl.TrainingLoop(train.shuffle(seed=0).batch(o.batch_size), evaluation.batch(128),
                           optimizer=torch.optim.AdamW(net.parameters(), lr=o.lr,
                                                       weight_decay=0.1),
                           loss=language_model_loss, metrics=["perplexity"],
                           callbacks=[tl.LearningRateScheduler(warmup_cosine(o.lr, 50)),
                                      *outputs(o)])
    return fit(loop, net, o)
