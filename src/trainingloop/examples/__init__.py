"""Examples that reproduce classic results; each module is a recipe a user can copy.

Every example module defines ``DESCRIPTION``, ``DEFAULTS`` (epochs, batch size, learning rate)
and ``run(options) -> History``; one with options of its own lists them in ``EXTRA`` (name ->
what it does), set from the command line with ``--set NAME=VALUE`` into ``Options.extra``.
:data:`EXAMPLES` maps the command-line names to modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["EXAMPLES", "Options", "Settings", "fit", "load", "outputs", "parse_extra", "unigram_perplexity"]

EXAMPLES: dict[str, str] = {
    "digits": "trainingloop.examples.digits",
    "linear-regression": "trainingloop.examples.linear_regression",
    "softmax-fashion-mnist": "trainingloop.examples.softmax_fashion_mnist",
    "lenet-fashion-mnist": "trainingloop.examples.lenet_fashion_mnist",
    "mlp-mnist": "trainingloop.examples.mlp_mnist",
    "lenet-mnist": "trainingloop.examples.lenet_mnist",
    "resnet-cifar10": "trainingloop.examples.resnet_cifar10",
    "airbench-cifar10": "trainingloop.examples.airbench_cifar10",
    "bert-cola": "trainingloop.examples.bert_cola",
    "gpt-wikitext2": "trainingloop.examples.gpt_wikitext2",
    "gpt-shakespeare": "trainingloop.examples.gpt_shakespeare",
    "nanogpt-shakespeare": "trainingloop.examples.nanogpt_shakespeare",
}


@dataclass
class Options:
    """What ``trainingloop run`` passes to an example; None means the example's default.

    ``data_dir`` is the data root the example passes to the readers as ``root=`` (None: the
    readers' default, ``$TRAININGLOOP_DATA`` or ``~/.cache/trainingloop``). ``extra`` holds the
    example's own options (its ``EXTRA``); from the command line the values are strings.
    """

    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    compile: bool = False
    precision: str = "32"
    data_dir: str | Path | None = None
    out: Path = Path("run")
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self, defaults: dict[str, Any]) -> Settings:
        """These options with the example's defaults filled in where nothing was given."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        missing = [k for k in ("epochs", "batch_size", "lr") if values[k] is None]
        if missing:
            raise ValueError(f"no value and no default for {missing}")
        return Settings(**values)


@dataclass
class Settings:
    """An example's :class:`Options` after :meth:`Options.resolved`: every number is set."""

    epochs: int
    batch_size: int
    lr: float
    device: str
    compile: bool
    precision: str
    data_dir: str | Path | None
    out: Path
    resume: bool
    extra: dict[str, Any]


def load(name: str) -> ModuleType:
    """The module of example ``name``; an unknown name lists the known ones."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; examples: {', '.join(EXAMPLES)}")
    return importlib.import_module(EXAMPLES[name])


def parse_extra(name: str, pairs: Sequence[str]) -> dict[str, str]:
    """``--set`` pairs ``["key=value", ...]`` as a dict, checked against example ``name``'s
    ``EXTRA``: a malformed pair or a name the example does not have is a ValueError."""
    known: dict[str, str] = getattr(load(name), "EXTRA", {})
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes NAME=VALUE, got {pair!r}")
        if key not in known:
            options = "; ".join(f"{k}: {v}" for k, v in known.items()) or "none"
            raise ValueError(f"example {name!r} has no option {key!r} (its options: {options})")
        extra[key] = value
    return extra


def outputs(options: Settings, csv: bool = True, tensorboard: bool = True, plot: bool = True,
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


def fit(loop: Any, model: Any, options: Settings) -> Any:
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
