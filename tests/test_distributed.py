"""Data-parallel training with 2 CPU processes over gloo, launched by torch.distributed.run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import trainingloop as tl
from trainingloop import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
DATALOADER_WORKER = Path(__file__).with_name("dataloader_worker.py")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


def torchrun(directory: Path, *args: str, expect_ok: bool = True, worker: Path = WORKER,
             env: dict[str, str] | None = None) -> None:
    # --standalone: a local rendezvous on a port the system picks (no race for a free port).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", str(worker), *args, str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, env={**_env(), **(env or {})},
                          timeout=240)
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


def _syncs_per_update(directory: Path) -> list[float]:
    counts = [json.loads((directory / f"syncs-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(c["updates"] == 3 * 8 for c in counts)  # 3 epochs of 32 micro-batches / 4
    return [c["collectives"] / c["updates"] for c in counts]


def test_ddp_accumulation_skips_the_sync_until_the_update(tmp_path: Path, single: Path) -> None:
    # 2 ranks x batch 2 x 4 micro-batches train like one process with batch 16, all-reducing
    # once per update (one bucket: a DDP comm hook counts them).
    torchrun(tmp_path, "--batch", "2", "--accumulate", "4", "--count-syncs",
             env={"NO_CHECKPOINT": "1"})
    _close(tmp_path, single)
    assert _syncs_per_update(tmp_path) == [1.0, 1.0]


def test_fsdp2_accumulation_reduce_scatters_once_per_update(tmp_path: Path,
                                                            single: Path) -> None:
    torchrun(tmp_path, "--batch", "2", "--accumulate", "4", "--strategy", "fsdp",
             "--count-syncs", env={"NO_CHECKPOINT": "1"})
    _close(tmp_path, single)
    assert _syncs_per_update(tmp_path) == [1.0, 1.0]


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


# -- DataLoaders and uneven shards ---------------------------------------------------------------
def test_dataloader_reshuffles_every_epoch_on_disjoint_shards(tmp_path: Path) -> None:
    # With DistributedSampler.set_epoch made a no-op (the worker's --break-set-epoch), every
    # epoch repeats epoch 1's order on both ranks and this test fails (checked by hand).
    torchrun(tmp_path, "order", worker=DATALOADER_WORKER)
    orders = [json.loads((tmp_path / f"order-rank{r}.json").read_text()) for r in (0, 1)]
    for rank_epochs in orders:
        assert len(rank_epochs) == 3 and all(len(epoch) == 2 for epoch in rank_epochs)
        flat = [[i for batch in epoch for i in batch] for epoch in rank_epochs]
        assert len({tuple(f) for f in flat}) == 3, f"an order repeats across epochs: {flat}"
    for epoch in range(3):
        shards = [sorted(i for batch in orders[r][epoch] for i in batch) for r in (0, 1)]
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(16))


def test_uneven_shards_give_exact_metrics_under_torchrun(tmp_path: Path) -> None:
    # 13 training and 5 or 7 validation examples on 2 ranks (the samplers pad one example; a
    # validation batch of rank 1 holds padding only), a frozen model, a DataLoader and an
    # ArrayDataset; a torchmetrics metric, a CSVLogger and the progress printer on rank 0
    # (this hung when loggers computed a torchmetrics value, a collective, on rank 0 alone).
    torchrun(tmp_path, "metrics", worker=DATALOADER_WORKER)
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["kind"], r["n"]) for r in results] == [
        ("dataloader", 5), ("dataloader", 7), ("arraydataset", 5), ("arraydataset", 7)]
    for result in results:
        where = f"{result['kind']} with {result['n']} validation examples"
        for epoch in result["history"]:
            for phase in ("train", "validation"):
                for name, value in result[phase].items():
                    assert epoch[f"{phase}/{name}"] == pytest.approx(value, abs=1e-6), \
                        f"{where}: {phase}/{name} of epoch {epoch['epoch']}"
        # rank 0's CSV rows: running values of its own share, torchmetrics' computed locally
        lines = (tmp_path / f"{result['kind']}-{result['n']}.csv").read_text().splitlines()
        header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
        assert header == ["epoch", "batch", "phase", "loss", "accuracy", "mcc",
                          "multiclass_accuracy", "multiclass_matthews_corr_coef"]
        assert len(rows) == 2 * (2 + 2)  # per epoch: 2 training, 2 validation batches
        last = dict(zip(header[3:], map(float, rows[-1][3:])))
        for name, value in result["validation_rank0"].items():
            assert last[name] == pytest.approx(value, abs=1e-6), f"{where}: CSV {name}"


@pytest.fixture
def two_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of 2, as ``shard`` and ``padding`` see it (no process group needed)."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)


def _seed_worker(worker_id: int) -> None:
    torch.manual_seed(worker_id)


def _collate(examples: list) -> tuple:
    return tuple(torch.stack(column) for column in zip(*examples))


@pytest.mark.usefixtures("two_ranks")
def test_shard_keeps_every_dataloader_setting() -> None:
    data = TensorDataset(torch.arange(10.0), torch.arange(10))
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(data, batch_size=3, shuffle=True, num_workers=1, collate_fn=_collate,
                        drop_last=True, timeout=7.0, worker_init_fn=_seed_worker,
                        multiprocessing_context="spawn", generator=generator, prefetch_factor=3,
                        persistent_workers=True, in_order=False)
    sharded = distributed.shard(loader)
    assert type(sharded) is DataLoader and sharded is not loader
    for name in ("batch_size", "num_workers", "collate_fn", "drop_last", "timeout",
                 "worker_init_fn", "generator", "prefetch_factor", "persistent_workers",
                 "pin_memory", "pin_memory_device", "in_order", "multiprocessing_context"):
        assert getattr(sharded, name) == getattr(loader, name), name
    sampler = sharded.sampler
    assert isinstance(sampler, DistributedSampler) and sampler.shuffle
    assert (sampler.rank, sampler.num_replicas, sampler.seed) == (1, 2, 5)
    # num_workers=0: no prefetch_factor may be passed (DataLoader refuses one)
    plain = distributed.shard(DataLoader(data, batch_size=4))
    assert plain.prefetch_factor is None and not plain.sampler.shuffle
    assert [b[0].tolist() for b in plain] == [[1.0, 3.0, 5.0, 7.0], [9.0]]
    # a user's own DistributedSampler, an iterable dataset: left as they are
    own = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, 2, 0))
    assert distributed.shard(own) is own
    stream = DataLoader(_Stream(), batch_size=2)
    assert distributed.shard(stream) is stream
    batched = DataLoader(data, batch_sampler=[[0, 1], [2, 3]])  # a custom batch sampler
    assert distributed.shard(batched) is batched


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self) -> Iterator[int]:
        return iter(range(4))


@pytest.mark.usefixtures("two_ranks")
def test_shard_wraps_other_samplers_and_set_epoch_reaches_them() -> None:
    data = TensorDataset(torch.arange(5.0), torch.arange(5))
    weighted = torch.utils.data.WeightedRandomSampler(
        [1.0] * 5, 5, generator=torch.Generator().manual_seed(0))
    sharded = distributed.shard(DataLoader(data, batch_size=2, sampler=weighted))
    assert isinstance(sharded.sampler, distributed.ShardedSampler)
    full = list(torch.utils.data.WeightedRandomSampler(
        [1.0] * 5, 5, generator=torch.Generator().manual_seed(0)))
    assert list(sharded.sampler) == (full + full[:1])[1::2]  # rank 1 of the padded order
    assert distributed.padding(sharded) == distributed.Padding(real=2, batch_size=2)
    drawn = torch.utils.data.RandomSampler(data, replacement=True, num_samples=9)
    assert isinstance(distributed.shard(DataLoader(data, sampler=drawn)).sampler,
                      distributed.ShardedSampler)  # 9 draws with replacement, not a permutation

    class Epochs(torch.utils.data.Sampler[int]):
        def __init__(self) -> None:
            self.epoch = -1

        def __len__(self) -> int:
            return 5

        def __iter__(self) -> Iterator[int]:
            return iter(range(5))

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

    inner = Epochs()
    distributed.set_epoch(distributed.shard(DataLoader(data, sampler=inner)), 4)
    assert inner.epoch == 4
    loader = distributed.shard(DataLoader(data, batch_size=2, shuffle=True))
    distributed.set_epoch(loader, 3)
    assert loader.sampler.epoch == 3


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 2, 5, 7, 9])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_padding_marks_each_example_real_exactly_once(world: int, length: int,
                                                      size: int) -> None:
    """The real rows of every rank's batches, DistributedSampler's and ArrayDataset's,
    count each example once (independently of the padding arithmetic: by the values)."""
    data = TensorDataset(torch.arange(length), torch.arange(length))
    array = tl.data.ArrayDataset({"x": torch.arange(length), "y": torch.arange(length)})
    for kind in ("dataloader", "arraydataset"):
        counted: list[int] = []
        batches = set()
        for rank in range(world):
            if kind == "dataloader":
                shard: object = DataLoader(data, batch_size=size, sampler=DistributedSampler(
                    data, world, rank, shuffle=True, seed=1))
            else:
                shard = array.shuffle(seed=1).batch(size).shard(rank, world)
            pad = distributed.padding(shard)
            batches.add(len(shard))  # type: ignore[arg-type]
            for index, (x, _) in enumerate(shard):  # type: ignore[attr-defined]
                rows = None if pad is None else pad.rows(index)
                counted += x[:rows].tolist()
        assert len(batches) == 1, "every rank runs the same number of batches"
        assert sorted(counted) == list(range(length)), kind
        if length % world == 0:
            assert all(distributed.padding(DataLoader(data, batch_size=size,
                                                      sampler=DistributedSampler(
                                                          data, world, r))) is None
                       for r in range(world))
    assert math.ceil(length / world) == len(DistributedSampler(data, world, 0))
