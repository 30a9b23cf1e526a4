"""Data-parallel training with 2 CPU processes over gloo, launched by torch.distributed.run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainingloop import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def torchrun(directory: Path, *args: str, expect_ok: bool = True) -> None:
    # --standalone: a local rendezvous on a port the system picks (no race for a free port).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(WORKER), str(directory), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=240)
    # stdout says how far each rank got ("results written", "exiting"): a crash after the work
    # is done reads differently from one during training.
    assert (done.returncode == 0) == expect_ok, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process with batch 16: what 2 processes with batch 8 must reproduce."""
    directory = tmp_path_factory.mktemp("single")
    done = subprocess.run([sys.executable, str(WORKER), str(directory), "--batch", "16"],
                          capture_output=True, text=True, env=_env(), timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return directory


def _close(a: Path, b: Path) -> None:
    first = torch.load(a / "final.pt", weights_only=True)
    second = torch.load(b / "final.pt", weights_only=True)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key], second[key], atol=1e-5), key


def test_ddp_two_processes_match_one_with_twice_the_batch(tmp_path: Path, single: Path) -> None:
    torchrun(tmp_path, "--batch", "8")
    _close(tmp_path, single)
    ours = json.loads((tmp_path / "history.json").read_text())
    reference = json.loads((single / "history.json").read_text())
    for mine, theirs in zip(ours, reference):
        for key in ("train/loss", "train/accuracy", "train/mcc", "validation/loss",
                    "validation/accuracy", "validation/mcc"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert [p.name for p in tmp_path.glob("*.csv")] == ["log.csv"]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * (8 + 3)  # per rank: 8 training and 3 validation batches


def test_ddp_resume_after_a_kill(tmp_path: Path, single: Path) -> None:
    torchrun(tmp_path, "--batch", "8", "--kill", "13", expect_ok=False)
    assert os.readlink(tmp_path / "checkpoints" / "last") == "epoch=0002-step=0000012"
    torchrun(tmp_path, "--batch", "8", "--resume")
    _close(tmp_path, single)


def test_ddp_accumulation_skips_the_sync_until_the_update(tmp_path: Path, single: Path) -> None:
    torchrun(tmp_path, "--batch", "4", "--accumulate", "2")
    _close(tmp_path, single)


def test_fsdp2_on_gloo_trains_and_resumes(tmp_path: Path, single: Path) -> None:
    torchrun(tmp_path, "--batch", "8", "--strategy", "fsdp", "--kill", "13", expect_ok=False)
    torchrun(tmp_path, "--batch", "8", "--strategy", "fsdp", "--resume")
    _close(tmp_path, single)


def test_single_process_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process()
    # After fit has torn its group down, torchrun's RANK still names the one process that saves
    # (both ranks once wrote history.json at the same time here and corrupted it).
    monkeypatch.setenv("RANK", "1")
    assert distributed.is_main_process()  # a stray RANK outside a launcher changes nothing
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main_process()
    assert distributed.gather_objects("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, None, "ddp", torch.device("cpu")) is model
    with pytest.raises(ValueError, match="strategy"):
        distributed.wrap(model, None, "zero3", torch.device("cpu"))
