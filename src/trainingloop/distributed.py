"""Distributed runtime: process-group setup from torchrun's environment, model wrapping, data
sharding, metric reduction and rank-0 I/O helpers.

Knows nothing of training loops. Without a process group every helper answers as a single
process would, so the loop calls them unconditionally. Under ``torchrun`` (``WORLD_SIZE`` >
1) :func:`setup` creates the group (gloo on CPU, nccl on CUDA) unless one exists already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Session",
    "gather_objects",
    "is_initialized",
    "is_main_process",
    "rank",
    "reduce_metrics",
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


def shard(data: Any) -> Any:
    """This rank's share of ``data``: ArrayDatasets shard themselves, DataLoaders get a
    DistributedSampler; other iterables are used as they are (each rank sees all of them)."""
    if world_size() == 1:
        return data
    if hasattr(data, "shard") and hasattr(data, "batch_size"):
        return data.shard(rank(), world_size())
    if isinstance(data, torch.utils.data.DataLoader) and not isinstance(
            data.sampler, torch.utils.data.distributed.DistributedSampler) \
            and data.batch_sampler is not None:
        shuffle = isinstance(data.sampler, torch.utils.data.RandomSampler)
        sampler = torch.utils.data.distributed.DistributedSampler(
            data.dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle)
        return torch.utils.data.DataLoader(
            data.dataset, batch_size=data.batch_size, sampler=sampler,
            num_workers=data.num_workers, collate_fn=data.collate_fn,
            pin_memory=data.pin_memory, drop_last=data.drop_last)
    return data


def reduce_metrics(metrics: list[Any]) -> None:
    """Sum every built-in metric's running state over all ranks, in place (one all-reduce)."""
    if world_size() == 1:
        return
    summable = [m for m in metrics if getattr(m, "sums", None) is not None]
    if not summable:
        return
    flat = torch.cat([m.sums.reshape(-1).to(torch.float64) for m in summable] + [
        torch.tensor([float(m.count) for m in summable], dtype=torch.float64,
                     device=summable[0].sums.device)])
    dist.all_reduce(flat)
    offset = 0
    for m in summable:
        n = m.sums.numel()
        m.sums.copy_(flat[offset:offset + n].view_as(m.sums))
        offset += n
    for m, count in zip(summable, flat[offset:].tolist()):
        m.count = count


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
    return get_model_state_dict(model, options=_full_options())


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The whole optimizer state on rank 0 (a collective: call it on every rank)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model.reshard()  # type: ignore[operator] # parameters must be the optimizer's DTensors
    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Shard full weights (present on every rank) into an FSDP2 model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Shard a full optimizer state (present on every rank) into the optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))
