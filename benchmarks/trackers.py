"""Cost of an experiment tracker on W1: ``fit`` with ``MLflowLogger`` (SQLite store) against without.

W1 (``benchmarks/workloads.py``): MLP 784-512-512-10, batch 64, one epoch of 60000 synthetic
examples (938 steps) plus a validation pass over 10000. Both sides run the default callbacks
(output discarded); the tracked side adds ``tl.MLflowLogger(tracking_uri="sqlite:///...",
log_every_n_steps=50)``, which creates a run, logs parameters, buffers batch metrics on the
device and writes them with the epoch's values in one ``log_batch`` at epoch end. The
database is created during the warm-up (MLflow's table creation is a one-off cost, not a
per-fit one). Runs are interleaved; the script prints medians and their ratio. It asserts
nothing: timings belong here, not in tests.

    python benchmarks/trackers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import trainingloop as tl

sys.path.insert(0, str(Path(__file__).parent))
from workloads import workload


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                         nn.ReLU(), nn.Linear(512, 10))


def timed_fit(train: list, validation: list, callbacks: list) -> float:
    model = make_model()
    loop = tl.TrainingLoop(train, validation,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=callbacks)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        loop.fit(model, epochs=1, device="cpu")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    w = workload("W1")
    train, validation = w.batches("train"), w.batches("validation")
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{folder}/mlflow.db"

        def tracker() -> list:
            return [tl.MLflowLogger(experiment="W1", tracking_uri=store, log_every_n_steps=50)]

        timed_fit(train[:50], validation[:2], [])  # warm-up both paths; creates the database
        timed_fit(train[:50], validation[:2], tracker())
        plain, tracked = [], []
        for _ in range(args.repeats):
            plain.append(timed_fit(train, validation, []))
            tracked.append(timed_fit(train, validation, tracker()))
    ratio = statistics.median(tracked) / statistics.median(plain)
    pairs = [b / a for a, b in zip(plain, tracked)]
    print(f"W1, {len(train)} steps + {len(validation)} validation batches, {args.repeats} "
          f"interleaved runs, {torch.get_num_threads()} threads")
    print(f"fit without tracker  median {statistics.median(plain):.3f} s "
          f"(min {min(plain):.3f}, max {max(plain):.3f})")
    print(f"fit with MLflowLogger median {statistics.median(tracked):.3f} s "
          f"(min {min(tracked):.3f}, max {max(tracked):.3f})")
    print(f"ratio of medians     {ratio:.3f}  (per-pair ratios: median "
          f"{statistics.median(pairs):.3f}, min {min(pairs):.3f}, max {max(pairs):.3f})")


if __name__ == "__main__":
    main()
