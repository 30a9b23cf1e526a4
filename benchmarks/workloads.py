"""One timed run of one workload through one runner; prints a JSON line.

    python benchmarks/workloads.py W1 hand

Workloads: W1 MLP 784-512-512-10, batch 64, one epoch of 60000 synthetic examples plus a
validation pass over 10000; W2 d2l's linear regression (batch 10, 1000 examples, 3 epochs);
W3 a LeNet-sized CNN, batch 256, one epoch of 60000 synthetic 28x28 images. Runners: ``hand``
(a hand-written loop), ``tl``, ``tl-compiled``, and the peers ``lightning``, ``keras``,
``ignite``, ``accelerate`` where installed. Each process does a short warm-up run first (so
compilation and lazy initialisation are excluded), then the timed run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Workload:
    name: str
    epochs: int
    batch: int
    lr: float
    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor] | None
    classification: bool
    _cache: dict | None = None

    def model(self) -> nn.Module:
        """One model per process: the warm-up and the timed run share it (and its compiled
        graphs, for runners that compile)."""
        if self._cache is None:
            self._cache = {"model": self._build()}
        return self._cache["model"]

    def sgd(self, parameters: Any) -> torch.optim.Optimizer:
        """One optimizer per process, for the same reason."""
        assert self._cache is not None
        if "optimizer" not in self._cache:
            self._cache["optimizer"] = torch.optim.SGD(parameters, lr=self.lr)
        return self._cache["optimizer"]

    def _build(self) -> nn.Module:
        torch.manual_seed(0)
        if self.name == "W1":
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                                 nn.ReLU(), nn.Linear(512, 10))
        if self.name == "W2":
            return nn.Linear(2, 1)
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.classification:
            return nn.functional.cross_entropy(output, target)
        return nn.functional.mse_loss(output, target)

    def batches(self, which: str = "train", limit: int | None = None) -> list:
        x, y = self.train if which == "train" else self.validation  # type: ignore[misc]
        size = self.batch if which == "train" else 1000
        out = [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]
        return out[:limit] + out[-1:] if limit else out  # warm-up sees the short last batch


def workload(name: str) -> Workload:
    g = torch.Generator().manual_seed(0)
    if name == "W1":
        x, y = torch.randn(70000, 784, generator=g), torch.randint(0, 10, (70000,), generator=g)
        return Workload("W1", 1, 64, 0.01, (x[:60000], y[:60000]), (x[60000:], y[60000:]), True)
    if name == "W2":
        x = torch.randn(1000, 2, generator=g)
        y = (x @ torch.tensor([2.0, -3.4]) + 4.2 + 0.01 * torch.randn(1000, generator=g))[:, None]
        return Workload("W2", 3, 10, 0.03, (x, y), None, False)
    x, y = torch.randn(70000, 1, 28, 28, generator=g), torch.randint(0, 10, (70000,), generator=g)
    return Workload("W3", 1, 256, 0.1, (x[:60000], y[:60000]), (x[60000:], y[60000:]), True)


# -- runners: each returns the final training loss -------------------------------------------------
def run_hand(w: Workload, limit: int | None) -> float:
    model = w.model()
    optimizer = w.sgd(model.parameters())
    for _ in range(w.epochs):
        model.train()
        total, correct, count = torch.zeros(()), torch.zeros(()), 0
        for x, y in w.batches("train", limit):
            output = model(x)
            loss = w.loss(output, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach() * len(y)
            if w.classification:
                correct += (output.detach().argmax(1) == y).sum()
            count += len(y)
        train_loss = float(total) / count
        if w.validation is not None:
            model.eval()
            with torch.no_grad():
                v_total, v_correct = torch.zeros(()), torch.zeros(())
                for x, y in w.batches("validation", limit):
                    output = model(x)
                    v_total += w.loss(output, y) * len(y)
                    v_correct += (output.argmax(1) == y).sum()
            float(v_total), float(v_correct)
    return train_loss


def run_tl(w: Workload, limit: int | None, compile: bool = False) -> float:
    import trainingloop as tl

    model = w.model()
    loop = tl.TrainingLoop(w.batches("train", limit),
                           w.batches("validation", limit) if w.validation else None,
                           optimizer=w.sgd(model.parameters()), loss=w.loss,
                           metrics=["accuracy"] if w.classification else [])
    with contextlib.redirect_stdout(io.StringIO()):
        history = loop.fit(model, epochs=w.epochs, device="cpu", compile=compile)
    return history["train/loss"][-1]


def run_lightning(w: Workload, limit: int | None) -> float:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = w.model()

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            loss = w.loss(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch: Any, index: int) -> None:
            self.log("val_loss", w.loss(self.net(batch[0]), batch[1]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return w.sgd(self.parameters())

    module = Module()
    trainer = L.Trainer(max_epochs=w.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, num_sanity_val_steps=0)
    def loader(batches: list) -> torch.utils.data.DataLoader:  # a list would mean many loaders
        return torch.utils.data.DataLoader(batches, batch_size=None)

    trainer.fit(module, loader(w.batches("train", limit)),
                loader(w.batches("validation", limit)) if w.validation else None)
    return float(trainer.callback_metrics["train_loss"])


def run_keras(w: Workload, limit: int | None) -> float:
    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    keras.utils.set_random_seed(0)
    if w.name == "W1":
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, "relu"),
                                  keras.layers.Dense(512, "relu"), keras.layers.Dense(10)])
    elif w.name == "W2":
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    else:
        model = keras.Sequential([
            keras.Input((1, 28, 28)), keras.layers.Conv2D(6, 5, padding="same", activation="relu",
                                                          data_format="channels_first"),
            keras.layers.MaxPooling2D(2, data_format="channels_first"),
            keras.layers.Conv2D(16, 5, activation="relu", data_format="channels_first"),
            keras.layers.MaxPooling2D(2, data_format="channels_first"), keras.layers.Flatten(),
            keras.layers.Dense(120, "relu"), keras.layers.Dense(84, "relu"),
            keras.layers.Dense(10)])
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if w.classification
            else keras.losses.MeanSquaredError())
    model.compile(optimizer=keras.optimizers.SGD(w.lr), loss=loss,
                  metrics=["accuracy"] if w.classification else [])
    n = limit * w.batch if limit else None
    x, y = (t[:n].numpy() for t in w.train)
    validation = tuple(t[: n].numpy() for t in w.validation) if w.validation else None
    history = model.fit(x, y, batch_size=w.batch, epochs=w.epochs, validation_data=validation,
                        verbose=0, shuffle=False)
    return float(history.history["loss"][-1])


def run_ignite(w: Workload, limit: int | None) -> float:
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
    from ignite.metrics import Accuracy, Loss, RunningAverage

    model = w.model()
    optimizer = w.sgd(model.parameters())
    trainer = create_supervised_trainer(model, optimizer, w.loss)
    RunningAverage(output_transform=lambda loss: loss).attach(trainer, "loss")
    if w.validation is not None:
        metrics = {"loss": Loss(w.loss), "accuracy": Accuracy()}
        evaluator = create_supervised_evaluator(model, metrics=metrics)
        validation = w.batches("validation", limit)
        trainer.add_event_handler(Events.EPOCH_COMPLETED,
                                  lambda engine: evaluator.run(validation))
    trainer.run(w.batches("train", limit), max_epochs=w.epochs)
    return float(trainer.state.metrics["loss"])


def run_accelerate(w: Workload, limit: int | None) -> float:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = w.model()
    optimizer = w.sgd(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(w.epochs):
        model.train()
        total, count = torch.zeros(()), 0
        for x, y in w.batches("train", limit):
            loss = w.loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            total += loss.detach() * len(y)
            count += len(y)
        if w.validation is not None:
            model.eval()
            with torch.no_grad():
                v = sum(w.loss(model(x), y) for x, y in w.batches("validation", limit))
            float(v)
    return float(total) / count


RUNNERS = {
    "hand": run_hand,
    "tl": run_tl,
    "tl-compiled": lambda w, limit: run_tl(w, limit, compile=True),
    "lightning": run_lightning,
    "keras": run_keras,
    "ignite": run_ignite,
    "accelerate": run_accelerate,
}
MODULES = {"lightning": "lightning", "keras": "keras", "ignite": "ignite",
           "accelerate": "accelerate", "tl": "trainingloop", "tl-compiled": "trainingloop"}


def main() -> None:
    name, runner = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    if runner in MODULES:
        if runner == "keras":
            os.environ["KERAS_BACKEND"] = "torch"
        __import__(MODULES[runner])
    import_seconds = time.perf_counter() - started
    w = workload(name)
    quiet = contextlib.redirect_stderr(io.StringIO())
    with quiet:
        RUNNERS[runner](w, 20)  # warm-up: compilation, lazy initialisation, allocator
        started = time.perf_counter()
        loss = RUNNERS[runner](w, None)
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"workload": name, "runner": runner, "seconds": seconds, "loss": loss,
                      "peak_mb": peak_mb, "import_seconds": import_seconds}))


if __name__ == "__main__":
    main()
