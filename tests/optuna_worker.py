"""One pruned Optuna trial trained data-parallel, for tests/test_optuna_pruning.py.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/optuna_worker.py DIR

Rank 0 holds the trial (a study on ``DIR/optuna.db`` whose pruner prunes from epoch 2 on);
rank 1 passes ``trial=None``. Each rank writes ``DIR/rank<r>.json``: the epochs it trained and
whether its fit raised ``optuna.TrialPruned``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import optuna
import torch

import trainingloop as tl


def main() -> None:
    directory = Path(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))  # the loop sets up the process group in fit()
    study = trial = None
    if rank == 0:
        study = optuna.create_study(study_name="ddp", storage=f"sqlite:///{directory / 'optuna.db'}",
                                    pruner=optuna.pruners.ThresholdPruner(upper=-1.0,
                                                                          n_warmup_steps=2))
        trial = study.ask()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    train = tl.data.ArrayDataset({"x": x, "y": y}).batch(8)
    validation = tl.data.ArrayDataset({"x": x[:32], "y": y[:32]}).batch(8)
    model = torch.nn.Linear(6, 3)
    loop = tl.TrainingLoop(train, validation,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[tl.OptunaPruning(trial)], include_default_callbacks=False)
    pruned = False
    try:
        loop.fit(model, epochs=4, device="cpu")
    except optuna.TrialPruned:
        pruned = True
    if study is not None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else
                   optuna.trial.TrialState.FAIL)
    result = {"epochs": len(loop.history.epochs), "pruned": pruned}
    (directory / f"rank{rank}.json").write_text(json.dumps(result))
    print(f"rank {rank}: {result}", flush=True)


if __name__ == "__main__":
    main()
