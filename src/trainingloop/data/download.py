"""Where data files live and how missing ones arrive: the root folder, downloads, checksums.

:func:`require_files` is what every reader calls: it returns the paths of the files a data set
needs in its folder, fetching missing ones from their canonical source when downloads are
allowed (``download=True`` and ``$TRAININGLOOP_NO_DOWNLOAD`` unset), and otherwise fails with
an error naming every missing file and the folder searched. A download goes to a temporary
file, is checked against its checksum, and only then renamed into place.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

from trainingloop._files import atomic_write, file_digest

__all__ = ["DataFileError", "check_checksum", "data_root", "download_file", "require_files"]

#: name -> (url or None, "algorithm:hexdigest" or None)
FileSources = dict[str, tuple[str | None, str | None]]


class DataFileError(ValueError):
    """A data file exists but is corrupt, truncated or not what it claims to be."""


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` if given, else ``$TRAININGLOOP_DATA``, else ``~/.cache/trainingloop``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("TRAININGLOOP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trainingloop"


def check_checksum(path: Path, checksum: str | None, name: str | None = None) -> None:
    """Raise :class:`DataFileError` unless ``path`` has ``checksum`` (``"sha256:<hex>"``).

    ``name`` is what the error calls the file (default: ``path``). No checksum, no check.
    """
    if checksum is None:
        return
    algorithm, expected = checksum.split(":")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataFileError(f"{name or path} is corrupt or truncated: {algorithm} {actual}, "
                            f"expected {expected}")


def download_file(url: str, destination: Path, checksum: str | None) -> None:
    """Fetch ``url`` to ``destination`` through a temporary file; check, then rename."""
    with atomic_write(destination) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        check_checksum(tmp, checksum, name=f"{destination.name} from {url}")


def require_files(folder: Path, files: FileSources, download: bool, hint: str) -> dict[str, Path]:
    """Paths of ``files`` in ``folder``, downloading the missing ones that have a url.

    Files already present are used as they are. Raises ``FileNotFoundError`` naming every file
    still missing, the folder, any download failures, and then ``hint``.
    """
    missing = [name for name in files if not (folder / name).exists()]
    failures: list[str] = []
    if missing and download and not os.environ.get("TRAININGLOOP_NO_DOWNLOAD"):
        for name in list(missing):
            url, checksum = files[name]
            if url is None:
                continue
            try:
                download_file(url, folder / name, checksum)
                missing.remove(name)
            except (OSError, DataFileError) as error:
                failures.append(f"{name}: {error}")
    if missing:
        detail = f" (download failed: {'; '.join(failures)})" if failures else ""
        raise FileNotFoundError(
            f"missing data file(s) {missing} in folder {folder}{detail}. {hint}"
        )
    return {name: folder / name for name in files}
