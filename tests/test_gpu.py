"""GPU pieces: the host-sync guard, the prefetcher, and benchmarks/gpu.py's smoke run.

The CPU side of each piece runs everywhere. Tests marked ``cuda`` (``pytest -m cuda``) need a
GPU and are skipped only where CUDA is absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainingloop as tl
from trainingloop.data import Prefetcher
from trainingloop.devices import HostSyncError, raise_if_host_sync, sync_allowed, sync_debug

ROOT = Path(__file__).parents[1]
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def batched(n: int = 40, batch: int = 8, seed: int | None = 0) -> tl.data.ArrayDataset:
    g = torch.Generator().manual_seed(1)
    data = tl.data.ArrayDataset({"x": torch.randn(n, 5, generator=g),
                                 "y": torch.randint(0, 3, (n,), generator=g)})
    return (data.shuffle(seed) if seed is not None else data).batch(batch)


def nested_batches() -> list[Any]:
    g = torch.Generator().manual_seed(2)
    return [({"a": torch.randn(4, 3, generator=g), "b": [torch.arange(4), torch.ones(2)]},
             torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)


# -- sync_debug ------------------------------------------------------------------------------------
def test_sync_debug_is_a_no_op_off_cuda() -> None:
    with sync_debug(True, torch.device("cpu")):
        assert torch.ones(3).sum().item() == 3.0  # a read on the CPU is no sync


def test_sync_debug_sets_error_mode_on_cuda_and_restores_the_previous_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[Any] = []
    mode = {"now": 1}  # "warn", as a user might have it
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode["now"])

    def set_mode(value: Any) -> None:
        calls.append(value)
        mode["now"] = value

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    with sync_debug(True, torch.device("cuda", 0)):
        assert calls == ["error"]
    assert calls == ["error", 1]
    with pytest.raises(ValueError), sync_debug(True, torch.device("cuda", 0)):
        raise ValueError("inside")
    assert calls == ["error", 1, "error", 1]  # restored when the block raises too
    with sync_debug(False, torch.device("cuda", 0)):
        pass
    assert len(calls) == 4  # off: the mode is not touched


def test_sync_allowed_suspends_the_error_mode_and_restores_it(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mode = {"now": 2}  # "error", as sync_debug leaves it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: mode["now"])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda v: mode.update(now=v))
    with sync_allowed():
        assert mode["now"] == 0
    assert mode["now"] == 2
    mode["now"] = 0
    with sync_allowed():  # off already: untouched
        assert mode["now"] == 0


def test_a_host_sync_error_names_the_event_and_the_callback() -> None:
    newer = RuntimeError("Synchronizing CUDA operation forced by Tensor.item()")
    with pytest.raises(HostSyncError, match=r"ProgressPrinter .* at TRAINING_END"):
        raise_if_host_sync(newer, "TRAINING_END", "ProgressPrinter")
    caught = RuntimeError("called a synchronizing CUDA operation")
    with pytest.raises(HostSyncError, match=r"CSVLogger.*BATCH_END.*sync_debug=True") as info:
        raise_if_host_sync(caught, "BATCH_END", "CSVLogger")
    assert info.value.__cause__ is caught
    raise_if_host_sync(RuntimeError("shape mismatch"), "BATCH_END", "CSVLogger")  # not a sync
    raise_if_host_sync(ValueError("x"), "BATCH_END", "CSVLogger")
    raise_if_host_sync(info.value, "FIT_END", "other")  # already named: not wrapped twice


# -- the prefetcher on the CPU ---------------------------------------------------------------------
def test_prefetcher_yields_the_plain_batches_on_the_cpu() -> None:
    plain = nested_batches()
    assert_same(list(Prefetcher(plain, "cpu")), plain)
    data = batched()
    assert_same(list(Prefetcher(data, torch.device("cpu"))), list(data))


def test_prefetcher_passes_length_epoch_state_and_batch_size_through() -> None:
    data = batched()
    prefetcher = Prefetcher(data, "cpu")
    assert len(prefetcher) == len(data) == 5 and prefetcher.batch_size == 8
    prefetcher.set_epoch(3)
    assert data.epoch == 3
    assert_same(list(prefetcher), list(_at_epoch(batched(), 3)))
    iterator = iter(prefetcher)
    next(iterator), next(iterator)
    state = prefetcher.state_dict()
    assert state == data.state_dict() and state["position"] == 2
    rest = list(iterator)
    resumed = Prefetcher(batched(), "cpu")
    resumed.load_state_dict(state)
    assert_same(list(resumed), rest)
    sharded = prefetcher.shard(1, 2)
    assert isinstance(sharded, Prefetcher) and sharded.shard_sizes() == data.shard(1, 2).shard_sizes()
    assert_same(list(sharded), list(data.shard(1, 2)))
    bare = Prefetcher([(torch.ones(1), torch.ones(1))], "cpu")  # a list has none of them
    assert not any(hasattr(bare, name) for name in
                   ("set_epoch", "state_dict", "load_state_dict", "batch_size", "shard",
                    "shard_sizes"))
    with pytest.raises(TypeError):
        len(Prefetcher(iter([]), "cpu"))


def _at_epoch(data: tl.data.ArrayDataset, epoch: int) -> tl.data.ArrayDataset:
    data.set_epoch(epoch)
    return data


def test_prefetcher_state_counts_only_the_batches_handed_out() -> None:
    """The look-ahead path (the CUDA one, with the copy replaced by nothing) fetches one batch
    early; its state_dict must still be the position of the batches the consumer has."""
    data = batched()
    prefetcher = Prefetcher(data, "cpu")
    seen = []
    for k, batch in enumerate(prefetcher._ahead(lambda batch: lambda: batch), start=1):
        seen.append(batch)
        assert prefetcher.state_dict()["position"] == k
        assert data.position == min(k + 1, len(data))  # the data itself is one ahead
    assert_same(seen, list(batched()))
    assert prefetcher.state_dict() == data.state_dict()


def test_a_fit_over_a_prefetcher_equals_one_over_the_plain_data() -> None:
    def train(wrap: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        data = batched()
        loop = tl.TrainingLoop(Prefetcher(data, "cpu") if wrap else data, batched(seed=None),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               loss=nn.functional.cross_entropy, metrics=["accuracy"],
                               include_default_callbacks=False)
        loop.fit(model, epochs=2, device="cpu")
        return [p.detach() for p in model.parameters()]

    for a, b in zip(train(False), train(True)):
        assert torch.equal(a, b)


# -- benchmarks/gpu.py -----------------------------------------------------------------------------
def test_gpu_benchmark_smoke_run_prints_its_table() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "| row | setting | value | unit | note |" in lines
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]
    names = {line.split(" | ")[0].lstrip("| ") for line in rows}
    assert {"W1 fit", "W1 hand", "W3 fit", "W3 hand", "GPT", "CIFAR data",
            "airbench"} <= names, lines
    for line in rows:
        assert "failed" not in line, line
    if not torch.cuda.is_available():
        assert any("skipped: no CUDA" in line for line in rows)



def test_anchor_benchmark_smoke_runs_our_halves(tmp_path: Path) -> None:
    """benchmarks/anchors.py at tiny sizes on the CPU: our airbench and nanoGPT sides run; the
    anchors' own scripts are not in the repository, so their sides say they were skipped."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "anchors.py"), "--smoke",
                           "--anchors", str(tmp_path / "absent"), "--only", "airbench",
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| airbench")]
    assert [row.split(" | ")[1] for row in rows] == ["theirs", "ours", "ours-nchw"], rows
    assert "skipped" in rows[0] and all("s/epoch" in row for row in rows[1:]), rows
    assert (tmp_path / "out" / "anchors.md").exists()

