"""nanoGPT's CPU recipe for Tiny Shakespeare (characters), as a TrainingLoop.

Karpathy's nanoGPT README: ``python train.py config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
--n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`` reaches a
validation loss of 1.88. Here: the same model (:class:`~trainingloop.examples.models.NanoGPT`),
its 90/10 character split, random windows (``TokenDataset.random``), AdamW 1e-3 (betas 0.9,
0.99, weight decay 0.1 on 2-D weights) with 100 warm-up steps and cosine decay to 1e-4,
clipping at 1.0, 2000 steps as 8 epochs of ``steps_per_epoch=250``, each validated on 20
random batches (``validation_steps=20``). A custom step calls the model, which returns
``(logits, loss)``.
"""

from __future__ import annotations

from typing import Any

import torch

import trainingloop as tl
from trainingloop.examples import Options, outputs
from trainingloop.examples.models import NanoGPT
from trainingloop.schedules import warmup_cosine

DESCRIPTION = "nanoGPT's CPU recipe on Tiny Shakespeare characters (2000 steps)"
DEFAULTS = {"epochs": 8, "batch_size": 12, "lr": 1e-3}
BLOCK = 64
STEPS_PER_EPOCH = 250
VALIDATION_STEPS = 20
EXTRA = {"steps_per_epoch": f"optimizer steps between validations (default {STEPS_PER_EPOCH})",
         "validation_steps": f"random batches per validation (default {VALIDATION_STEPS})"}


def characters(root: Any = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """nanoGPT's ``prepare.py``: every character of ``input.txt`` is a token (its sorted set is
    the vocabulary); the first 90% trains, the rest validates."""
    text = tl.datasets.shakespeare_text(root)
    vocabulary = sorted(set(text))
    index = {c: i for i, c in enumerate(vocabulary)}
    tokens = torch.tensor([index[c] for c in text], dtype=torch.int64)
    cut = int(len(tokens) * 0.9)
    return tokens[:cut], tokens[cut:], vocabulary


def step(loop: tl.TrainingLoop, model: torch.nn.Module) -> torch.Tensor:
    """nanoGPT's model computes its own loss: ``logits, loss = model(x, y)``."""
    logits, loss = model(loop.last_input, loop.last_target)
    loop.last_output = logits
    return loss


def run(options: Options) -> tl.History:
    """Train and return the History (``train/loss``, ``validation/loss`` per 250 steps)."""
    o = options.resolved(DEFAULTS)
    assert o.epochs is not None and o.batch_size is not None and o.lr is not None
    steps = int(o.extra.get("steps_per_epoch", STEPS_PER_EPOCH))
    torch.manual_seed(1337)
    train, validation, vocabulary = characters(o.data_dir)
    model = NanoGPT(len(vocabulary), block_size=BLOCK)
    schedule = warmup_cosine(o.lr, 100, end_rate=o.lr / 10, start_rate=o.lr / 101)
    loop = tl.TrainingLoop(
        tl.data.TokenDataset.random(train, BLOCK, o.batch_size, seed=1337),
        tl.data.TokenDataset.random(validation, BLOCK, o.batch_size, seed=1338),
        optimizer=model.optimizer(o.lr),
        callbacks=[tl.LearningRateScheduler(schedule), *outputs(o)])
    return loop.fit(model, epochs=o.epochs, device=o.device, compile=o.compile,
                    precision=o.precision, resume=True if o.resume else None, step=step,
                    clip_grad_norm=1.0, steps_per_epoch=steps,
                    validation_steps=int(o.extra.get("validation_steps", VALIDATION_STEPS)))
