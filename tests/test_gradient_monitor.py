"""GradientMonitor: the norm against clip_grad_norm_, per step, in History, CSV and TensorBoard."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import classification_batches

import trainingloop as tl

CLIP = 0.5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _hand_norms(epochs: int, batches: list) -> list[list[float]]:
    """A hand-written loop that clips at CLIP: clip_grad_norm_'s return value of each step."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    norms = []
    for _ in range(epochs):
        epoch = []
        for x, y in batches:
            torch.nn.functional.cross_entropy(model(x), y).backward()
            epoch.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        norms.append(epoch)
    return norms


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fit(path: Path, monitor: tl.GradientMonitor, epochs: int = 2, **fit: object
         ) -> tuple[tl.TrainingLoop, tl.History]:
    model = _model()
    loop = tl.TrainingLoop(classification_batches(5, batch=6),
                           classification_batches(2, batch=4, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=[monitor, tl.CSVLogger(path)],
                           include_default_callbacks=False)
    return loop, loop.fit(model, epochs=epochs, device="cpu", **fit)


def test_norm_is_clip_grad_norms_return_value_at_each_step(tmp_path: Path) -> None:
    expected = _hand_norms(2, classification_batches(5, batch=6))
    assert max(max(e) for e in expected) > CLIP  # clipping does act: the norm is taken before
    loop, history = _fit(tmp_path / "log.csv", tl.GradientMonitor(), clip_grad_norm=CLIP)
    rows = _rows(tmp_path / "log.csv")
    for epoch, norms in enumerate(expected, start=1):
        train = [float(r["grad_norm"]) for r in rows if r["phase"] == "train"
                 and r["epoch"] == str(epoch)]
        running = [sum(norms[:k]) / k for k in range(1, len(norms) + 1)]  # the CSV's running mean
        assert train == pytest.approx(running, rel=1e-6)
        assert history["train/grad_norm"][epoch - 1] == pytest.approx(sum(norms) / len(norms),
                                                                      rel=1e-6)
    assert all(math.isnan(float(r["grad_norm"])) for r in rows if r["phase"] == "validation")
    assert "validation/grad_norm" not in history.epochs[0]
    assert [m.name for m in loop.metrics] == ["loss", "accuracy"]  # the fit's metric is gone


def test_log_every_n_steps_averages_the_logged_updates(tmp_path: Path) -> None:
    expected = _hand_norms(2, classification_batches(5, batch=6))
    _, history = _fit(tmp_path / "log.csv", tl.GradientMonitor(log_every_n_steps=2),
                      clip_grad_norm=CLIP)
    flat = [n for epoch in expected for n in epoch]
    logged = flat[0:5:2], flat[6:10:2]  # global steps 0, 2, 4 and 6, 8
    for epoch, norms in enumerate(logged):
        assert history["train/grad_norm"][epoch] == pytest.approx(sum(norms) / len(norms),
                                                                  rel=1e-6)


def test_fp16_norm_is_of_the_unscaled_gradients(tmp_path: Path) -> None:
    seen: list[float] = []

    def reference(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.UPDATE_START:  # after the monitor: the gradients it saw
            seen.append(float(torch.nn.utils.get_total_norm(
                [p.grad for p in loop.model.parameters()])))

    model = _model()
    loop = tl.TrainingLoop(classification_batches(5, batch=6),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[tl.GradientMonitor(), reference],
                           include_default_callbacks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = loop.fit(model, epochs=1, device="cpu", precision="16-mixed")
    finite = [n for n in seen if math.isfinite(n)]
    assert len(finite) == 5 and max(finite) < 10  # a scaled norm would be ~65536 times larger
    assert history["train/grad_norm"][0] == pytest.approx(sum(seen) / 5, rel=1e-6)


def test_per_layer_histograms_of_the_last_update(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last: dict[int, dict[str, torch.Tensor]] = {}

    def keep(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.UPDATE_START:
            last[loop.epoch_index] = {n: p.grad.clone() for n, p in loop.model.named_parameters()}

    model = _model()
    logger = tl.TensorBoardLogger(tmp_path / "tb")
    loop = tl.TrainingLoop(classification_batches(5, batch=6),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[logger, tl.GradientMonitor(per_layer=True), keep],
                           include_default_callbacks=False)
    history = loop.fit(model, epochs=2, device="cpu")
    events = EventAccumulator(str(logger.run_dir / "train"), size_guidance={"histograms": 0})
    events.Reload()
    names = [n for n, _ in model.named_parameters()]
    assert set(events.Tags()["histograms"]) == {f"grad/{n}" for n in names}
    for name in names:
        histograms = events.Histograms(f"grad/{name}")
        assert [h.step for h in histograms] == [1, 2]
        for h in histograms:
            gradient = last[h.step - 1][name]
            assert h.histogram_value.num == gradient.numel()
            assert h.histogram_value.sum == pytest.approx(float(gradient.sum()), abs=1e-6)
    scalars = events.Scalars("epoch_grad_norm")
    assert [s.value for s in scalars] == pytest.approx(history["train/grad_norm"], rel=1e-6)


def test_per_layer_needs_a_tensorboard_logger() -> None:
    model = _model()
    loop = tl.TrainingLoop(classification_batches(2), optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), loss=torch.nn.functional.cross_entropy,
        callbacks=[tl.GradientMonitor(per_layer=True)], include_default_callbacks=False)
    with pytest.raises(ValueError, match="TensorBoardLogger"):
        loop.fit(model, epochs=1, device="cpu")
