"""WandbLogger in offline mode: the local run's transaction log holds History's values.

wandb >= 0.2x no longer ships a Python reader of its ``.wandb`` files (``wandb.sdk.internal.
datastore`` is gone) and an offline run writes no ``wandb-summary.json``, so :func:`_records`
reads the file as wandb writes it: a 7-byte header (``:W&B``, magic 0xBEE1, version), then
LevelDB-log records in 32 KiB blocks, each a ``wandb_internal_pb2.Record`` (wandb's own
protobuf, parsed with wandb's own class).
"""

from __future__ import annotations

import csv
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import classification_batches, wandb_offline

import trainingloop as tl
from trainingloop.callbacks import wandb_logger

pytestmark = pytest.mark.timeout(300)
TRAIN_BATCHES, EPOCHS, EVERY = 5, 2, 2
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    raw, pending, position = [], b"", _HEADER
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + _HEADER])
        chunk = data[position + _HEADER:position + _HEADER + length]
        position += _HEADER + length
        if kind == _FULL:
            raw.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            raw.append(pending + chunk)
        else:
            break
    records = []
    for blob in raw:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        records.append(record)
    return records


def _items(items: Any) -> dict[str, Any]:
    """Key-value items of a record (a key is either ``key`` or the parts of ``nested_key``)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _finished_records(run_dir: Path, timeout: float = 60.0) -> list[Any]:
    """The run's records once its exit record is on disk: offline, ``run.finish()`` returns
    before wandb's service process has written the file out."""
    [log] = run_dir.glob("*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = _records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {log} after {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every wandb folder under tmp_path/wandb-home, offline, no prompts, no network."""
    wandb_offline(monkeypatch, tmp_path / "wandb-home")
    return tmp_path


def _fit(tmp_path: Path, logger: tl.WandbLogger) -> tl.History:
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(classification_batches(TRAIN_BATCHES), classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=[tl.CSVLogger(tmp_path / "log.csv"), logger],
                           include_default_callbacks=False)
    return loop.fit(model, epochs=EPOCHS, device="cpu")


def test_offline_run_holds_history_and_batch_values(offline: Path) -> None:
    logger = tl.WandbLogger(project="trainingloop-test", mode="offline",
                            log_every_n_steps=EVERY, config={"width": 3})
    history = _fit(offline, logger)
    assert logger.run_dir is not None and logger.run_dir.is_dir()
    assert logger.run_dir.is_relative_to(offline / "wandb-home")
    records = _finished_records(logger.run_dir)
    rows = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]

    epochs = [r for r in rows if "epoch" in r]
    assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1))
    for row, record in zip(epochs, history.epochs):
        for key in ("train/loss", "train/accuracy", "validation/loss", "validation/accuracy",
                    "examples_per_second"):
            assert row[key] == pytest.approx(record[key], rel=1e-12), key

    with open(offline / "log.csv") as f:
        train = [r for r in csv.DictReader(f) if r["phase"] == "train"]
    by_step = {(int(r["epoch"]) - 1) * TRAIN_BATCHES + int(r["batch"]): r for r in train}
    batches = [r for r in rows if "global_step" in r]
    assert [r["global_step"] for r in batches] == list(range(EVERY, EPOCHS * TRAIN_BATCHES + 1,
                                                             EVERY))
    for row in batches:
        for name in ("loss", "accuracy"):
            assert row[f"batch/{name}"] == pytest.approx(float(by_step[row["global_step"]][name]),
                                                         rel=1e-12)

    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = _items(run.config.update)
    assert config["width"] == 3 and config["fit/epochs"] == EPOCHS
    metric_axes = {r.metric.glob_name or r.metric.name: r.metric.step_metric
                   for r in records if r.WhichOneof("record_type") == "metric"}
    assert metric_axes["batch/*"] == "global_step" and metric_axes["train/*"] == "epoch"
    [done] = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert done.exit_code == 0


def test_only_rank_zero_starts_a_run(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wandb_logger, "is_main_process", lambda: False)
    logger = tl.WandbLogger(mode="offline")
    _fit(offline, logger)
    assert logger.run_dir is None and not list((offline / "wandb-home").rglob("*.wandb"))


def test_a_missing_wandb_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'trainingloop\[wandb\]'"):
        _fit(tmp_path, tl.WandbLogger(mode="offline"))
