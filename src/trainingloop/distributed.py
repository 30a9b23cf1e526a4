"""Distributed runtime: process-group setup from torchrun's environment, model wrapping, data
sharding, metric reduction and rank-0 I/O helpers.

Knows nothing of training loops. Without a process group every helper answers as a single
process would, so the loop calls them unconditionally. Under ``torchrun`` (``WORLD_SIZE`` >
1) :func:`setup` creates the group (gloo on CPU, nccl on CUDA) unless one exists already.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "Padding",
    "Session",
    "ShardedSampler",
    "gather_objects",
    "is_initialized",
    "is_main_process",
    "padding",
    "rank",
    "reduce_metrics",
    "set_epoch",
    "setup",
    "shard",
    "world_size",
    "wrap",
]

STRATEGIES = ("ddp", "fsdp", "none")


def is_initialized() -> bool:
    """Whether a process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that prints, logs and saves.

    Without a process group (before or after a fit under torchrun) the launcher's ``RANK``
    decides when its ``WORLD_SIZE`` is above 1, so code after ``fit`` saves from one process.
    """
    if is_initialized():
        return dist.get_rank() == 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return os.environ.get("RANK", "0") == "0"
    return True


@dataclass
class Session:
    """What :func:`setup` did: the device this rank trains on and whether it made the group."""

    device: torch.device | None
    created_group: bool

    def close(self, failed: bool = False) -> None:
        """Tear the process group down if :func:`setup` created it (after a barrier, unless
        this rank failed: the others may never reach it)."""
        if self.created_group and is_initialized():
            if not failed:
                dist.barrier()
            dist.destroy_process_group()


def setup(device: torch.device | None = None) -> Session:
    """Join (or create, under torchrun) the process group; pick ``cuda:LOCAL_RANK`` on GPUs."""
    wanted = int(os.environ.get("WORLD_SIZE", "1")) > 1
    created = False
    if wanted and not is_initialized():
        use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    if is_initialized() and torch.cuda.is_available() and (device is None or
                                                           device.type == "cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return Session(device, created)


def wrap(model: nn.Module, optimizer: Any, strategy: str, device: torch.device) -> nn.Module:
    """DDP (default), FSDP2 ``fully_shard`` or nothing; the optimizer follows sharded params."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if world_size() == 1 or strategy == "none":
        return model
    if strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    before = dict(model.named_parameters())
    fully_shard(model)
    after = dict(model.named_parameters())
    swap = {id(before[name]): after[name] for name in before}
    for group in getattr(optimizer, "param_groups", []):
        group["params"] = [swap.get(id(p), p) for p in group["params"]]
    return model


