"""A memory-mapped ArrayDataset: the process's own memory and batches/s over a ≥ 1 GiB file.

Writes a ``.npy`` of CIFAR-shaped uint8 rows (32×32×3, plus an int64 label column in memory)
into a temporary folder, deleted at the end. Each measurement is one shuffled epoch of batches
of ``--batch`` through ``ArrayDataset({...}).shuffle(0).batch(n)`` in a fresh subprocess:

- ``mapped``: the column is ``np.load(path, mmap_mode="r")``; each batch reads its rows;
- ``memory``: the same file read whole into memory first (not timed, but its memory counts
  in "grown": the contrast), the same pipeline.

A thread samples the subprocess's ``RssAnon`` (its anonymous memory: what it allocated, not
the page cache of the mapped file) every millisecond; "grown" is its peak minus its value
before the dataset is built. The file was just written, so its pages are in the page cache
(warm); ``--cold`` also runs ``mapped`` after asking the kernel to drop them
(``posix_fadvise(DONTNEED)``), so that every batch reads the disk. Interleaved repeats,
medians printed.

    python benchmarks/memmap.py [--gib 1.0] [--batch 512] [--repeats 3] [--cold] [--threads N]

A mapped column is gathered by NumPy (one thread); an in-memory one by ``index_select``, which
uses torch's threads: on a loaded machine a 2-thread gather can be many times slower than a
1-thread one, so ``--threads 1`` is worth a run next to the default.

(Not ``mmap.py``: run as a script, this folder comes first on ``sys.path``, and a file of that
name would shadow the standard library's ``mmap``, which NumPy imports, for every benchmark.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPE = (32, 32, 3)


def _anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def child(mode: str, path: str, batch: int, threads: int | None) -> None:
    """One epoch in this process; prints its figures as JSON."""
    import torch

    from trainingloop.data import ArrayDataset

    if threads:
        torch.set_num_threads(threads)

    images = np.load(path, mmap_mode="r")
    labels = torch.arange(len(images)) % 10
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anon())
            time.sleep(0.001)

    for _ in ArrayDataset({"image": images[:4096], "label": labels[:4096]}).shuffle(0).batch(
            batch):
        pass  # warm-up: allocator, threads
    base = _anon()
    threading.Thread(target=sample, daemon=True).start()
    if mode == "memory":
        column: object = torch.from_numpy(np.array(images))  # all of it, not timed
    else:
        column = images
    ds = ArrayDataset({"image": column, "label": labels}).shuffle(0).batch(batch)
    started, count = time.perf_counter(), 0
    for _batch in ds:
        count += 1
    seconds = time.perf_counter() - started
    done.set()
    time.sleep(0.01)
    print(json.dumps({"mode": mode, "seconds": seconds, "batches": count,
                      "grown": max(peak[0], _anon()) - base}))


def _write(path: Path, rows: int) -> None:
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *SHAPE))
    rng = np.random.default_rng(0)
    row = int(np.prod(SHAPE))
    for lo in range(0, rows, 20_000):
        n = min(20_000, rows - lo)
        images[lo:lo + n] = np.frombuffer(rng.bytes(n * row), np.uint8).reshape(n, *SHAPE)
    images.flush()
    del images


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _run(mode: str, path: Path, batch: int, threads: int | None) -> dict:
    extra = ["--threads", str(threads)] if threads else []
    result = subprocess.run([sys.executable, __file__, "--child", mode, str(path),
                             "--batch", str(batch), *extra],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="file size in GiB")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also run with a cold page cache")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in each run (default: torch's own)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.threads)
        return
    rows = int(args.gib * 2**30) // int(np.prod(SHAPE))
    modes = ["mapped", "memory"] + (["cold"] if args.cold else [])
    with tempfile.TemporaryDirectory(prefix="trainingloop-mmap-") as folder:
        path = Path(folder) / "images.npy"
        _write(path, rows)
        size = path.stat().st_size
        print(f"file {size / 2**20:,.0f} MiB: {rows:,} rows of {SHAPE} uint8, batches of "
              f"{args.batch}, one shuffled epoch each, {args.repeats} interleaved repeats, "
              f"torch threads: {args.threads or 'default'}")
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                if mode == "cold":
                    _drop_cache(path)
                runs[mode].append(_run("mapped" if mode == "cold" else mode, path, args.batch,
                                       args.threads))
    rates = {}
    for mode, results in runs.items():
        rates[mode] = statistics.median(r["batches"] / r["seconds"] for r in results)
        grown = [r["grown"] / 2**20 for r in results]
        print(f"{mode:>7}: {rates[mode]:8,.0f} batches/s (runs: "
              + ", ".join(f"{r['batches'] / r['seconds']:,.0f}" for r in results)
              + f"); RssAnon grown by {statistics.median(grown):,.1f} MiB (max "
              f"{max(grown):,.1f}) = {max(grown) * 2**20 / size:.1%} of the file")
    print(f"mapped / memory batches/s: {rates['mapped'] / rates['memory']:.2f}"
          + (f"; cold / memory: {rates['cold'] / rates['memory']:.2f}" if args.cold else ""))


if __name__ == "__main__":
    main()
