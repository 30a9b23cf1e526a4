"""Checkpoint storage: atomic writes, verified reads, no code execution on load.

A checkpoint is a folder ``<dir>/epoch=EEEE-step=SSSSSSS[-end]/`` holding

- ``model.safetensors``: the model's weights (safetensors, shared tensors handled);
- ``state.pt``: everything else (optimizer, scaler, loop position, data order, RNG states,
  History, callback states) as tensors and plain Python values, read back with
  ``torch.load(weights_only=True)``, which refuses to run code from the file;
- ``manifest.json``: the size and sha256 of both files, written last.

The folder is assembled under a hidden temporary name, every file fsynced, and renamed into
place (file digests, fsyncs and the manifest's atomic write are :mod:`trainingloop._files`'s);
``<dir>/last`` (and ``<dir>/best``) are symbolic links replaced atomically. A crash at
any moment leaves the previous checkpoint intact. This module knows nothing of the loop.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainingloop import _files

__all__ = [
    "CheckpointError",
    "data_generators",
    "find_latest",
    "load",
    "restore_rng",
    "rng_state",
    "save",
    "unwrap",
    "verify",
]

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
STATE = "state.pt"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or does not fit the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# -- RNG states -------------------------------------------------------------------------------
def data_generators(*sources: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects that iterating ``sources`` draws from.

    A ``DataLoader(..., generator=g)`` shuffles with ``g`` (its sampler holds it too) and
    draws its workers' base seed from it; samplers and batch samplers may own one. Looked up
    through the attributes ``generator``, ``sampler`` and ``batch_sampler``, without repeats.
    """
    found: dict[int, torch.Generator] = {}

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > 3:
            return
        if isinstance(obj, torch.Generator):
            found.setdefault(id(obj), obj)
            return
        for name in ("generator", "sampler", "batch_sampler"):
            visit(getattr(obj, name, None), depth + 1)

    for source in sources:
        visit(source, 0)
    return list(found.values())


def rng_state(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, and those of ``generators`` (the
    data's own, from :func:`data_generators`), as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["generators"] = [g.get_state() for g in generators]
    return state


def restore_rng(state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Put back what :func:`rng_state` captured, ``generators`` in the same order."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        warnings.warn(f"the checkpoint holds {len(saved)} data generator state(s) but the data "
                      f"has {len(generators)} torch.Generator(s): their order is not restored",
                      RuntimeWarning, stacklevel=3)
        return
    for generator, generator_state in zip(generators, saved):
        generator.set_state(generator_state)


# -- writing ----------------------------------------------------------------------------------
def link_atomically(link: Path, target_name: str) -> None:
    """Point the symbolic link ``link`` at ``target_name`` (a sibling), replacing it atomically."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def save(directory: Path, name: str, model: nn.Module, state: dict[str, Any],
         info: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder ``directory/name`` atomically and return its path.

    ``weights`` replaces the model's own state dict (FSDP's gathered full weights)."""
    from safetensors.torch import save_file, save_model

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".tmp-{name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        if weights is None:
            save_model(unwrap(model), str(tmp / WEIGHTS))
        else:  # clones: safetensors refuses tensors that share storage
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()},
                      str(tmp / WEIGHTS))
        torch.save(state, tmp / STATE)
        files = {}
        for file in (WEIGHTS, STATE):
            _files.fsync_path(tmp / file)
            files[file] = {"size": (tmp / file).stat().st_size,
                           "sha256": _files.sha256_file(tmp / file)}
        manifest = {"format": FORMAT, "created_ns": time.time_ns(), "files": files, **info}
        with _files.atomic_write(tmp / MANIFEST) as manifest_tmp:  # also flushes the folder
            manifest_tmp.write_text(json.dumps(manifest, indent=1))
        if final.exists():  # the same position saved again: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _files.fsync_path(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# -- reading ----------------------------------------------------------------------------------
def verify(path: Path) -> dict[str, Any]:
    """The manifest of checkpoint ``path`` after checking every file's size and sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path} is missing or corrupt: {error}") from None
    for file, expected in manifest.get("files", {}).items():
        target = path / file
        if not target.exists():
            raise CheckpointError(f"{target} is missing")
        size = target.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(f"{target} is truncated or corrupt: {size} bytes, "
                                  f"expected {expected['size']}")
        if _files.sha256_file(target) != expected["sha256"]:
            raise CheckpointError(f"{target} is corrupt: its sha256 does not match the manifest")
    return manifest


def entries(directory: Path) -> list[Path]:
    """Checkpoint folders in ``directory`` (complete or not), newest first by their manifest."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            try:
                created = json.loads((child / MANIFEST).read_text())["created_ns"]
            except (OSError, ValueError, KeyError):
                created = -1  # unreadable: oldest
            found.append((created, child.name, child))
    return [p for _, _, p in sorted(found, reverse=True)]


def find_latest(directory: Path) -> Path:
    """The newest intact checkpoint in ``directory``; damaged newer ones are skipped with a
    warning."""
    candidates = entries(directory)
    last = directory / "last"
    if last.is_symlink():
        target = (directory / os.readlink(last)).resolve()
        candidates = sorted(candidates, key=lambda p: p.resolve() != target)
    for candidate in candidates:
        try:
            verify(candidate)
            return candidate
        except CheckpointError as error:
            warnings.warn(f"skipping damaged checkpoint: {error}", RuntimeWarning, stacklevel=3)
    raise CheckpointError(f"no intact checkpoint in {directory}")


def load(path: Path, model: nn.Module) -> dict[str, Any]:
    """Verify ``path``, load its weights into ``model`` and return its state dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    from trainingloop import distributed

    path = Path(path)
    verify(path)
    if distributed.is_sharded(unwrap(model)):
        from safetensors.torch import load_file

        weights = load_file(str(path / WEIGHTS))
        expected = set(unwrap(model).state_dict())
        if set(weights) != expected:
            raise CheckpointError(
                f"{path / WEIGHTS} is from another architecture: missing keys "
                f"{sorted(expected - set(weights))}, unexpected keys "
                f"{sorted(set(weights) - expected)}")
        distributed.load_full_model_state(unwrap(model), weights)
        return _load_state(path)
    try:
        missing, unexpected = load_model(unwrap(model), str(path / WEIGHTS), strict=False)
    except (RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"{path / WEIGHTS} does not fit the model: {error}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path / WEIGHTS} is from another architecture: missing keys {sorted(missing)}, "
            f"unexpected keys {sorted(unexpected)}")
    return _load_state(path)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as error:  # an unpickling refusal or a corrupt file
        raise CheckpointError(f"{path / STATE} cannot be loaded safely: {error}") from None
