"""The record of a fit: one dict of plain floats per epoch."""

from __future__ import annotations

from typing import Any


class History:
    """Per-epoch results of a fit.

    ``epochs`` is a list of dicts with keys ``"epoch"`` (1-based), ``"train/<metric>"``,
    ``"validation/<metric>"`` and ``"examples_per_second"``; ``history[key]`` is that key's
    values over epochs.

    >>> h = History([{"epoch": 1, "train/loss": 0.5}, {"epoch": 2, "train/loss": 0.25}])
    >>> h["train/loss"]
    [0.5, 0.25]
    """

    def __init__(self, epochs: list[dict[str, float]] | None = None) -> None:
        self.epochs: list[dict[str, float]] = list(epochs or [])

    def keys(self) -> list[str]:
        """Every key that appears in some epoch, in first-seen order."""
        seen: dict[str, None] = {}
        for record in self.epochs:
            seen.update(dict.fromkeys(record))
        return list(seen)

    def __getitem__(self, key: str) -> list[float]:
        if not any(key in record for record in self.epochs):
            raise KeyError(f"{key!r} is not in the history; keys: {self.keys()}")
        return [record.get(key, float("nan")) for record in self.epochs]

    def __contains__(self, key: object) -> bool:
        return any(key in record for record in self.epochs)

    def __len__(self) -> int:
        return len(self.epochs)

    def __repr__(self) -> str:
        return f"History({self.epochs!r})"

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return {"epochs": [dict(record) for record in self.epochs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.epochs = [dict(record) for record in state["epochs"]]