# -- CUDA only -------------------------------------------------------------------------------------
def small_fit_parts(n: int = 256, batch: int = 32) -> tuple[tl.data.ArrayDataset, tl.data.ArrayDataset]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 20, generator=g), torch.randint(0, 4, (n,), generator=g)
    data = tl.data.ArrayDataset({"x": x, "y": y}).to("cuda")
    return data.shuffle(0).batch(batch), data.batch(64)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))


@cuda
@needs_cuda
def test_sync_debug_raises_on_a_real_host_read() -> None:
    x = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError) as info, sync_debug(True, x.device):
        x.sum().item()
    with pytest.raises(HostSyncError, match="at BATCH_END"):
        raise_if_host_sync(info.value, "BATCH_END", "a test")
    with sync_debug(True, x.device):
        with sync_allowed():
            assert x.sum().item() == 4.0  # a read on purpose
        assert torch.cuda.get_sync_debug_mode() == 2  # guarded again
    assert x.sum().item() == 4.0  # the mode is off again


@cuda
@needs_cuda
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_sync_debug_fit_with_every_built_in_callback_passes(tmp_path: Path, precision: str) -> None:
    train, validation = small_fit_parts()
    model = mlp()
    schedule = tl.make_schedule([
        tl.ScheduleSegment(shape=tl.shapes.linear, start_rate=0.0, end_rate=0.1, step_count=3),
        tl.ScheduleSegment(shape=tl.shapes.linear, end_rate=0.0)])
    callbacks = [tl.CSVLogger(tmp_path / "log.csv"), tl.TensorBoardLogger(tmp_path / "tb"),
                 tl.ProgressPlot(tmp_path / "curves.png"),
                 tl.Checkpoint(tmp_path / "checkpoints", every_n_steps=3),
                 tl.LearningRateScheduler(schedule), tl.EarlyStopping(patience=5),
                 tl.EMA(decay=0.9), tl.GradientMonitor(per_layer=True),
                 tl.Profiler(tmp_path / "profile", wait=1, warmup=1, active=2)]
    # The trackers (MLflow, W&B, Optuna, notebook) need their services; they add no per-batch
    # device work of their own beyond what CSVLogger reads at the refresh rate.
    loop = tl.TrainingLoop(train, validation, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=nn.functional.cross_entropy, metrics=["accuracy", "mcc"],
                           callbacks=callbacks)  # the progress printer is a default callback
    history = loop.fit(model, epochs=2, device="cuda", precision=precision,
                       accumulate_grad_batches=2, clip_grad_norm=1.0,
                       sync_debug=True)  # type: ignore[call-arg]
    assert len(history.epochs) == 2 and (tmp_path / "checkpoints" / "last").exists()
    assert torch.cuda.get_sync_debug_mode() == 0  # off again after the fit


