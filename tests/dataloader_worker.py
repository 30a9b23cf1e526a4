"""DataLoader and uneven-shard checks for the distributed tests; run under torch.distributed.run.

    python -m torch.distributed.run --nproc-per-node 2 tests/dataloader_worker.py order DIR
        [--break-set-epoch]
    python -m torch.distributed.run --nproc-per-node 2 tests/dataloader_worker.py metrics DIR

``order`` trains a shuffled ``DataLoader`` for 3 epochs and writes, per rank,
``DIR/order-rank<r>.json``: the example indices of every training batch, per epoch.
``metrics`` fits a frozen model (lr 0) on uneven shards, from a DataLoader and from an
ArrayDataset, with 5 and 7 validation examples, a torchmetrics metric, a CSVLogger and the
progress printer; rank 0 writes ``DIR/metrics.json``: each fit's History next to values computed
here by hand (and scikit-learn) on one process, over all examples and over rank 0's share.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
from pathlib import Path
from typing import Any

import sklearn.metrics
import torch
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

import trainingloop as tl
from trainingloop import distributed


def order(directory: Path, break_set_epoch: bool) -> None:
    if break_set_epoch:  # the fault of issue 11: the sampler never learns the epoch
        torch.utils.data.distributed.DistributedSampler.set_epoch = (  # type: ignore[method-assign]
            lambda self, epoch: None)
    torch.manual_seed(0)
    x = torch.arange(16, dtype=torch.float32).unsqueeze(1)
    data = DataLoader(TensorDataset(x, torch.zeros(16, 1)), batch_size=4, shuffle=True)
    seen: list[list[list[int]]] = []

    def record(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.EPOCH_START:
            seen.append([])
        if event is tl.Event.BATCH_START and loop.is_training:
            seen[-1].append(loop.last_input[:, 0].long().tolist())

    model = torch.nn.Linear(1, 1)
    loop = tl.TrainingLoop(data, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                           loss=torch.nn.functional.mse_loss, callbacks=[record],
                           include_default_callbacks=False)
    loop.fit(model, epochs=3, device="cpu")
    (directory / f"order-rank{distributed.rank()}.json").write_text(json.dumps(seen))


def _by_hand(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Loss, accuracy and MCC of ``model`` over all of ``x`` in one process, without the loop."""
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1)
    accuracy = float((predicted == y).double().mean())
    mcc = float(sklearn.metrics.matthews_corrcoef(y.numpy(), predicted.numpy()))
    return {"loss": float(torch.nn.functional.cross_entropy(logits.double(), y)),
            "accuracy": accuracy, "mcc": mcc, "multiclass_accuracy": accuracy,
            "multiclass_matthews_corr_coef": mcc}


def metrics(directory: Path) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(13, 4, generator=g), torch.randint(0, 3, (13,), generator=g)
    vx, vy = torch.randn(7, 4, generator=g), torch.randint(0, 3, (7,), generator=g)
    results: list[dict[str, Any]] = []
    for kind in ("dataloader", "arraydataset"):
        for n in (5, 7):
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 3)
            initial = {k: v.clone() for k, v in model.state_dict().items()}
            if kind == "dataloader":
                train: Any = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
                validation: Any = DataLoader(TensorDataset(vx[:n], vy[:n]), batch_size=2)
            else:
                train = tl.data.ArrayDataset({"x": x, "y": y}).shuffle(seed=0).batch(4)
                validation = tl.data.ArrayDataset({"x": vx[:n], "y": vy[:n]}).batch(2)
            csv = directory / f"{kind}-{n}.csv"
            loop = tl.TrainingLoop(
                train, validation, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                loss=torch.nn.functional.cross_entropy,
                metrics=["accuracy", "mcc",
                         torchmetrics.classification.MulticlassAccuracy(3, average="micro"),
                         torchmetrics.classification.MulticlassMatthewsCorrCoef(3)],
                callbacks=[tl.CSVLogger(csv)], include_default_callbacks=True)
            history = loop.fit(model, epochs=2, device="cpu")
            assert all(torch.equal(initial[k], v) for k, v in model.state_dict().items())
            results.append({"kind": kind, "n": n, "history": history.epochs,
                            "train": _by_hand(model, x, y),
                            "validation": _by_hand(model, vx[:n], vy[:n]),
                            # rank 0's share of unshuffled data: examples 0, 2, 4, ...
                            "validation_rank0": _by_hand(model, vx[:n:2], vy[:n:2])})
    if distributed.is_main_process():
        (directory / "metrics.json").write_text(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["order", "metrics"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--break-set-epoch", action="store_true")
    args = parser.parse_args()
    # One group for every fit of this process; a bounded timeout turns a collective that only
    # some ranks entered into an error instead of a hang.
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    if args.mode == "order":
        order(args.dir, args.break_set_epoch)
    else:
        metrics(args.dir)
    print(f"rank {distributed.rank()}: results written", flush=True)
    gc.collect()
    torch.distributed.barrier()  # leave together: never tear gloo down under a peer
    torch.distributed.destroy_process_group()
    print(f"rank {os.environ.get('RANK', '0')}: exiting", flush=True)


if __name__ == "__main__":
    main()
