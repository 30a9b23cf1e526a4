"""Examples that reproduce classic results; each module is a recipe a user can copy.

Every example module defines ``DESCRIPTION``, ``DEFAULTS`` (epochs, batch size, learning rate)
and ``run(options) -> History``. :data:`EXAMPLES` maps the command-line names to modules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["EXAMPLES", "Options", "fit", "load", "outputs", "unigram_perplexity"]

EXAMPLES: dict[str, str] = {
    "digits": "trainingloop.examples.digits",
    "linear-regression": "trainingloop.examples.linear_regression",
    "softmax-fashion-mnist": "trainingloop.examples.softmax_fashion_mnist",
    "lenet-fashion-mnist": "trainingloop.examples.lenet_fashion_mnist",
    "mlp-mnist": "trainingloop.examples.mlp_mnist",
    "lenet-mnist": "trainingloop.examples.lenet_mnist",
    "resnet-cifar10": "trainingloop.examples.resnet_cifar10",
    "bert-cola": "trainingloop.examples.bert_cola",
    "gpt-wikitext2": "trainingloop.examples.gpt_wikitext2",
    "gpt-shakespeare": "trainingloop.examples.gpt_shakespeare",
    "nanogpt-shakespeare": "trainingloop.examples.nanogpt_shakespeare",
}


@dataclass
class Options:
    """What ``trainingloop run`` passes to an example; None means the example's default."""

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    compile: bool = False
    precision: str = "32"
    data_dir: str | None = None
    out: Path = Path("run")
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self, defaults: dict[str, Any]) -> Options:
        """A copy with the example's defaults filled in where nothing was given."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        return Options(**values)


def load(name: str) -> ModuleType:
    """The module of example ``name``; an unknown name lists the known ones."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; examples: {', '.join(EXAMPLES)}")
    return importlib.import_module(EXAMPLES[name])


def outputs(options: Options, csv: bool = True, tensorboard: bool = True, plot: bool = True,
            checkpoints: bool = True) -> list[Any]:
    """The callbacks every example writes under ``options.out``: ``log.csv``, a TensorBoard
    run, ``curves.png`` and ``checkpoints/``."""
    import trainingloop as tl

    out = Path(options.out)
    callbacks: list[Any] = []
    if csv:
        callbacks.append(tl.CSVLogger(out / "log.csv"))
    if tensorboard:
        callbacks.append(tl.TensorBoardLogger(out / "tensorboard"))
    if plot:
        callbacks.append(tl.ProgressPlot(out / "curves.png"))
    if checkpoints:
        callbacks.append(tl.Checkpoint(out / "checkpoints", keep_last=1))
    return callbacks


def fit(loop: Any, model: Any, options: Options) -> Any:
    """``loop.fit`` with the command line's device, compile, precision and resume options."""
    return loop.fit(model, epochs=options.epochs, device=options.device,
                    compile=options.compile, precision=options.precision,
                    resume=True if options.resume else None)


def unigram_perplexity(train: Any, evaluation: Any) -> float:
    """The baseline a language model must beat: add-one-smoothed unigram frequencies of
    ``train``'s ``input`` tokens, evaluated on ``evaluation``'s ``target`` tokens."""
    import math
    from collections import Counter

    counts = Counter(train.column("input").reshape(-1).tolist())
    total = sum(counts.values()) + len(train.attributes["tokenizer"])
    tokens = evaluation.column("target").reshape(-1).tolist()
    return math.exp(-sum(math.log((counts[t] + 1) / total) for t in tokens) / len(tokens))
