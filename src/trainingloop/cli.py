"""Command line: ``trainingloop list`` and ``trainingloop run EXAMPLE [options]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (argparse reports the error)."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError here reads "invalid parse value: 'abc'"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _device(text: str) -> str:
    from trainingloop.devices import resolve_device

    if text != "auto":
        try:
            resolve_device(text)
        except (ValueError, RuntimeError) as error:
            raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainingloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the examples")
    run = commands.add_parser("run", help="train one example")
    run.add_argument("example")
    run.add_argument("--epochs", type=_count(0))
    run.add_argument("--batch-size", type=_count(1))
    run.add_argument("--lr", type=_positive_float)
    run.add_argument("--device", default="auto", type=_device)
    run.add_argument("--compile", action="store_true")
    run.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    run.add_argument("--data-dir", help="data root (default: $TRAININGLOOP_DATA)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="extra",
                     help="an option of the example's own (its EXTRA); repeatable")
    run.add_argument("--out", type=Path, help="output folder (default: run/EXAMPLE)")
    run.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trainingloop`` script and ``python -m trainingloop``."""
    args = _parser().parse_args(argv)
    from trainingloop.examples import EXAMPLES, Options, load, parse_extra

    if args.command == "list":
        for name in EXAMPLES:
            print(f"{name:24} {load(name).DESCRIPTION}")
        return 0
    try:
        module = load(args.example)
        extra = parse_extra(args.example, args.extra)
    except ValueError as error:
        print(f"trainingloop: {error}", file=sys.stderr)
        return 2
    options = Options(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      device=args.device, compile=args.compile, precision=args.precision,
                      data_dir=args.data_dir, out=args.out or Path("run") / args.example,
                      resume=args.resume, extra=extra)
    try:
        history = module.run(options)
    except FileNotFoundError as error:
        print(f"trainingloop: {error}\nGet the data set's original files (see the README's "
              "data section) and point --data-dir or TRAININGLOOP_DATA at their parent folder.",
              file=sys.stderr)
        return 1
    last = history.epochs[-1] if history.epochs else {}
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if "/" in k)
    print(f"done: {len(history.epochs)} epoch(s); {summary}; outputs in {options.out}")
    return 0