class ShardedSampler(torch.utils.data.Sampler[int]):
    """Rank ``rank``'s share of another sampler's order: the order is drawn in full, padded by
    wrapping around to a multiple of ``world_size`` (as DistributedSampler pads) and dealt out
    round-robin.

    :func:`shard` uses it for a DataLoader whose sampler is neither random nor sequential (a
    ``WeightedRandomSampler``, a user's own). Every rank must draw the same order from it: a
    sampler with its own seeded generator, one driven by ``set_epoch``, or one drawing from the
    global RNG when every rank seeds it alike. ``set_epoch`` is passed on.
    """

    def __init__(self, sampler: Any, rank: int, world_size: int) -> None:
        self.sampler, self.rank, self.num_replicas = sampler, rank, world_size
        self.total = len(sampler)

    def __len__(self) -> int:
        return math.ceil(self.total / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        order = list(self.sampler)
        padded = len(self) * self.num_replicas
        order += (order * math.ceil(padded / max(len(order), 1)))[:padded - len(order)]
        return iter(order[self.rank:padded:self.num_replicas])

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the wrapped sampler, if it takes one."""
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)


def shard(data: Any) -> Any:
    """This rank's share of ``data`` (the data itself without a process group).

    - An ArrayDataset shards itself (:meth:`~trainingloop.data.ArrayDataset.shard`).
    - A DataLoader over a map-style dataset is rebuilt with every setting the user gave it
      (workers, ``generator``, ``worker_init_fn``, ``collate_fn``, ...) and a
      ``DistributedSampler`` in place of its random or sequential sampler (shuffling iff it
      was random); any other sampler (with replacement too) is wrapped in
      :class:`ShardedSampler`. A DataLoader that
      already has a DistributedSampler, a custom ``batch_sampler`` or an iterable dataset is
      used as it is: it is taken to shard itself.
    - Any other iterable is used as it is: every rank sees all of it.

    Both shard kinds pad each epoch to equal shard sizes (every rank runs the same number of
    batches, as DDP and FSDP need); :func:`padding` tells the loop which rows to leave out of
    the metrics. Gradients do include the padded duplicates, as with a plain DistributedSampler.
    """
    if world_size() == 1:
        return data
    if hasattr(data, "shard") and hasattr(data, "batch_size"):
        return data.shard(rank(), world_size())
    loader = torch.utils.data.DataLoader
    if not isinstance(data, loader) or isinstance(data.dataset, torch.utils.data.IterableDataset) \
            or data.batch_size is None or isinstance(data.sampler, DistributedSampler):
        return data
    if type(data).__init__ is not loader.__init__:
        raise TypeError(
            f"cannot shard a {type(data).__name__} (a DataLoader subclass with its own __init__) "
            "for several processes: give it a torch.utils.data.DistributedSampler yourself")
    if _plain_sampler(data.sampler):
        sampler: Any = DistributedSampler(
            data.dataset, num_replicas=world_size(), rank=rank(),
            shuffle=isinstance(data.sampler, torch.utils.data.RandomSampler),
            seed=_shared_seed(data.sampler))
    else:
        sampler = ShardedSampler(data.sampler, rank(), world_size())
    return type(data)(data.dataset, batch_size=data.batch_size, sampler=sampler,
                      drop_last=data.drop_last, **loader_settings(data))


def loader_settings(data: torch.utils.data.DataLoader[Any]) -> dict[str, Any]:
    """Every setting of ``data`` that ``DataLoader(...)`` takes (workers, ``generator``,
    ``worker_init_fn``, ``collate_fn``, ...), except its dataset and how it samples and
    batches: what a loader rebuilt over the same data keeps."""
    loader = torch.utils.data.DataLoader
    return {name: getattr(data, name) for name in inspect.signature(loader.__init__).parameters
            if name not in _REPLACED and hasattr(data, name)}


def _plain_sampler(sampler: Any) -> bool:
    """Whether a DistributedSampler visits what ``sampler`` does: a SequentialSampler, or a
    RandomSampler of one permutation (not one drawing with replacement or a custom count)."""
    if type(sampler) is torch.utils.data.SequentialSampler:
        return True
    return type(sampler) is torch.utils.data.RandomSampler and not sampler.replacement \
        and sampler._num_samples is None


# Settings of a DataLoader that shard() sets itself rather than copying.
_REPLACED = {"self", "dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"}


def _shared_seed(sampler: Any) -> int:
    """DistributedSampler's seed: the seed of rank 0's RandomSampler generator when the user
    gave one (a user's seed still chooses the orders), else DistributedSampler's default 0.
    Rank 0's is broadcast so that the ranks agree (and their shards partition the data)."""
    generator = getattr(sampler, "generator", None)
    if not isinstance(generator, torch.Generator):
        return 0
    seed = [int(generator.initial_seed())]
    if is_initialized():
        dist.broadcast_object_list(seed, src=0)
    return int(seed[0])


def set_epoch(data: Any, epoch: int) -> None:
    """Call ``set_epoch(epoch)`` on ``data``, or else on its sampler and batch sampler (as a
    DataLoader's DistributedSampler needs, to reshuffle every epoch)."""
    if callable(getattr(data, "set_epoch", None)):
        data.set_epoch(epoch)
        return
    batch_sampler = getattr(data, "batch_sampler", None)
    seen: set[int] = set()
    for part in (getattr(data, "sampler", None), batch_sampler,
                 getattr(batch_sampler, "sampler", None)):
        if part is not None and id(part) not in seen and callable(getattr(part, "set_epoch", None)):
            seen.add(id(part))
            part.set_epoch(epoch)


@dataclass(frozen=True)
class Padding:
    """Where a rank's shard ends: its first ``real`` examples are real, the rest padding.

    Padding sits at the tail of every rank's sequence (padded position ``p >= len`` goes to rank
    ``p % world``), so only the last one or two batches of a rank hold any.
    """

    real: int
    batch_size: int

    def rows(self, batch_index: int) -> int | None:
        """Real leading rows of batch ``batch_index``; None when the whole batch is real."""
        start = batch_index * self.batch_size
        if start + self.batch_size <= self.real:
            return None
        return max(self.real - start, 0)


def _real_share(length: int, rank: int, world: int) -> int:
    """Real examples among rank ``rank``'s ``ceil(length / world)``, padded round-robin."""
    return max(0, math.ceil((length - rank) / world))


def padding(data: Any) -> Padding | None:
    """The padding of this rank's shard of ``data`` (None: no padding, every row counts).

    Knows the ArrayDataset's shards (``shard_sizes()``), DistributedSampler (not a subclass,
    which may order differently) and :class:`ShardedSampler` inside a DataLoader.
    """
    shard_sizes = getattr(data, "shard_sizes", None)
    size = getattr(data, "batch_size", None)
    if callable(shard_sizes) and not isinstance(data, torch.utils.data.DataLoader):
        real, total = shard_sizes()
        return None if real >= total else Padding(real, size or 1)
    if not isinstance(data, torch.utils.data.DataLoader) or size is None:
        return None
    sampler = data.sampler
    if type(sampler) is DistributedSampler and not sampler.drop_last:
        real = _real_share(len(sampler.dataset), sampler.rank,  # type: ignore[arg-type]
                           sampler.num_replicas)
    elif isinstance(sampler, ShardedSampler):
        real = _real_share(sampler.total, sampler.rank, sampler.num_replicas)
    else:
        return None
    return None if real >= len(sampler) else Padding(real, size)


def _collective_device() -> torch.device:
    """Where this backend's collectives take their tensors (CUDA for nccl)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_metrics(metrics: list[Any]) -> None:
    """Make every metric's running state global, in place, on every rank (a collective).

    Metrics with additive ``sums`` and ``count`` are summed over ranks in one all-reduce (a
    rank that saw no example of a metric joins with zeros); a metric with ``synchronize()`` (the
    torchmetrics adapter) gathers its states. Called once per phase end by every rank.
    """
    if world_size() == 1:
        return
    device = _collective_device()
    # Sizes first: a rank whose shard held only padding never allocated its sums.
    sizes = torch.tensor([0 if getattr(m, "sums", None) is None else m.sums.numel()
                          for m in metrics], dtype=torch.int64, device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX)
    summable = [(m, size) for m, size in zip(metrics, sizes.tolist()) if size]
    if summable:
        flat = torch.cat([(m.sums.reshape(-1).to(device, torch.float64) if m.sums is not None
                           else torch.zeros(size, dtype=torch.float64, device=device))
                          for m, size in summable] +
                         [torch.tensor([float(m.count) for m, _ in summable],
                                       dtype=torch.float64, device=device)])
        dist.all_reduce(flat)
        offset = 0
        for m, size in summable:
            part = flat[offset:offset + size]
            if m.sums is None:
                m.sums = part.clone()
            else:
                m.sums.copy_(part.view_as(m.sums))
            offset += size
        for (m, _), count in zip(summable, flat[offset:].tolist()):
            m.count = count
    for m in metrics:
        synchronize = getattr(m, "synchronize", None)
        if callable(synchronize):
            synchronize()


def gather_objects(value: Any) -> list[Any]:
    """``value`` from every rank, in rank order (a list of one without a process group)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


# -- FSDP2: full (unsharded) state dicts for checkpoints -------------------------------------------
def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2's ``fully_shard`` manages the model (its parameters are DTensors)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0 (a collective: call it on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model.reshard()  # type: ignore[operator] # the root stays unsharded after a forward
    # full_state_dict=True: plain tensors, not the general state-dict values the stub allows
    return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=_full_options()))


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The whole optimizer state on rank 0 (a collective: call it on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model.reshard()  # type: ignore[operator] # parameters must be the optimizer's DTensors
    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Shard full weights (present on every rank) into an FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, cast(dict[str, Any], state),
                         options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Shard a full optimizer state (present on every rank) into the optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
