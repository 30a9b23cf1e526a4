"""File helpers shared across the package: content digests and atomic replacement.

Nothing here knows of training, data sets or checkpoints; modules that write or verify files
import these instead of keeping their own copies.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write", "file_digest", "fsync_path", "sha256_file"]

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path`` with any :mod:`hashlib` algorithm, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``."""
    return file_digest(path, "sha256")


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush the file or directory at ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` for the caller to write; it replaces ``path`` on success.

    On leaving the block normally the temporary file is fsynced and renamed onto ``path`` (and,
    on POSIX, the folder fsynced), so readers see the old file or the whole new one, never a
    part. If the block raises, the temporary file is removed and ``path`` is left untouched.

    >>> with atomic_write(folder / "notes.txt") as tmp:  # doctest: +SKIP
    ...     tmp.write_text("complete")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # a rename is durable only once its folder is flushed
        fsync_path(path.parent)
