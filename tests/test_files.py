"""The shared file helpers: digests against hashlib, atomic replacement that never leaves a part."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

import trainingloop as tl
from trainingloop import _files


def test_digests_match_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(data)
    assert _files.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert _files.file_digest(path, "md5") == hashlib.md5(data).hexdigest()


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "notes.txt"
    with _files.atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp != path and not path.exists()
        tmp.write_text("first")
    with _files.atomic_write(path) as tmp:
        tmp.write_text("second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["notes.txt"]


def test_a_failing_block_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="in the block"), _files.atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("in the block")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_failing_fsync_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Path) -> None:
        raise OSError("disk full")

    path = tmp_path / "notes.txt"
    path.write_text("old")
    monkeypatch.setattr(_files, "fsync_path", broken)
    with pytest.raises(OSError, match="disk full"), _files.atomic_write(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_callbacks_rewrite_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CSVLogger's header and ProgressPlot's image go through ``atomic_write``: a failed write
    keeps the previous file whole and leaves no temporary beside it."""
    def broken(path: Path) -> None:
        raise OSError("disk full")

    log, image = tmp_path / "log.csv", tmp_path / "curves.png"
    log.write_text("previous log\n")
    image.write_bytes(b"previous image")
    monkeypatch.setattr(_files, "fsync_path", broken)
    loop = SimpleNamespace(metrics=[])  # all the CSVLogger reads at a fit's start
    with pytest.raises(OSError, match="disk full"):
        tl.CSVLogger(log).on_fit_start(loop)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="disk full"):
        tl.ProgressPlot(image).draw()
    assert log.read_text() == "previous log\n" and image.read_bytes() == b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "log.csv"]
