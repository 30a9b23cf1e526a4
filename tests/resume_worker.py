"""A small training run for the checkpoint tests, killed or interrupted on demand.

    python tests/resume_worker.py DIR [--resume] [--kill STEP:EVENT] [--sigint STEP]
                                      [--precision P] [--sigterm STEP [--sigterm-while-saving]]

EVENT is an event name (``BATCH_END``, ...) or ``SAVE`` (die half-way through writing the
checkpoint of that step). ``--sigterm`` sends SIGTERM at that step's BATCH_END (and, with
``--sigterm-while-saving``, a second one half-way through writing the preemption checkpoint);
the worker exits 143 on ``tl.Preempted``. The final weights go to ``DIR/final.pt``. Under
``--precision 16-mixed`` the first fp16 updates overflow at GradScaler's initial scale (65536),
so the scale falls and those updates are skipped: a resume must restore the scaler to skip the
same ones.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

import trainingloop as tl
from trainingloop import _files, checkpointing

EPOCHS, EXAMPLES, BATCH = 3, 200, 8  # 25 steps per epoch


def build(directory: Path, extra: list) -> tuple[tl.TrainingLoop, torch.nn.Module]:
    torch.manual_seed(0)
    data = (tl.datasets.synthetic_linear([1.0, -2.0, 3.0, 0.5], 0.3, EXAMPLES, seed=1)
            .map(lambda x: x + 0.05 * torch.randn_like(x), "features")  # random per batch
            .shuffle(seed=0).batch(BATCH))
    validation = tl.datasets.synthetic_linear([1.0, -2.0, 3.0, 0.5], 0.3, 40, seed=2).batch(16)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    schedule = tl.make_schedule([
        tl.ScheduleSegment(tl.shapes.linear, 0.0, 0.02, step_count=10),
        tl.ScheduleSegment(tl.shapes.cosine, end_rate=0.0)])
    callbacks = [tl.Checkpoint(directory / "checkpoints", every_n_steps=3, keep_last=2),
                 tl.CSVLogger(directory / "log.csv"), tl.LearningRateScheduler(schedule),
                 *extra]
    loop = tl.TrainingLoop(data, validation, optimizer=optimizer,
                           loss=torch.nn.functional.mse_loss, metrics=[], callbacks=callbacks,
                           include_default_callbacks=False)
    return loop, model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill")
    parser.add_argument("--sigint", type=int)
    parser.add_argument("--precision", default="32")
    parser.add_argument("--sigterm", type=int)
    parser.add_argument("--sigterm-while-saving", action="store_true")
    args = parser.parse_args()
    extra = []
    if args.kill:
        step_text, event_name = args.kill.split(":")
        kill_step = int(step_text)
        if event_name == "SAVE":
            original = checkpointing.save

            def dying_save(directory, name, model, state, info, *rest):  # type: ignore[no-untyped-def]
                if info["global_step"] == kill_step:
                    original_fsync = _files.fsync_path

                    def die(path: Path) -> None:
                        original_fsync(path)
                        if path.name == checkpointing.STATE:
                            os.kill(os.getpid(), signal.SIGKILL)

                    _files.fsync_path = die  # type: ignore[assignment]
                return original(directory, name, model, state, info, *rest)

            checkpointing.save = dying_save  # type: ignore[assignment]
        else:
            event = tl.Event[event_name]

            def kill(loop: tl.TrainingLoop, fired: tl.Event) -> None:
                if fired is event and loop.global_step == kill_step and loop.is_training:
                    os.kill(os.getpid(), signal.SIGKILL)

            extra.append(kill)
    if args.sigint is not None:
        def interrupt(loop: tl.TrainingLoop, fired: tl.Event) -> None:
            if fired is tl.Event.BATCH_END and loop.global_step == args.sigint:
                os.kill(os.getpid(), signal.SIGINT)

        extra.append(interrupt)
    if args.sigterm is not None:
        sent: list[int] = []

        def terminate(loop: tl.TrainingLoop, fired: tl.Event) -> None:
            if fired is tl.Event.BATCH_END and loop.global_step == args.sigterm and not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)

        extra.append(terminate)
        if args.sigterm_while_saving:
            original_fsync = _files.fsync_path

            def again(path: Path) -> None:  # only while the preemption checkpoint is written
                original_fsync(path)
                if path.name == checkpointing.STATE and len(sent) == 1:
                    sent.append(2)
                    os.kill(os.getpid(), signal.SIGTERM)

            _files.fsync_path = again  # type: ignore[assignment]
    loop, model = build(args.dir, extra)
    try:
        loop.fit(model, EPOCHS, device="cpu", resume=True if args.resume else None,
                 precision=args.precision)
    except tl.Preempted as stopped:
        print(f"preempted: {stopped}", file=sys.stderr)
        sys.exit(143)
    torch.save(model.state_dict(), args.dir / "final.pt")
    print("finished", loop.global_step, file=sys.stderr)


if __name__ == "__main__":
    main()
