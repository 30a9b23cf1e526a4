"""CSVLogger, TensorBoardLogger, ProgressPlot and EarlyStopping against independent readers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import classification_batches

import trainingloop as tl


def _loop(callbacks: list, train: int = 3, val: int = 2, metrics=("accuracy",),
          lr: float = 0.1) -> tuple[tl.TrainingLoop, torch.nn.Module]:
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(classification_batches(train, batch=5),
                           classification_batches(val, batch=3, seed=1) if val else None,
                           optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                           loss=torch.nn.functional.cross_entropy, metrics=list(metrics),
                           callbacks=callbacks, include_default_callbacks=False)
    return loop, model


def test_csv_logger_rows_match_running_metrics(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "log.csv"
    expected: list[list[str]] = []

    def reference(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END:
            stats = loop.last_stats
            expected.append([str(loop.epoch_index + 1), str(loop.batch_index + 1),
                             "train" if loop.is_training else "validation",
                             repr(stats["loss"]), repr(stats["accuracy"])])

    loop, model = _loop([tl.CSVLogger(path), reference])
    loop.fit(model, epochs=2, device="cpu")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "batch", "phase", "loss", "accuracy"]
    assert len(rows) == 1 + 2 * (3 + 2)
    assert [r[:3] for r in rows[1:6]] == [["1", "1", "train"], ["1", "2", "train"],
                                          ["1", "3", "train"], ["1", "1", "validation"],
                                          ["1", "2", "validation"]]
    for got, want in zip(rows[1:], expected):
        assert got[:3] == want[:3]
        assert float(got[3]) == pytest.approx(float(want[3]), rel=1e-12)
        assert float(got[4]) == float(want[4])
    last_train = rows[3]
    assert float(last_train[3]) == pytest.approx(loop.history["train/loss"][0], rel=1e-12)


def test_csv_logger_requires_csv_suffix() -> None:
    with pytest.raises(ValueError, match="log.txt"):
        tl.CSVLogger("run/log.txt")


def test_csv_logger_flushes_at_epoch_end(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    counts = []
    logger = tl.CSVLogger(path)

    def count(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.EPOCH_START and loop.epoch_index == 1:
            counts.append(len(path.read_text().splitlines()))

    loop, model = _loop([logger, count])
    loop.fit(model, epochs=2, device="cpu")
    assert counts == [1 + 5]


def test_csv_logger_resume_keeps_exactly_the_checkpointed_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    logger = tl.CSVLogger(path)
    loop, model = _loop([logger])
    loop.fit(model, epochs=1, device="cpu")
    state = logger.state_dict()
    with open(path, "a") as f:
        f.write("1,9,train,0.5,0.5\n")  # a row written after the checkpoint
    resumed = tl.CSVLogger(path)
    resumed.load_state_dict(state)
    loop, model = _loop([resumed])
    loop.fit(model, epochs=1, device="cpu")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 5 + 5 and "1,9,train" not in path.read_text()


def test_tensorboard_event_files(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = tl.TensorBoardLogger(tmp_path / "tb")
    loop, model = _loop([logger])
    history = loop.fit(model, epochs=2, device="cpu")
    runs = list((tmp_path / "tb").iterdir())
    assert len(runs) == 1 and logger.run_dir == runs[0]
    train = EventAccumulator(str(runs[0] / "train"))
    train.Reload()
    validation = EventAccumulator(str(runs[0] / "validation"))
    validation.Reload()
    tags = set(train.Tags()["scalars"])
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "batch_loss",
            "batch_accuracy"} <= tags
    assert set(validation.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy"}
    epoch_loss = train.Scalars("epoch_loss")
    assert [e.step for e in epoch_loss] == [1, 2]
    assert [e.value for e in epoch_loss] == pytest.approx(history["train/loss"], rel=1e-6)
    val_acc = validation.Scalars("epoch_accuracy")
    assert [e.value for e in val_acc] == pytest.approx(history["validation/accuracy"])
    assert [e.step for e in train.Scalars("batch_loss")] == [1, 2, 3, 4, 5, 6]
    assert train.Scalars("batch_loss")[2].value == pytest.approx(history["train/loss"][0],
                                                                 rel=1e-6)
    assert train.Scalars("epoch_learning_rate")[0].value == pytest.approx(0.1)
    loop.fit(model, epochs=1, device="cpu")
    assert len(list((tmp_path / "tb").iterdir())) == 2  # a new run folder per fit


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_progress_plot_image(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"curves{suffix}"
    plot = tl.ProgressPlot(path)
    loop, model = _loop([plot], train=10, lr=0.5)
    loop.fit(model, epochs=3, device="cpu")
    assert set(plot.points) == {"train/loss", "train/accuracy", "validation/accuracy"}
    xs, _ = plot.points["train/loss"]
    assert xs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and xs[-1] == 3.0
    assert plot.points["validation/accuracy"][0] == [1.0, 2.0, 3.0]
    if suffix == ".png":
        from PIL import Image

        image = np.asarray(Image.open(path).convert("L"))
        assert image.shape == (350, 500)
        assert image.std() > 10 and (image < 128).mean() > 0.005  # curves, axes, text drawn
    else:
        text = path.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text and "path" in text
    assert not list(tmp_path.glob(".*tmp*"))


def test_progress_plot_rejects_other_suffixes() -> None:
    with pytest.raises(ValueError, match="curves.jpg"):
        tl.ProgressPlot("curves.jpg")


def test_early_stopping_patience_and_reason(capsys: pytest.CaptureFixture[str]) -> None:
    values = iter([1.0, 0.5, 0.6, 0.55, 0.49, 0.7, 0.8, 0.9])

    def fake_metric(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.VALIDATION_END:
            loop.history.epochs[-1]["validation/score"] = next(values)

    stopper = tl.EarlyStopping(monitor="validation/score", patience=2, min_delta=0.02)
    loop, model = _loop([fake_metric, stopper])
    history = loop.fit(model, epochs=8, device="cpu")
    # 0.5 at epoch 2 is best; 0.6, 0.55 no; 0.49 improves by only 0.01 -> stop after epoch 4.
    assert len(history.epochs) == 4
    assert stopper.best == 0.5 and stopper.best_epoch == 2
    assert "stopping after epoch 4" in capsys.readouterr().out


def test_early_stopping_max_mode_and_unknown_key() -> None:
    stopper = tl.EarlyStopping(monitor="train/accuracy", patience=1, mode="max")
    loop, model = _loop([stopper], lr=0.0)  # nothing changes: stops after epoch 2
    history = loop.fit(model, epochs=5, device="cpu")
    assert len(history.epochs) == 2
    loop, model = _loop([tl.EarlyStopping(monitor="validation/acc")])
    with pytest.raises(KeyError, match="validation/acc"):
        loop.fit(model, epochs=1, device="cpu")
    assert not math.isnan(history["train/loss"][0])


SCORES = [1.0, 0.5, 0.6, 0.55, 0.49, 0.7, 0.8, 0.9, 1.0, 1.1]  # best at epoch 5


def _restoring(directory: Path, patience: int, *extra: object
               ) -> tuple[tl.TrainingLoop, torch.nn.Module, tl.EarlyStopping]:
    def score(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.VALIDATION_END:
            loop.history.epochs[-1]["validation/score"] = SCORES[loop.epoch_index]

    torch.manual_seed(0)
    stopper = tl.EarlyStopping(monitor="validation/score", patience=patience, restore_best=True)
    loop, model = _loop([score, tl.Checkpoint(directory, monitor="validation/score"), stopper,
                         *extra])
    return loop, model, stopper


def _saved(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _assert_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key in state:
        assert torch.equal(state[key], expected[key]), key


@pytest.mark.parametrize("patience", [20, 3])  # runs all 10 epochs; stops after epoch 8
def test_restore_best_ends_with_the_best_checkpoints_weights(tmp_path: Path,
                                                             patience: int) -> None:
    loop, model, stopper = _restoring(tmp_path, patience)
    history = loop.fit(model, epochs=10, device="cpu")
    assert len(history.epochs) == (10 if patience == 20 else 8) and stopper.best_epoch == 5
    assert (tmp_path / "best").resolve().name == "epoch=0005-end"
    _assert_weights(model, _saved(tmp_path / "best"))
    last = _saved(tmp_path / "last")
    assert not torch.equal(model.weight, last["weight"])  # not simply the last epoch's


def test_restore_best_survives_a_crash_and_resume(tmp_path: Path) -> None:
    def crash(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.EPOCH_START and loop.epoch_index == 6:
            raise RuntimeError("power cut")

    loop, model, _ = _restoring(tmp_path, 10, crash)
    with pytest.raises(RuntimeError, match="power cut"):
        loop.fit(model, epochs=8, device="cpu")
    assert (tmp_path / "last").resolve().name == "epoch=0006-end"
    loop, model, stopper = _restoring(tmp_path, 10)
    loop.fit(model, epochs=8, device="cpu", resume=True)
    assert stopper.best_epoch == 5
    _assert_weights(model, _saved(tmp_path / "best"))


@pytest.mark.parametrize("main", [True, False])
def test_every_writer_writes_from_rank_0_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              main: bool) -> None:
    import io

    monkeypatch.setattr(tl.distributed, "is_main_process", lambda: main)
    out = tmp_path / "run"
    printed = io.StringIO()
    stopper = tl.EarlyStopping(monitor="train/loss", patience=1)
    callbacks = [tl.CSVLogger(out / "log.csv"), tl.TensorBoardLogger(out / "tb"),
                 tl.ProgressPlot(out / "curves.png"), tl.Checkpoint(out / "checkpoints"),
                 tl.ProgressPrinter(stream=printed, terminal=False), stopper]
    loop, model = _loop(callbacks, lr=0.0)  # nothing improves: EarlyStopping stops at epoch 2
    loop.fit(model, epochs=3, device="cpu")
    assert stopper.reason is not None
    written = sorted(p.relative_to(out).parts[0] for p in out.rglob("*")) if out.exists() else []
    said = printed.getvalue() + capsys.readouterr().out
    if main:
        assert set(written) == {"log.csv", "tb", "curves.png", "checkpoints"}
        assert "Epoch 1/3" in said and stopper.reason in said
    else:
        assert written == [] and said == ""
