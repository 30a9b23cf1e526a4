"""Checkpoints: exact resume after exceptions, SIGKILL and Ctrl-C; damaged and hostile files."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import classification_batches

import trainingloop as tl
from trainingloop import _files, checkpointing

WORKER = Path(__file__).with_name("resume_worker.py")
TOTAL_STEPS = 75


def _worker(directory: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(WORKER), str(directory), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == expect, done.stderr[-3000:]
    return done


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(directory / "final.pt", weights_only=True)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("reference")
    _worker(directory)
    return directory


def test_resume_after_sigkill_mid_epoch(tmp_path: Path, reference: Path) -> None:
    _worker(tmp_path, "--kill", "38:BATCH_START", expect=-signal.SIGKILL)
    assert (tmp_path / "checkpoints" / "last").resolve().name == "epoch=0002-step=0000036"
    _worker(tmp_path, "--resume")
    _assert_same(_weights(tmp_path), _weights(reference))
    assert (tmp_path / "log.csv").read_text() == (reference / "log.csv").read_text()


def test_fp16_resume_restores_the_grad_scaler(tmp_path_factory: pytest.TempPathFactory,
                                              tmp_path: Path) -> None:
    fp16 = ("--precision", "16-mixed")
    reference = tmp_path_factory.mktemp("reference-fp16")
    _worker(reference, *fp16)
    _worker(tmp_path, *fp16, "--kill", "38:BATCH_START", expect=-signal.SIGKILL)
    last = (tmp_path / "checkpoints" / "last").resolve()
    assert last.name == "epoch=0002-step=0000036"
    scaler = torch.load(last / checkpointing.STATE, weights_only=True)["scaler"]
    assert scaler["scale"] < 65536.0  # below the initial scale: early fp16 updates overflowed
    _worker(tmp_path, *fp16, "--resume")
    _assert_same(_weights(tmp_path), _weights(reference))


def test_ctrl_c_leaves_a_loadable_checkpoint(tmp_path: Path, reference: Path) -> None:
    done = _worker(tmp_path, "--sigint", "40", expect=-signal.SIGINT)
    assert "KeyboardInterrupt" in done.stderr
    last = (tmp_path / "checkpoints" / "last").resolve()
    manifest = checkpointing.verify(last)
    assert manifest["global_step"] == 40 and manifest["phase"] == "train"
    _worker(tmp_path, "--resume")
    _assert_same(_weights(tmp_path), _weights(reference))


@pytest.mark.parametrize("while_saving", [False, True])
def test_sigterm_checkpoints_raises_preempted_and_resumes_exactly(
        tmp_path: Path, reference: Path, while_saving: bool) -> None:
    # SLURM and Kubernetes send SIGTERM before a kill: the fit finishes its batch, writes a
    # checkpoint and raises tl.Preempted (the worker exits 143); a second SIGTERM while that
    # checkpoint is written must not break it.
    _worker(tmp_path, "--sigterm", "40", *(["--sigterm-while-saving"] if while_saving else []),
            expect=143)
    last = (tmp_path / "checkpoints" / "last").resolve()
    manifest = checkpointing.verify(last)
    assert manifest["global_step"] == 40 and manifest["phase"] == "train"
    assert last.name == "epoch=0002-step=0000040-train-000015"
    _worker(tmp_path, "--resume")
    _assert_same(_weights(tmp_path), _weights(reference))
    assert (tmp_path / "log.csv").read_text() == (reference / "log.csv").read_text()


def test_fault_injection_twenty_kills(tmp_path: Path, reference: Path) -> None:
    rng = random.Random(20261123)
    events = ["BATCH_START", "UPDATE_START", "BATCH_END", "SAVE"]
    steps = sorted(rng.sample(range(1, TOTAL_STEPS), 20))
    kills = 0
    for step in steps:
        event = rng.choice(events)
        if event == "SAVE":
            step = max(3, step - step % 3)  # checkpoints are written every 3 steps
        args = ["--kill", f"{step}:{event}"]
        if kills:
            args.append("--resume")
        done = subprocess.run(
            [sys.executable, str(WORKER), str(tmp_path), *args], capture_output=True,
            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=120)
        if done.returncode == -signal.SIGKILL:
            kills += 1
        else:  # a SAVE point already passed by the resume: the run finished
            assert done.returncode == 0, done.stderr[-3000:]
            (tmp_path / "final.pt").unlink()
    _worker(tmp_path, "--resume")
    assert kills >= 18
    _assert_same(_weights(tmp_path), _weights(reference))
    assert (tmp_path / "log.csv").read_text() == (reference / "log.csv").read_text()
    print(f"survived {kills} kills")


# -- in-process --------------------------------------------------------------------------------
def _loop(directory: Path, *extra: object, **checkpoint: object) -> tuple[tl.TrainingLoop,
                                                                          torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(classification_batches(4), classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[tl.Checkpoint(directory, **checkpoint), *extra],
                           include_default_callbacks=False)
    return loop, model


def test_resume_after_exception_in_process(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path / "a")
    loop.fit(model, epochs=4, device="cpu")
    expected = model.state_dict()

    def fail(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END and loop.epoch_index == 2 and loop.batch_index == 1:
            raise RuntimeError("power cut")

    loop, model = _loop(tmp_path / "b", fail)
    with pytest.raises(RuntimeError, match="power cut"):
        loop.fit(model, epochs=4, device="cpu")
    loop, model = _loop(tmp_path / "b")
    history = loop.fit(model, epochs=4, device="cpu", resume=tmp_path / "b" / "last")
    _assert_same(model.state_dict(), expected)
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4]


def test_keep_last_best_and_names(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path, keep_last=2, monitor="validation/loss")
    history = loop.fit(model, epochs=4, device="cpu")
    names = sorted(p.name for p in tmp_path.iterdir())
    best_epoch = min(range(4), key=lambda i: history["validation/loss"][i]) + 1
    assert os.readlink(tmp_path / "last") == "epoch=0004-end"
    assert os.readlink(tmp_path / "best") == f"epoch={best_epoch:04d}-end"
    expected = {"best", "last", "epoch=0003-end", "epoch=0004-end", f"epoch={best_epoch:04d}-end"}
    assert set(names) == expected
    manifest = json.loads((tmp_path / "epoch=0004-end" / "manifest.json").read_text())
    assert manifest["global_step"] == 16 and set(manifest["files"]) == {"model.safetensors",
                                                                        "state.pt"}


def test_truncated_newest_checkpoint_falls_back_with_warning(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path, keep_last=3)
    loop.fit(model, epochs=3, device="cpu")
    weights = tmp_path / "epoch=0003-end" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    loop, model = _loop(tmp_path, keep_last=3)
    with pytest.raises(tl.checkpointing.CheckpointError, match="truncated"):
        loop.fit(model, epochs=3, device="cpu", resume=tmp_path / "epoch=0003-end")
    trained: list = []
    loop, model = _loop(tmp_path, keep_last=3, every_n_epochs=1)
    with pytest.warns(RuntimeWarning, match=r"epoch=0003-end.*truncated"):
        history = loop.fit(model, epochs=3, device="cpu", resume=True,
                           callbacks=[lambda lp, ev: trained.append(lp.epoch_index)
                                      if ev is tl.Event.TRAINING_START else None])
    assert trained == [2] and len(history.epochs) == 3  # epoch 3 again, from epoch 2's end
    checkpointing.verify(tmp_path / "epoch=0003-end")  # rewritten whole


def test_malicious_pickle_does_not_run(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path)
    loop.fit(model, epochs=1, device="cpu")
    entry = tmp_path / "epoch=0001-end"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    (entry / "state.pt").write_bytes(pickle.dumps({"x": Exploit()}))
    manifest = json.loads((entry / "manifest.json").read_text())
    state = entry / "state.pt"
    manifest["files"]["state.pt"] = {"size": state.stat().st_size,
                                     "sha256": _files.sha256_file(state)}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    loop, model = _loop(tmp_path)
    with pytest.raises(tl.checkpointing.CheckpointError, match="cannot be loaded safely"):
        loop.fit(model, epochs=2, device="cpu", resume=entry)
    assert not marker.exists()


def test_other_architecture_names_the_keys(tmp_path: Path) -> None:
    loop, model = _loop(tmp_path)
    loop.fit(model, epochs=1, device="cpu")
    other = torch.nn.Sequential(torch.nn.Linear(5, 3))
    with pytest.raises(tl.checkpointing.CheckpointError, match=r"missing keys \['0.bias'"):
        checkpointing.load(tmp_path / "last", other)
    wider = torch.nn.Linear(5, 4)
    with pytest.raises(tl.checkpointing.CheckpointError, match="weight"):
        checkpointing.load(tmp_path / "last", wider)


def test_non_finite_loss_names_the_step_and_writes_no_checkpoint(tmp_path: Path) -> None:
    batches = classification_batches(4)
    poisoned = [(x.clone(), y) for x, y in batches]
    seen: list = []

    def poison(loop: tl.TrainingLoop, event: tl.Event) -> None:
        seen.append((event, loop.epoch_index))
        if event is tl.Event.BATCH_START and loop.epoch_index == 1 and loop.batch_index == 2:
            loop.last_input = loop.last_input * float("nan")

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(poisoned, classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[poison, tl.Checkpoint(tmp_path, every_n_steps=1,
                                                            keep_last=100)],
                           include_default_callbacks=False)
    with pytest.raises(tl.NonFiniteLossError, match=r"epoch 2.*global step 6") as info:
        loop.fit(model, epochs=3, device="cpu")
    assert (info.value.epoch, info.value.step, info.value.batch) == (2, 6, 2)
    assert (tl.Event.VALIDATION_START, 1) not in seen
    steps = sorted(checkpointing.verify(p)["global_step"] for p in checkpointing.entries(tmp_path))
    assert max(steps) <= 6 and os.readlink(tmp_path / "last").startswith("epoch=0002-step=00000")
    restored = torch.nn.Linear(5, 3)
    checkpointing.load(tmp_path / "last", restored)
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_resume_true_without_checkpoint_callback_fails() -> None:
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(classification_batches(2), optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), loss=torch.nn.functional.cross_entropy,
        include_default_callbacks=False)
    with pytest.raises(ValueError, match="tl.Checkpoint"):
        loop.fit(model, epochs=1, device="cpu", resume=True)


@pytest.mark.parametrize("randomness", ["global", "loader generator", "sampler generator",
                                        "workers"])
def test_dataloader_is_replayed_to_its_position(tmp_path: Path, randomness: str) -> None:
    # The reproducible habit is a loader (or sampler) that owns a seeded generator: the
    # checkpoint must hold that generator's state too, or the replayed epoch is epoch 1's order.
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    def run(directory: Path, fail_at: int | None, resume: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        dataset = TensorDataset(torch.randn(40, 5, generator=g),
                                torch.randint(0, 3, (40,), generator=g))
        own = torch.Generator().manual_seed(7)
        if randomness == "global":
            data = DataLoader(dataset, batch_size=6, shuffle=True)
        elif randomness == "loader generator":
            data = DataLoader(dataset, batch_size=6, shuffle=True, generator=own)
        elif randomness == "sampler generator":
            data = DataLoader(dataset, batch_size=6, sampler=RandomSampler(dataset, generator=own))
        else:
            data = DataLoader(dataset, batch_size=6, shuffle=True, generator=own, num_workers=2)
        model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.3),
                                    torch.nn.Linear(8, 3))

        def fail(loop: tl.TrainingLoop, event: tl.Event) -> None:
            if event is tl.Event.BATCH_END and loop.global_step == fail_at:
                raise RuntimeError("crash")

        loop = tl.TrainingLoop(data, optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                               loss=torch.nn.functional.cross_entropy,
                               callbacks=[tl.Checkpoint(directory, every_n_steps=4), fail],
                               include_default_callbacks=False)
        if fail_at is None:
            loop.fit(model, epochs=3, device="cpu", resume=resume or None)
        else:
            with pytest.raises(RuntimeError, match="crash"):
                loop.fit(model, epochs=3, device="cpu")
        return model

    expected = run(tmp_path / "a", None, False).state_dict()
    run(tmp_path / "b", 11, False)  # checkpoint at step 8: epoch 2, batch 1 of 7
    assert os.readlink(tmp_path / "b" / "last") == "epoch=0002-step=0000008"
    _assert_same(run(tmp_path / "b", None, True).state_dict(), expected)


# -- found by mutation testing (`make mutate`): the storage functions one by one ---------------
def _entry(directory: Path, name: str, created_ns: int | None = None) -> Path:
    model = torch.nn.Linear(2, 1)
    path = checkpointing.save(directory, name, model, {"global_step": 1}, {"global_step": 1})
    if created_ns is not None:
        manifest = json.loads((path / checkpointing.MANIFEST).read_text())
        manifest["created_ns"] = created_ns
        (path / checkpointing.MANIFEST).write_text(json.dumps(manifest))
    return path


def test_rng_state_round_trip_replays_every_generator(tmp_path: Path) -> None:
    import numpy as np

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # a cached Gaussian in NumPy's state
    state = checkpointing.rng_state()
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    torch.save(state, tmp_path / "rng.pt")  # weights-only loadable, as in state.pt
    checkpointing.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    replayed = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3))
    assert replayed[:3] == expected[:3] and torch.equal(replayed[3], expected[3])


def test_save_writes_a_verified_manifest_and_replaces_an_entry(tmp_path: Path) -> None:
    import time

    model = torch.nn.Linear(2, 1)
    started = time.time_ns()
    nested = checkpointing.save(tmp_path / "new" / "dirs", "n", model, {}, {})  # made on demand
    assert checkpointing.verify(nested)["created_ns"] >= started
    path = checkpointing.save(tmp_path, "a", model, {"x": torch.arange(3)}, {"global_step": 7})
    assert path == tmp_path / "a" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "new"]
    manifest = checkpointing.verify(path)
    assert manifest["format"] == checkpointing.FORMAT and manifest["global_step"] == 7
    assert started <= manifest["created_ns"] <= time.time_ns()
    for name in (checkpointing.WEIGHTS, checkpointing.STATE):
        assert manifest["files"][name] == {"size": (path / name).stat().st_size,
                                           "sha256": _files.sha256_file(path / name)}
    import hashlib

    data = (path / checkpointing.STATE).read_bytes()
    assert _files.sha256_file(path / checkpointing.STATE) == hashlib.sha256(data).hexdigest()
    with torch.no_grad():
        model.weight.fill_(2.0)
    checkpointing.save(tmp_path, "a", model, {"x": torch.arange(4)}, {"global_step": 8})
    restored = torch.nn.Linear(2, 1)
    state = checkpointing.load(path, restored)
    assert torch.equal(state["x"], torch.arange(4)) and torch.equal(restored.weight,
                                                                     torch.full((1, 2), 2.0))
    given = checkpointing.save(tmp_path, "b", model, {}, {},
                               weights={"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
    checkpointing.load(given, restored)
    assert torch.equal(restored.weight, torch.ones(1, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "new"]  # no temporary left


def test_a_failed_save_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_files, "fsync_path", broken)
    with pytest.raises(OSError, match="disk full"):
        checkpointing.save(tmp_path, "a", torch.nn.Linear(2, 1), {}, {})
    assert list(tmp_path.iterdir()) == []


def test_verify_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(checkpointing.CheckpointError, match="is not a checkpoint folder"):
        checkpointing.verify(tmp_path / "nothing")
    path = _entry(tmp_path, "a")
    state = path / checkpointing.STATE
    original = state.read_bytes()
    state.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(checkpointing.CheckpointError, match="sha256 does not match"):
        checkpointing.verify(path)
    state.write_bytes(original + b"x")
    with pytest.raises(checkpointing.CheckpointError,
                       match=rf"truncated or corrupt: {len(original) + 1} bytes, expected "
                             rf"{len(original)}"):
        checkpointing.verify(path)
    state.unlink()
    with pytest.raises(checkpointing.CheckpointError, match="state.pt is missing"):
        checkpointing.verify(path)
    (path / checkpointing.MANIFEST).write_text("{not json")
    with pytest.raises(checkpointing.CheckpointError, match="manifest.json is missing or corrupt"):
        checkpointing.verify(path)
    (path / checkpointing.MANIFEST).write_text('{"format": 1}')  # lists no file: nothing to check
    assert checkpointing.verify(path) == {"format": 1}


def test_entries_newest_first_and_find_latest_prefers_last(tmp_path: Path) -> None:
    assert checkpointing.entries(tmp_path / "none") == []
    old, new = _entry(tmp_path, "old", created_ns=1), _entry(tmp_path, "new", created_ns=2)
    broken = tmp_path / "broken"
    broken.mkdir()  # no manifest: the oldest
    (tmp_path / ".tmp-half").mkdir()  # a temporary is no entry
    (tmp_path / "file").write_text("")
    checkpointing.link_atomically(tmp_path / "alias", "new")  # a link is no entry
    assert checkpointing.entries(tmp_path) == [new, old, broken]
    assert checkpointing.find_latest(tmp_path) == new
    checkpointing.link_atomically(tmp_path / "last", "old")
    assert os.readlink(tmp_path / "last") == "old"
    assert checkpointing.find_latest(tmp_path) == old  # `last` first, whatever the clocks say
    checkpointing.link_atomically(tmp_path / "last", "new")  # replaced, not a second link
    assert os.readlink(tmp_path / "last") == "new"
    assert not (tmp_path / ".last.tmp").exists()
    (new / checkpointing.WEIGHTS).write_bytes(b"")
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint.*new"):
        assert checkpointing.find_latest(tmp_path) == old
    (old / checkpointing.MANIFEST).unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(checkpointing.CheckpointError,
                                                     match="no intact checkpoint"):
        checkpointing.find_latest(tmp_path)


def test_unwrap_strips_compile_wrappers() -> None:
    class Wrapper(torch.nn.Module):  # a wrapper of a wrapper, as compile inside compile
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    model = torch.nn.Linear(2, 1)
    assert checkpointing.unwrap(model) is model
    assert checkpointing.unwrap(torch.compile(model)) is model
    assert checkpointing.unwrap(Wrapper(Wrapper(model))) is model
