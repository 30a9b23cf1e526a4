"""lr_find: everything exactly as before afterwards; the curve, its smoothing and divergence."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trainingloop as tl


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested dicts/lists/tuples of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def _setup() -> tuple[tl.TrainingLoop, torch.nn.Module, Any]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(160, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    data = tl.data.ArrayDataset({"x": x, "y": y}).shuffle(seed=0).batch(16)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loop = tl.TrainingLoop(data, optimizer=optimizer, loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False)
    return loop, model, data


def _everything(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": copy.deepcopy(model.state_dict()),
            "modes": [m.training for m in model.modules()],
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state()}


def test_lr_find_leaves_everything_as_it_was() -> None:
    loop, model, data = _setup()
    loop.fit(model, epochs=1, device="cpu")  # a used optimizer: Adam moments, step counts
    model[1].eval()  # a frozen batch norm stays in eval mode
    torch.nn.functional.cross_entropy(model(torch.randn(4, 6)), torch.zeros(4).long()).backward()
    random.seed(5)
    np.random.seed(5)
    before = _everything(model, loop.optimizer)
    epoch = data.epoch
    result = tl.lr_find(loop, model, steps=40, device="cpu")
    assert data.epoch == epoch  # the data's shuffling epoch, which the range test advanced
    assert len(result.learning_rates) > 10
    after = _everything(model, loop.optimizer)
    for key in before:
        assert _same(before[key], after[key]), key
    # and so the next fit trains exactly as it would have without the range test
    trained = []
    for find in (False, True):
        loop, model, _ = _setup()
        if find:
            tl.lr_find(loop, model, steps=40, device="cpu")
        loop.fit(model, epochs=2, device="cpu")
        trained.append(model.state_dict())
    assert _same(trained[0], trained[1])


def test_rates_smoothing_divergence_and_suggestion(tmp_path: Path) -> None:
    loop, model, _ = _setup()
    result = tl.lr_find(loop, model, start_lr=1e-5, end_lr=100.0, steps=80, device="cpu")
    n = len(result.learning_rates)
    assert result.diverged and 10 < n < 80
    expected_rates = [1e-5 * (100.0 / 1e-5) ** (i / 79) for i in range(n)]
    assert result.learning_rates == pytest.approx(expected_rates, rel=1e-12)
    average, smoothed = 0.0, []
    for i, loss in enumerate(result.raw_losses):  # fastai's debiased moving average
        average = 0.98 * average + 0.02 * loss
        smoothed.append(average / (1 - 0.98 ** (i + 1)))
    assert result.losses == pytest.approx(smoothed, rel=1e-12)
    best = min(result.losses[:-1])
    assert not math.isfinite(result.losses[-1]) or result.losses[-1] > 4 * best
    assert all(v <= 4 * min(result.losses[:i + 1]) for i, v in enumerate(result.losses[:-1]))
    # the steepest descent of the smoothed loss (against log rate), first tenth skipped, on
    # the way down to the minimum
    losses, rates = result.losses[:-1], result.learning_rates[:-1]
    slopes = np.gradient(losses, np.log(rates))
    skip = len(losses) // 10
    lowest = losses.index(min(losses[skip:]))
    steepest = min(range(skip, lowest + 1), key=lambda i: slopes[i])
    assert result.suggestion == rates[steepest]
    assert 1e-3 < result.suggestion < 1  # where Adam on this problem learns fastest
    figure = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 5000 and figure.axes[0].get_xscale() == "log"


def test_lr_find_rejects_a_plain_updater() -> None:
    model = torch.nn.Linear(2, 1)
    loop = tl.TrainingLoop([(torch.randn(4, 2), torch.randn(4, 1))], optimizer=lambda lp: None,
                           loss=torch.nn.functional.mse_loss, include_default_callbacks=False)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        tl.lr_find(loop, model)
