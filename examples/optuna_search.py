"""Tune the learning rate and width of the digits MLP with Optuna, pruning poor trials early.

Each trial trains the embedded digits example's MLP (64-width-10) for a few epochs;
``tl.OptunaPruning`` reports the validation loss after each epoch and stops trials that the
median pruner finds worse than the others at the same epoch. The study lives in SQLite, so a
second run continues it (``load_if_exists``):

    python examples/optuna_search.py [--trials 12] [--epochs 4] [--storage sqlite:///run/optuna.db]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import optuna
import torch
from torch import nn

import trainingloop as tl
from trainingloop.examples import digits


def objective(trial: optuna.Trial, epochs: int) -> float:
    """Validation loss of the last epoch for one (lr, width); pruned trials raise TrialPruned."""
    lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
    width = trial.suggest_int("width", 16, 256, log=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    train, test = digits.data(batch_size=64)
    loop = tl.TrainingLoop(train, test,
                           optimizer=torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                           loss=nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=[tl.OptunaPruning(trial, monitor="validation/loss")],
                           include_default_callbacks=False)
    history = loop.fit(model, epochs=epochs, device="cpu")
    trial.set_user_attr("validation_accuracy", history["validation/accuracy"][-1])
    return history["validation/loss"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--storage", default="sqlite:///run/optuna.db")
    parser.add_argument("--study", default="digits-lr-width")
    args = parser.parse_args()
    if args.storage.startswith("sqlite:///"):
        Path(args.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A 64-wide MLP on batches of 64: a second thread only adds hand-off cost per operation
    # (and on a busy 2-core machine makes each step several times slower).
    torch.set_num_threads(1)
    study = optuna.create_study(
        study_name=args.study, storage=args.storage, load_if_exists=True, direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    started = time.perf_counter()
    study.optimize(lambda trial: objective(trial, args.epochs), n_trials=args.trials)
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    print(f"{len(states)} trials in the study ({states.count('COMPLETE')} complete, "
          f"{states.count('PRUNED')} pruned); this run took {time.perf_counter() - started:.1f} s")
    print(f"best: lr {best.params['lr']:.4f}, width {best.params['width']}: validation loss "
          f"{best.value:.4f}, accuracy {best.user_attrs['validation_accuracy']:.4f}")


if __name__ == "__main__":
    main()
