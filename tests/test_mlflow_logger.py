"""MLflowLogger against a real SQLite tracking store, read back with MlflowClient."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
from conftest import classification_batches
from mlflow.tracking import MlflowClient

import trainingloop as tl
from trainingloop.callbacks import mlflow_logger

pytestmark = pytest.mark.timeout(300)

TRAIN_BATCHES, EPOCHS, EVERY = 7, 3, 2


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database for the module: creating MLflow's tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _fit(tmp_path: Path, logger: tl.MLflowLogger, *extra: object,
         **fit_kwargs: object) -> tuple[tl.TrainingLoop, tl.History]:
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(classification_batches(TRAIN_BATCHES), classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=[tl.CSVLogger(tmp_path / "log.csv"), logger, *extra],
                           include_default_callbacks=False)
    return loop, loop.fit(model, epochs=EPOCHS, device="cpu", **fit_kwargs)  # type: ignore[arg-type]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_one_run_per_fit_holds_history_batches_params_and_artifacts(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (MLflow's ./mlruns)
    logger = tl.MLflowLogger(experiment="values", run_name="first", tracking_uri=store,
                             log_every_n_steps=EVERY, params={"model": {"width": 3}, "seed": 0})
    plot = tl.ProgressPlot(tmp_path / "out" / "curves.png")
    checkpoint = tl.Checkpoint(tmp_path / "out" / "checkpoints", monitor="validation/loss")
    loop, history = _fit(tmp_path, logger, plot, checkpoint)
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"

    # Epoch metrics: every History value, at step = epoch number.
    for key in ("train/loss", "train/accuracy", "validation/loss", "validation/accuracy",
                "examples_per_second"):
        assert _history(client, logger.run_id, key) == [
            (epoch, history[key][epoch - 1]) for epoch in range(1, EPOCHS + 1)], key

    # Batch metrics: the CSV's running values at every EVERY-th global step after the update.
    with open(tmp_path / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "train"]
    by_step = {(int(r["epoch"]) - 1) * TRAIN_BATCHES + int(r["batch"]): r for r in rows}
    steps = list(range(EVERY, EPOCHS * TRAIN_BATCHES + 1, EVERY))
    for name in ("loss", "accuracy"):
        assert _history(client, logger.run_id, f"batch/{name}") == [
            (s, float(by_step[s][name])) for s in steps], name

    params = run.data.params
    assert params["model/width"] == "3" and params["seed"] == "0"
    assert params["fit/epochs"] == str(EPOCHS) and params["fit/total_steps"] == str(loop.total_steps)
    assert params["fit/optimizer"] == "SGD" and params["fit/metrics"] == "loss,accuracy"

    artifacts = {a.path for a in client.list_artifacts(logger.run_id)}
    assert artifacts == {"curves.png", "checkpoints"}
    best = {a.path for a in client.list_artifacts(logger.run_id, "checkpoints/best")}
    assert "checkpoints/best/model.safetensors" in best
    assert run.data.tags["best_checkpoint"] == checkpoint.best_name
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "curves.png"
    assert stored.read_bytes() == plot.path.read_bytes()
    assert stored.is_relative_to(Path(store.removeprefix("sqlite:///")).parent / "mlartifacts")
    assert list(tmp_path.glob("mlruns")) == []

    # A second fit with the same logger is a second run of the experiment.
    first = logger.run_id
    _fit(tmp_path, logger)
    experiment = client.get_experiment_by_name("values")
    runs = client.search_runs([experiment.experiment_id])
    assert logger.run_id != first and {r.info.run_id for r in runs} == {first, logger.run_id}


def test_accumulation_logs_at_global_steps_after_updates(tmp_path: Path, store: str) -> None:
    logger = tl.MLflowLogger(experiment="accumulate", tracking_uri=store, log_every_n_steps=1)
    loop, _ = _fit(tmp_path, logger, accumulate_grad_batches=2)
    # 7 batches accumulated by 2: updates after batches 2, 4, 6 and the last one, 7.
    assert loop.global_step == 4 * EPOCHS
    with open(tmp_path / "log.csv") as f:
        rows = {(int(r["epoch"]), int(r["batch"])): float(r["loss"])
                for r in csv.DictReader(f) if r["phase"] == "train"}
    expected = [(4 * (epoch - 1) + k + 1, rows[epoch, batch])
                for epoch in range(1, EPOCHS + 1) for k, batch in enumerate((2, 4, 6, 7))]
    assert _history(MlflowClient(tracking_uri=store), logger.run_id, "batch/loss") == expected


def test_a_failing_fit_ends_its_run_failed_with_the_epochs_it_finished(
        tmp_path: Path, store: str) -> None:
    def fail(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.EPOCH_START and loop.epoch_index == 1:
            raise RuntimeError("boom")

    logger = tl.MLflowLogger(experiment="failing", tracking_uri=store)
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, logger, fail)
    client = MlflowClient(tracking_uri=store)
    assert client.get_run(logger.run_id).info.status == "FAILED"
    assert [s for s, _ in _history(client, logger.run_id, "validation/loss")] == [1]


def test_a_fit_called_inside_an_except_block_still_finishes(tmp_path: Path, store: str) -> None:
    logger = tl.MLflowLogger(experiment="ambient", tracking_uri=store)
    try:
        raise KeyError("handled by the user")
    except KeyError:
        _fit(tmp_path, logger)
    assert MlflowClient(tracking_uri=store).get_run(logger.run_id).info.status == "FINISHED"


def test_only_rank_zero_logs(tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlflow_logger, "is_main_process", lambda: False)
    logger = tl.MLflowLogger(experiment="rank1", tracking_uri=store)
    _fit(tmp_path, logger)
    assert logger.run_id is None
    assert MlflowClient(tracking_uri=store).get_experiment_by_name("rank1") is None


def test_a_missing_mlflow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an absent package looks like
    with pytest.raises(ImportError, match=r"pip install 'trainingloop\[mlflow\]'"):
        _fit(tmp_path, tl.MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/x.db"))


def test_log_every_n_steps_is_checked() -> None:
    with pytest.raises(ValueError, match="log_every_n_steps"):
        tl.MLflowLogger(log_every_n_steps=0)
