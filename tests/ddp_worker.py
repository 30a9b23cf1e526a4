"""Data-parallel training for the distributed tests; run under torch.distributed.run.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py DIR [--batch 8]
        [--strategy ddp|fsdp] [--kill STEP] [--resume] [--accumulate K] [--count-syncs] [--ema]

Writes ``DIR/final.pt`` (rank 0) and ``DIR/history.json`` (with ``--ema``, also the averaged
weights in ``DIR/ema.pt``); also runnable as one process.
``--count-syncs`` counts the gradient collectives (DDP's all-reduces through a communication
hook, FSDP2's reduce-scatters by patching ``torch.distributed.reduce_scatter_single``) and
writes ``DIR/syncs-rank<r>.json``: ``{"collectives": n, "updates": optimizer updates}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
from pathlib import Path

import torch

import trainingloop as tl
from trainingloop import distributed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--kill", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--accumulate", type=int, default=1)
    parser.add_argument("--count-syncs", action="store_true")
    parser.add_argument("--ema", action="store_true")
    args = parser.parse_args()
    own_group = args.strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if own_group:  # keep the group after fit: gathering FSDP's shards needs it
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    train = tl.data.ArrayDataset({"x": x, "y": y}).shuffle(seed=0).batch(args.batch)
    validation = tl.data.ArrayDataset({"x": x[:48], "y": y[:48]}).batch(8)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    callbacks: list = [tl.CSVLogger(args.dir / "log.csv"),
                       tl.TensorBoardLogger(args.dir / "tensorboard"),
                       tl.Checkpoint(args.dir / "checkpoints", every_n_steps=2)]
    if os.environ.get("NO_CHECKPOINT"):
        callbacks.pop()
    if args.ema:
        callbacks.append(tl.EMA(decay=0.9))
    if args.kill is not None:
        def kill(loop: tl.TrainingLoop, event: tl.Event) -> None:
            if event is tl.Event.BATCH_END and loop.is_training and loop.global_step == args.kill:
                os.kill(os.getpid(), signal.SIGKILL)

        callbacks.append(kill)
    collectives = 0
    if args.count_syncs and args.strategy == "fsdp":
        reduce_scatter = torch.distributed.reduce_scatter_single  # what FSDP2 calls on gloo

        def counting(*a: object, **k: object) -> object:
            nonlocal collectives
            collectives += 1
            return reduce_scatter(*a, **k)

        torch.distributed.reduce_scatter_single = counting  # type: ignore[assignment]
    elif args.count_syncs:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def count(state, bucket):  # type: ignore[no-untyped-def] # DDP checks annotations
            nonlocal collectives
            collectives += 1
            return allreduce_hook(state, bucket)  # type: ignore[arg-type]

        def register(loop: tl.TrainingLoop, event: tl.Event) -> None:
            if event is tl.Event.FIT_START:
                loop.model.register_comm_hook(None, count)  # type: ignore[union-attr,operator]

        callbacks.append(register)
    loop = tl.TrainingLoop(train, validation,
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy", "mcc"],
                           callbacks=callbacks, include_default_callbacks=False)
    history = loop.fit(model, epochs=3, device="cpu", strategy=args.strategy,
                       accumulate_grad_batches=args.accumulate,
                       resume=True if args.resume else None)
    state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
             for k, v in model.state_dict().items()}
    if distributed.is_main_process():
        torch.save(state, args.dir / "final.pt")
        (args.dir / "history.json").write_text(json.dumps(history.epochs))
        if args.ema:
            torch.save(tl.EMA.averaged(loop).state_dict(), args.dir / "ema.pt")
    if args.count_syncs:  # one file per rank: two ranks never write one file
        (args.dir / f"syncs-rank{os.environ.get('RANK', '0')}.json").write_text(
            json.dumps({"collectives": collectives, "updates": loop.global_step}))
    print(f"rank {os.environ.get('RANK', '0')}: results written", flush=True)
    if own_group:
        # Drop FSDP's state (and any collective handles it keeps) while the group is alive,
        # and leave together: a gloo group torn down under a peer's feet, or work objects
        # freed during interpreter shutdown, can abort the process after all work is done.
        del loop, model, state
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    print(f"rank {os.environ.get('RANK', '0')}: exiting", flush=True)


if __name__ == "__main__":
    main()
