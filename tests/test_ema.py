"""EMA: the average against a hand computation, validation on it, exact resume, compile."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import classification_batches

import trainingloop as tl
from trainingloop import checkpointing

DECAY = 0.8


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))


def _loop(model: torch.nn.Module, callbacks: list, validation: bool = True) -> tl.TrainingLoop:
    return tl.TrainingLoop(classification_batches(4, batch=6),
                           classification_batches(2, batch=5, seed=1) if validation else None,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                           loss=torch.nn.functional.cross_entropy, callbacks=callbacks,
                           include_default_callbacks=False)


def _snapshots(store: list) -> tl.Callback:
    """Records the raw state after every training batch (raw: EMA swaps only in validation)."""

    class Snapshot(tl.Callback):
        def on_batch_end(self, loop: tl.TrainingLoop) -> None:
            if loop.is_training:
                store.append((loop.global_step, copy.deepcopy(loop.model.state_dict())))

    return Snapshot()


def _hand_ema(snapshots: list, every: int) -> list[dict[str, torch.Tensor]]:
    """avg = w at the first due step, then avg = d * avg + (1 - d) * w; integers copied."""
    averages, average = [], None
    for step, state in snapshots:
        if step % every == 0:
            if average is None:
                average = {k: v.clone() for k, v in state.items()}
            else:
                average = {k: DECAY * average[k] + (1 - DECAY) * v
                           if v.is_floating_point() else v.clone() for k, v in state.items()}
        averages.append(average)
    return averages


def test_ema_matches_a_hand_computation_step_by_step() -> None:
    raw: list = []
    averaged: list = []
    ema = tl.EMA(decay=DECAY, every_n_steps=2, validate=False)

    def record(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END and loop.is_training:
            averaged.append(copy.deepcopy(tl.EMA.averaged(loop).state_dict()))

    model = _model()
    _loop(model, [ema, _snapshots(raw), record]).fit(model, epochs=3, device="cpu")
    assert len(raw) == 12 and [s for s, _ in raw] == list(range(1, 13))
    expected = _hand_ema(raw, every=2)
    assert expected[0] is None  # step 1: nothing averaged yet
    for step, (want, got) in enumerate(zip(expected, averaged), start=1):
        if want is None:
            continue
        assert want.keys() == got.keys()
        for key in want:
            assert torch.allclose(got[key].double(), want[key].double(), rtol=1e-5,
                                  atol=1e-6), (step, key)
    assert ema.updates == 6 and int(ema.average.n_averaged) == 6
    # the running statistics of the batch norm are averaged too, its step counter copied
    final = averaged[-1]
    assert not torch.equal(final["1.running_mean"], raw[-1][1]["1.running_mean"])
    assert torch.equal(final["1.num_batches_tracked"], raw[-1][1]["1.num_batches_tracked"])


def _validation_loss(state: dict[str, torch.Tensor]) -> float:
    model = _model()
    model.load_state_dict(state)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in classification_batches(2, batch=5, seed=1):
            total += torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item()
            count += len(y)
    return total / count


def test_validation_uses_the_average_and_training_the_raw_weights() -> None:
    raw: list = []
    plain_model = _model()
    plain = _loop(plain_model, [_snapshots(raw)]).fit(plain_model, epochs=3, device="cpu")
    model = _model()
    history = _loop(model, [tl.EMA(decay=DECAY)]).fit(model, epochs=3, device="cpu")
    expected = _hand_ema(raw, every=1)
    for epoch in range(3):
        by_hand = _validation_loss(expected[4 * epoch + 3])
        assert history["validation/loss"][epoch] == pytest.approx(by_hand, rel=1e-5)
        assert history["validation/loss"][epoch] != pytest.approx(
            plain["validation/loss"][epoch], rel=1e-3)
    assert history["train/loss"] == plain["train/loss"]  # training saw the raw weights only
    for key, value in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_raw_weights_come_back_when_validation_is_cut_short() -> None:
    def cut(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END and not loop.is_training:
            raise tl.CancelEpoch  # skips VALIDATION_END

    plain_model, model = _model(), _model()
    _loop(plain_model, []).fit(plain_model, epochs=2, device="cpu")
    _loop(model, [tl.EMA(decay=DECAY), cut]).fit(model, epochs=2, device="cpu")
    for key, value in plain_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def _resumable(directory: Path, *extra: object) -> tuple[tl.TrainingLoop, torch.nn.Module,
                                                         tl.EMA]:
    model = _model()
    ema = tl.EMA(decay=DECAY, every_n_steps=3)
    loop = _loop(model, [tl.Checkpoint(directory, every_n_steps=2), ema, *extra])
    return loop, model, ema


def test_ema_resumes_bit_for_bit_after_a_crash(tmp_path: Path) -> None:
    loop, model, ema = _resumable(tmp_path / "a")
    expected_history = loop.fit(model, epochs=4, device="cpu")
    expected_average = copy.deepcopy(ema.average.state_dict())

    def crash(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END and loop.global_step == 11:
            raise RuntimeError("power cut")

    loop, model, ema = _resumable(tmp_path / "b", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        loop.fit(model, epochs=4, device="cpu")
    assert (tmp_path / "b" / "last").resolve().name == "epoch=0003-step=0000010"
    loop, model, ema = _resumable(tmp_path / "b")
    history = loop.fit(model, epochs=4, device="cpu", resume=True)
    assert ema.updates == 16 // 3
    for key, value in expected_average.items():
        assert torch.equal(ema.average.state_dict()[key], value), key
    assert history["validation/loss"] == expected_history["validation/loss"]


def test_best_checkpoint_keeps_the_average_that_won(tmp_path: Path) -> None:
    model = _model()
    loop = _loop(model, [tl.EMA(decay=DECAY), tl.Checkpoint(tmp_path, monitor="validation/loss")])
    history = loop.fit(model, epochs=4, device="cpu")
    best = tl.EMA.load_averaged(tmp_path / "best", _model())
    validation = classification_batches(2, batch=5, seed=1)
    assert loop.evaluate(best, validation, device="cpu")["loss"] == pytest.approx(
        min(history["validation/loss"]), rel=1e-6)
    raw = _model()  # the checkpoint's model file holds the raw weights, for an exact resume
    checkpointing.load(tmp_path / "best", raw)
    assert not torch.equal(raw[0].weight, best[0].weight)


def test_ema_with_compile_matches_eager() -> None:
    averages = []
    for compile in (False, True):
        model = _model()
        ema = tl.EMA(decay=DECAY)
        history = _loop(model, [ema]).fit(model, epochs=2, device="cpu", compile=compile)
        averages.append((copy.deepcopy(ema.average.module.state_dict()), history))
    (eager, eager_history), (compiled, compiled_history) = averages
    for key in eager:
        assert torch.allclose(eager[key].double(), compiled[key].double(), atol=1e-5), key
    assert compiled_history["validation/loss"] == pytest.approx(
        eager_history["validation/loss"], rel=1e-4)


def test_ema_under_ddp_matches_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    import json

    from test_distributed import WORKER, _env, torchrun

    single = tmp_path / "single"
    single.mkdir()
    done = subprocess.run([sys.executable, str(WORKER), str(single), "--batch", "16", "--ema"],
                          capture_output=True, text=True, env=_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    torchrun(tmp_path, "--batch", "8", "--ema")
    one = torch.load(single / "ema.pt", weights_only=True)
    two = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    assert not torch.allclose(final["0.weight"], two["0.weight"])  # an average, not the weights
    ours = json.loads((tmp_path / "history.json").read_text())
    reference = json.loads((single / "history.json").read_text())
    assert [e["validation/loss"] for e in ours] == pytest.approx(
        [e["validation/loss"] for e in reference], abs=1e-6)
