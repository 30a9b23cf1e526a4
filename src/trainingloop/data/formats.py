"""Parsers of the upstream file formats: idx (MNIST), CIFAR-10 binary, pickled and archived
batches, and CoLA's TSV.

Each parser turns bytes or a file into NumPy arrays or rows and nothing more: it knows no
folders, downloads or tensors. A file that does not parse as its format is a
:class:`~trainingloop.data.download.DataFileError`, never half-read.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trainingloop.data.download import DataFileError

__all__ = ["CIFAR_RECORD", "cifar_archive", "cifar_pickle", "cifar_records", "cola_rows",
           "read_idx"]

#: bytes per CIFAR-10 binary record: one label byte, then 3×32×32 channel-first pixels
CIFAR_RECORD = 3073


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) idx file; a bad magic number or a short file is a DataFileError."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataFileError(f"{path} is corrupt or truncated: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFileError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims:]
    if len(body) != int(np.prod(shape)):
        raise DataFileError(f"{path} is truncated: header says {shape} "
                            f"({int(np.prod(shape))} bytes), body has {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def cifar_records(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×32×32×3 uint8) and labels (int64) of CIFAR-10 binary records ``raw``."""
    if len(raw) % CIFAR_RECORD:
        raise DataFileError(f"{name} is truncated: {len(raw)} bytes is not a whole number of "
                            f"{CIFAR_RECORD}-byte records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only the NumPy arrays, lists and dicts of CIFAR's python batches."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def cifar_pickle(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one CIFAR-10 python batch, unpickled with only arrays allowed."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataFileError(f"{name} is corrupt or truncated: {error}") from None
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def cifar_archive(archive: Path, stems: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The binary batches ``stems`` (e.g. ``data_batch_1``) read from ``cifar-10-binary.tar.gz``."""
    try:
        with tarfile.open(archive) as tar:
            parts = []
            for stem in stems:
                member = tar.extractfile(f"cifar-10-batches-bin/{stem}.bin")
                assert member is not None
                parts.append(cifar_records(member.read(), stem))
    except (tarfile.TarError, EOFError, KeyError, OSError) as error:
        raise DataFileError(f"{archive} is corrupt or truncated: {error}") from None
    return parts


def cola_rows(path: Path) -> list[tuple[int, str]]:
    """(label, sentence) of each row of a CoLA TSV (source, label, original mark, sentence)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 4 or fields[1] not in ("0", "1"):
            raise DataFileError(f"{path}:{number} is not a CoLA row (source, label, mark, text)")
        rows.append((int(fields[1]), fields[3]))
    return rows