@cuda
@needs_cuda
def test_reduce_overhead_equals_eager() -> None:
    def train(compile: Any) -> list[torch.Tensor]:
        train, validation = small_fit_parts()
        model = mlp().cuda()
        schedule = tl.make_schedule([tl.ScheduleSegment(shape=tl.shapes.linear, start_rate=0.1,
                                                        end_rate=0.01)])
        loop = tl.TrainingLoop(train, validation,
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                               loss=nn.functional.cross_entropy, metrics=["accuracy"],
                               callbacks=[tl.LearningRateScheduler(schedule)],
                               include_default_callbacks=False)
        loop.fit(model, epochs=2, device="cuda", compile=compile)
        return [p.detach().clone() for p in model.parameters()]

    for eager, graphed in zip(train(False), train({"mode": "reduce-overhead"})):
        torch.testing.assert_close(graphed, eager, rtol=1e-3, atol=1e-4)


@cuda
@needs_cuda
def test_fp16_scaler_skips_an_inf_step() -> None:
    train, _ = small_fit_parts()
    model = mlp().cuda()
    poison = {"on": False}
    model[0].weight.register_hook(lambda g: g * float("inf") if poison["on"] else g)
    record: dict[str, Any] = {}

    def callback(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if not loop.is_training:
            return
        if event is tl.Event.BATCH_START:
            poison["on"] = loop.batch_index == 3
            record[loop.batch_index] = [p.detach().clone() for p in model.parameters()]
            record[f"scale{loop.batch_index}"] = loop._step.scaler.get_scale()
        elif event is tl.Event.BATCH_END and loop.batch_index in (2, 3):
            after = [p.detach().clone() for p in model.parameters()]
            record[f"changed{loop.batch_index}"] = any(
                not torch.equal(a, b) for a, b in zip(after, record[loop.batch_index]))

    loop = tl.TrainingLoop(train, None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=nn.functional.cross_entropy, callbacks=[callback],
                           include_default_callbacks=False)
    loop.fit(model, epochs=1, device="cuda", precision="16-mixed")
    assert record["changed2"] and not record["changed3"]  # the inf step changed nothing
    assert record["scale4"] == record["scale3"] / 2  # and the scale was halved
    assert all(torch.isfinite(p).all() for p in model.parameters())


@cuda
@needs_cuda
def test_prefetcher_batches_equal_the_plain_ones_on_the_gpu() -> None:
    plain = nested_batches()
    fetched = list(Prefetcher(plain, "cuda"))
    assert all(t.is_cuda for t in [fetched[0][0]["a"], fetched[0][0]["b"][0], fetched[0][1]])
    assert_same(fetched, plain)
    data = batched(n=4000, batch=256)
    prefetcher = Prefetcher(data, "cuda")
    assert_same([(x * 2, y) for x, y in prefetcher], [(x * 2, y) for x, y in batched(4000, 256)])
    assert prefetcher.state_dict() == data.state_dict()
