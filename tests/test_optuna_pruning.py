"""OptunaPruning with a real study on SQLite storage, the decision's broadcast, and torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

import trainingloop as tl
from trainingloop import distributed
from trainingloop.callbacks import optuna_pruning

pytestmark = pytest.mark.timeout(300)
WORKER = Path(__file__).with_name("optuna_worker.py")
EXAMPLE = Path(__file__).parents[1] / "examples" / "optuna_search.py"
EPOCHS = 5


def _data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A learnable 3-class problem (labels from a fixed linear map), batches of 8."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(5, 3, generator=torch.Generator().manual_seed(99))
    x = torch.randn(n, 5, generator=g)
    y = (x @ weights).argmax(1)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, n, 8)]


def _loop(lr: float, callbacks: list[Any]) -> tuple[tl.TrainingLoop, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(_data(48, 0), _data(16, 1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=callbacks, include_default_callbacks=False)
    return loop, model


def test_a_pruned_trial_stops_early_and_the_study_resumes(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def study() -> optuna.Study:
        return optuna.create_study(study_name="search", storage=storage, load_if_exists=True,
                                   pruner=optuna.pruners.MedianPruner(n_startup_trials=1,
                                                                      n_warmup_steps=2))

    fits: dict[int, tuple[tl.TrainingLoop, list[tl.Event]]] = {}

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 0.0, 1.0)
        events: list[tl.Event] = []
        # The CSV logger and the recorder come after the pruner: their handlers must still run.
        loop, model = _loop(lr, [tl.OptunaPruning(trial, monitor="validation/loss"),
                                 tl.CSVLogger(tmp_path / f"trial{trial.number}.csv"),
                                 lambda lp, event: events.append(event)])
        fits[trial.number] = (loop, events)
        return loop.fit(model, epochs=EPOCHS, device="cpu")["validation/loss"][-1]

    first = study()
    first.enqueue_trial({"lr": 0.5})  # learns: its validation loss falls
    first.enqueue_trial({"lr": 0.0})  # learns nothing: worse than the median from epoch 1 on
    first.optimize(objective, n_trials=2)
    complete, pruned = first.trials
    assert complete.state is optuna.trial.TrialState.COMPLETE
    assert pruned.state is optuna.trial.TrialState.PRUNED

    good, _ = fits[0]
    assert complete.intermediate_values == {
        epoch: good.history["validation/loss"][epoch - 1] for epoch in range(1, EPOCHS + 1)}
    loop, events = fits[1]
    assert len(loop.history.epochs) == 2  # pruned at the first step past the warm-up
    assert pruned.intermediate_values == {1: loop.history["validation/loss"][0],
                                          2: loop.history["validation/loss"][1]}
    assert events.count(tl.Event.EPOCH_END) == 2 and events[-1] is tl.Event.FIT_END
    with open(tmp_path / "trial1.csv") as f:
        assert {int(r["epoch"]) for r in csv.DictReader(f)} == {1, 2}  # flushed to the end

    resumed = study()  # the same study, from its database
    assert [t.state for t in resumed.trials] == [complete.state, pruned.state]
    resumed.optimize(objective, n_trials=1)
    assert len(resumed.trials) == 3 and resumed.trials[2].state.is_finished()


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_fit_raises_trial_pruned_after_every_fit_end_action(tmp_path: Path) -> None:
    study = optuna.create_study(pruner=_AlwaysPrune())
    trial = study.ask()
    after: list[str] = []

    class Later(tl.Callback):
        def on_fit_end(self, loop: tl.TrainingLoop) -> None:
            after.append("handler")
            loop.call_after_event(lambda: after.append("deferred"))

    checkpoint = tl.Checkpoint(tmp_path / "checkpoints")
    loop, model = _loop(0.1, [tl.OptunaPruning(trial), checkpoint, Later()])
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        loop.fit(model, epochs=3, device="cpu")
    assert after == ["handler", "deferred"]
    assert len(loop.history.epochs) == 1 and checkpoint.saved[-1].name == "epoch=0001-end"
    [running] = study.trials
    assert running.intermediate_values == {1: loop.history["validation/loss"][0]}


def test_a_missing_monitor_is_named(tmp_path: Path) -> None:
    trial = optuna.create_study().ask()
    loop, model = _loop(0.1, [tl.OptunaPruning(trial, monitor="validation/acc")])
    with pytest.raises(KeyError, match="validation/acc"):
        loop.fit(model, epochs=1, device="cpu")


def test_a_missing_optuna_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    loop, model = _loop(0.1, [tl.OptunaPruning(object())])
    with pytest.raises(ImportError, match=r"pip install 'trainingloop\[optuna\]'"):
        loop.fit(model, epochs=1, device="cpu")


class _Trial:
    """What prune_decision uses of an Optuna trial."""

    def __init__(self, answer: bool) -> None:
        self.answer, self.reports = answer, []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.answer


def test_the_decision_goes_through_a_broadcast_from_rank_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broadcasts: list[list[Any]] = []
    real = torch.distributed.broadcast_object_list

    def spy(objects: list[Any], src: int = 0, **kwargs: Any) -> None:
        broadcasts.append(list(objects))
        real(objects, src=src, **kwargs)

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", spy)
    assert optuna_pruning.prune_decision(_Trial(True), 0.5, 1)  # no group: no broadcast
    assert broadcasts == []
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous",
                                         rank=0, world_size=1)
    try:
        trial = _Trial(True)
        assert optuna_pruning.prune_decision(trial, 0.25, 3)
        assert trial.reports == [(0.25, 3)] and broadcasts == [[True]]
    finally:
        torch.distributed.destroy_process_group()


def test_another_rank_takes_rank_zeros_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    def from_rank_zero(objects: list[Any], src: int = 0, **kwargs: Any) -> None:
        assert src == 0 and objects == [False]  # this rank's own answer is not asked
        objects[0] = True

    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", from_rank_zero)
    assert optuna_pruning.prune_decision(None, 0.5, 1)  # rank 1 holds no trial


def test_under_torchrun_every_rank_stops_at_the_pruned_epoch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(WORKER), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"epochs": 2, "pruned": True}] * 2
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED]
    assert sorted(study.trials[0].intermediate_values) == [1, 2]


def test_the_search_example_runs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    done = subprocess.run([sys.executable, str(EXAMPLE), "--trials", "3", "--epochs", "2",
                           "--storage", storage], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "3 trials in the study" in done.stdout and "best: lr " in done.stdout
    study = optuna.load_study(study_name="digits-lr-width", storage=storage)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert study.best_trial.user_attrs["validation_accuracy"] > 0.5
