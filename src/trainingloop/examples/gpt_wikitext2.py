"""A small word-level GPT on WikiText-2 (tokenized v1), with perplexity and TensorBoard.

The ``train_split`` option names the protocol. ``train``: train on train, validate on valid
(the standard one). ``validation``: train on valid, evaluate on test, with the vocabulary from
valid (unknown test words become ``<unk>``): not the standard protocol, but the one the offline
mirror allows, since it has no train split. Unset, it is ``train`` when ``wiki.train.tokens``
is present and otherwise ``validation``, with a warning naming the files used.
"""

from __future__ import annotations

import os
import warnings

import torch

import trainingloop as tl
from trainingloop.data.datasets import data_root
from trainingloop.examples import Options, fit, outputs
from trainingloop.examples.models import GPT, language_model_loss
from trainingloop.schedules import warmup_cosine

DESCRIPTION = "small word-level GPT on WikiText-2 (perplexity; --set train_split=train|validation)"
DEFAULTS = {"epochs": 3, "batch_size": 32, "lr": 2e-3}
EXTRA = {"train_split": "train (standard: evaluate on validation) or validation (evaluate on "
                        "test); default: train if wiki.train.tokens exists, else validation "
                        "with a warning"}
BLOCK = 35
PROTOCOLS = {"train": "validation", "validation": "test"}  # training split -> evaluation split


def splits(root: str | os.PathLike[str] | None = None,
           train_split: str | None = None) -> tuple[str, str]:
    """(training split, evaluation split) for ``train_split``; None picks by the files present
    and warns when it has to fall back to training on the validation split."""
    if train_split is None:
        folder = data_root(root) / "wikitext-2"
        if (folder / "wiki.train.tokens").exists():
            train_split = "train"
        else:
            train_split = "validation"
            warnings.warn(f"wiki.train.tokens is not in {folder}: training on the validation "
                          "split (wiki.valid.tokens) and evaluating on test (wiki.test.tokens), "
                          "vocabulary from validation; not the standard protocol "
                          "(--set train_split=validation to choose it explicitly)", stacklevel=2)
    if train_split not in PROTOCOLS:
        raise ValueError(f"train_split must be one of {list(PROTOCOLS)}, got {train_split!r}")
    return train_split, PROTOCOLS[train_split]


def run(options: Options) -> tl.History:
    """Train and return the History."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    fit_split, eval_split = splits(o.data_dir, o.extra.get("train_split"))
    train = tl.datasets.wikitext2(fit_split, o.data_dir, block_size=BLOCK,
                                  vocabulary_split=fit_split)
    evaluation = tl.datasets.wikitext2(eval_split, o.data_dir, block_size=BLOCK,
                                       vocabulary_split=fit_split)
    net = GPT(len(train.attributes["tokenizer"]), width=128, depth=2, heads=4,
              block_size=BLOCK, dropout=0.2)
    loop = tl.TrainingLoop(train.shuffle(seed=0).batch(o.batch_size), evaluation.batch(128),
                           optimizer=torch.optim.AdamW(net.parameters(), lr=o.lr,
                                                       weight_decay=0.1),
                           loss=language_model_loss, metrics=["perplexity"],
                           callbacks=[tl.LearningRateScheduler(warmup_cosine(o.lr, 50)),
                                      *outputs(o)])
    return fit(loop, net, o)
