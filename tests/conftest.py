"""Shared fixtures: small deterministic data and a recorder of events."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA_ROOT = Path(os.environ.get("TRAININGLOOP_DATA", Path(__file__).parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def classification_batches(
    batches: int, batch: int = 4, features: int = 5, classes: int = 3, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` random (x, y) pairs for a linear classifier."""
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, features, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(batches)
    ]


def require_data(*parts: str) -> Path:
    """The path of a file in the offline mirror; the test fails (not skips) if it is missing."""
    path = DATA_ROOT.joinpath(*parts)
    assert path.exists(), f"offline data missing: {path} (set TRAININGLOOP_DATA)"
    return path


def wandb_offline(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Keep wandb offline, silent and inside ``home``; proxies that refuse any connection.

    wandb reads its settings once per process (its setup singleton): tear it down first so an
    earlier test's folders are not reused.
    """
    import wandb

    wandb.teardown()
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    home.mkdir(parents=True, exist_ok=True)
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR",
                 "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home))
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
           "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
           "WANDB_X_DISABLE_STATS": "true", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
