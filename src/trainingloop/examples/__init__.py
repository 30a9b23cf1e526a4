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

__all__ = ["EXAMPLES", "Options", "load"]

EXAMPLES: dict[str, str] = {
    "digits": "trainingloop.examples.digits",
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
