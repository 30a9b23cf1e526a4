"""What only a GPU can show, as one table (under 8 minutes on one GPU).

    python benchmarks/gpu.py            # on a CUDA machine
    python benchmarks/gpu.py --smoke    # every row at tiny sizes on the CPU (CI: the script works)
    python benchmarks/gpu.py --only gpt data   # some groups: workloads, gpt, data, airbench

Rows: W1 and W3 (benchmarks/workloads.py) through ``fit`` and through the hand-written loop,
eager, ``compile=True`` and ``compile={"mode": "reduce-overhead"}``, and ``fit`` again with
``sync_debug=True`` (passed only where ``fit`` has that parameter); the GPT example's model in
bf16-mixed against 32; CIFAR-shaped random data as ``ArrayDataset.to("cuda")`` against
``DataLoader(pin_memory=True, num_workers=2)`` (plain and through ``tl.data.Prefetcher``),
batches per second; the airbench-cifar10 recipe's seconds per training epoch. The data are
moved to the device before timing (the loops are measured, not the transfer), every timed run
follows a warm-up (compilation excluded) and ends with a device synchronisation. Ratios, never
assertions. With ``--smoke`` a compiled row uses ``backend="eager"`` (dynamo without inductor:
the C++ compile alone would take minutes on a small CPU) and rows that need CUDA say so.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from workloads import Workload, workload  # noqa: E402

import trainingloop as tl  # noqa: E402
from trainingloop.devices import synchronize  # noqa: E402

FIT_HAS_SYNC_DEBUG = "sync_debug" in inspect.signature(tl.TrainingLoop.fit).parameters
SKIPPED = "skipped: no CUDA"


class Table:
    """Rows printed as they come (a partial table survives a timeout)."""

    def __init__(self) -> None:
        print("| row | setting | value | unit | note |")
        print("| --- | --- | --- | --- | --- |")
        sys.stdout.flush()

    def row(self, name: str, setting: str, value: float | None, unit: str, note: str = "") -> None:
        shown = "" if value is None else f"{value:.4g}"
        print(f"| {name} | {setting} | {shown} | {unit} | {note} |")
        sys.stdout.flush()

    def attempt(self, name: str, setting: str, unit: str, measure: Callable[[], tuple[float, str]]
                ) -> float | None:
        try:
            value, note = measure()
        except Exception as error:  # a row that fails says why; the others still run
            traceback.print_exc()
            self.row(name, setting, None, unit, f"failed: {type(error).__name__}: "
                     f"{str(error).splitlines()[0][:120] if str(error) else ''}")
            return None
        self.row(name, setting, value, unit, note)
        return value


def timed(device: torch.device, run: Callable[[], Any]) -> float:
    synchronize(device)
    started = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - started


# -- W1, W3: fit against the hand-written loop ----------------------------------------------------
def tiny(name: str) -> Workload:
    """``name``'s shapes at smoke size (the full workloads draw 70000 examples)."""
    g = torch.Generator().manual_seed(0)
    shape, batch, lr = ((784,), 64, 0.01) if name == "W1" else ((1, 28, 28), 256, 0.1)
    x, y = torch.randn(320, *shape, generator=g), torch.randint(0, 10, (320,), generator=g)
    return Workload(name, 1, batch, lr, (x[:256], y[:256]), (x[256:], y[256:]), True)


def on(device: torch.device, batches: list) -> list:
    return [(x.to(device), y.to(device)) for x, y in batches]


def hand_loop(w: Workload, device: torch.device, compile: Any) -> Callable[[list, list], None]:
    """A plain PyTorch loop (the step compiled when asked), metrics summed on the device."""
    model = w._build().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=w.lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = model(x)
        loss = w.loss(output, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach(), output.detach()

    if compile:
        step = torch.compile(step, **({} if compile is True else compile))

    def run(train: list, validation: list) -> None:
        model.train()
        total, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for x, y in train:
            loss, output = step(x, y)
            total += loss * len(y)
            correct += (output.argmax(1) == y).sum()
        model.eval()
        with torch.no_grad():
            v_total, v_correct = torch.zeros((), device=device), torch.zeros((), device=device)
            for x, y in validation:
                output = model(x)
                v_total += w.loss(output, y) * len(y)
                v_correct += (output.argmax(1) == y).sum()
        float(total), float(correct), float(v_total), float(v_correct)  # phase ends: the reads

    return run


def fit_loop(w: Workload, device: torch.device, compile: Any, sync: bool,
             parts: dict[str, Any]) -> Callable[[list, list], None]:
    """``fit`` on the model and optimizer in ``parts`` (made on first use): the run with
    ``sync_debug`` reuses the plain run's, and so its compiled graphs (no second compile)."""
    if not parts:
        parts["model"] = w._build().to(device)
        parts["optimizer"] = torch.optim.SGD(parts["model"].parameters(), lr=w.lr)
    model, optimizer = parts["model"], parts["optimizer"]
    options: dict[str, Any] = {"sync_debug": True} if sync else {}

    def run(train: list, validation: list) -> None:
        loop = tl.TrainingLoop(train, validation, optimizer=optimizer, loss=w.loss,
                               metrics=["accuracy"])
        with contextlib.redirect_stdout(io.StringIO()):  # the default progress printer stays
            loop.fit(model, epochs=1, device=device, compile=compile, **options)

    return run


def rate(run: Callable[[list, list], None], data: tuple[list, list], warm: tuple[list, list],
         device: torch.device) -> float:
    """Examples per second of one timed ``run`` over ``data`` after a warm-up over ``warm``."""
    run(*warm)
    return sum(len(y) for _, y in data[0]) / timed(device, lambda: run(*data))


def workloads(table: Table, device: torch.device, smoke: bool) -> None:
    cuda = device.type == "cuda"
    settings: list[tuple[str, Any]] = [
        ("eager", False),
        ("compile=True", {"backend": "eager"} if smoke else True),
        ('compile={"mode": "reduce-overhead"}', {"mode": "reduce-overhead"}),
    ]
    for name in ("W1", "W3"):
        w = tiny(name) if smoke else workload(name)
        train, validation = on(device, w.batches("train")), on(device, w.batches("validation"))
        data, warm = (train, validation), (train[:20] + train[-1:], validation[:2])
        for setting, compile in settings:
            note = ("backend=eager (smoke)" if isinstance(compile, dict) and "backend" in compile
                    else "")
            if "reduce-overhead" in setting and not cuda:
                table.row(f"{name} hand", setting, None, "examples/s", SKIPPED)
                table.row(f"{name} fit", setting, None, "examples/s", SKIPPED)
                continue
            hand = table.attempt(f"{name} hand", setting, "examples/s", lambda: (
                rate(hand_loop(w, device, compile), data, warm, device), note))  # noqa: B023
            variants = [("", False), (" + sync_debug=True", True)]
            parts: dict[str, Any] = {}
            for suffix, sync in variants:
                if sync and not FIT_HAS_SYNC_DEBUG:
                    table.row(f"{name} fit", setting + suffix, None, "examples/s",
                              "skipped: this fit has no sync_debug parameter")
                    continue

                def measure(sync: bool = sync, compile: Any = compile, note: str = note,
                            hand: float | None = hand, w: Workload = w,
                            data: tuple[list, list] = data, warm: tuple[list, list] = warm,
                            parts: dict[str, Any] = parts) -> tuple[float, str]:
                    run = fit_loop(w, device, compile, sync, parts)
                    value = rate(run, data, warm, device)
                    passed = ("passed: no host sync in any batch" if cuda else "a no-op off CUDA"
                              ) if sync else ""
                    ratio = f"{value / hand:.3f} of hand" if hand else ""
                    return value, "; ".join(filter(None, [passed, ratio, note]))

                table.attempt(f"{name} fit", setting + suffix, "examples/s", measure)


# -- GPT: bf16-mixed against 32 ---------------------------------------------------------------------
def gpt(table: Table, device: torch.device, smoke: bool) -> None:
    from trainingloop.examples.models import GPT, language_model_loss

    block, batch = 64, 16 if smoke else 64
    sequences = 2 * batch if smoke else 300 * batch
    width = 32 if smoke else 128
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 65, (sequences, block + 1), generator=g)
    data = tl.data.ArrayDataset({"input": tokens[:, :-1], "target": tokens[:, 1:]}).to(device)
    train = data.shuffle(0).batch(batch)
    rates: dict[str, float] = {}
    for precision in ("32", "bf16-mixed"):
        if precision == "bf16-mixed" and not (device.type == "cuda"
                                              and torch.cuda.is_bf16_supported()):
            table.row("GPT", precision, None, "tokens/s", SKIPPED)
            continue

        def measure(precision: str = precision) -> tuple[float, str]:
            torch.manual_seed(0)
            net = GPT(65, width=width, depth=2, heads=4, block_size=block)
            loop = tl.TrainingLoop(train, None, optimizer=torch.optim.AdamW(net.parameters(), 1e-3),
                                   loss=language_model_loss, include_default_callbacks=False)
            loop.fit(net, epochs=1, device=device, precision=precision)  # warm-up
            seconds = timed(device, lambda: loop.fit(net, epochs=1, device=device,
                                                     precision=precision))
            rates[precision] = sequences * block / seconds
            note = (f"{rates[precision] / rates['32']:.2f}x of 32"
                    if precision != "32" and "32" in rates else f"width {width}, depth 2, block 64")
            return rates[precision], note

        table.attempt("GPT", precision, "tokens/s", measure)


# -- CIFAR-shaped data: device-resident against a DataLoader ---------------------------------------
def cifar_data(table: Table, device: torch.device, smoke: bool) -> None:
    from trainingloop.examples.resnet_cifar10 import MEAN, STD

    n, batch = (1024, 256) if smoke else (50000, 512)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    transforms = [tl.transforms.Rescale(1 / 255, 0), tl.transforms.Normalize(MEAN, STD),
                  tl.transforms.RandomCrop(32, padding=4), tl.transforms.RandomHorizontalFlip(),
                  tl.transforms.HWC2CHW()]
    batches = -(-n // batch)

    def consume(data: Any, on_device: bool) -> None:
        total = torch.zeros((), device=device)
        for x, _ in data:
            if not on_device:
                x = x.to(device, non_blocking=True)
                for transform in transforms:
                    x = transform(x)
            total += x[:, 0, 0, 0].sum()  # touch every batch on the device, read nothing
        float(total)

    resident = (tl.data.ArrayDataset({"image": images, "label": labels}).to(device)
                .map(transforms, "image").shuffle(0).batch(batch))
    consume(resident, True)
    seconds = timed(device, lambda: consume(resident, True))
    base = batches / seconds
    table.row("CIFAR data", 'ArrayDataset.to(device)', base, "batches/s",
              f"{n} images, batch {batch}, crop+flip on the device")
    cuda = device.type == "cuda"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels),
                                         batch_size=batch, shuffle=True, num_workers=2,
                                         pin_memory=cuda, persistent_workers=True)
    for setting, data in (("DataLoader(pin_memory=True, num_workers=2)", loader),
                          ("the same through tl.data.Prefetcher",
                           tl.data.Prefetcher(loader, device))):
        def measure(data: Any = data) -> tuple[float, str]:
            consume(data, False)  # warm-up: workers start
            rate = batches / timed(device, lambda: consume(data, False))
            pinned = "" if cuda else "pin_memory off: no CUDA; "
            return rate, f"{pinned}{rate / base:.3f} of device-resident"

        table.attempt("CIFAR data", setting, "batches/s", measure)


# -- airbench-cifar10 ----------------------------------------------------------------------------
def airbench(table: Table, device: torch.device, smoke: bool) -> None:
    from trainingloop.examples import Options
    from trainingloop.examples.airbench_cifar10 import recipe

    n = 256 if smoke else 50000
    g = torch.Generator().manual_seed(0)

    def split(count: int) -> tl.data.ArrayDataset:
        return tl.data.ArrayDataset({
            "image": torch.randint(0, 256, (count, 32, 32, 3), dtype=torch.uint8, generator=g),
            "label": torch.randint(0, 10, (count,), generator=g)})

    train, test = split(n), split(n // 5)
    settings: list[tuple[str, Any]] = [("eager", False),
                                       ("compile=True", {"backend": "eager"} if smoke else True)]
    for setting, compile in settings:
        def measure(compile: Any = compile) -> tuple[float, str]:
            with tempfile.TemporaryDirectory() as out:
                options = Options(epochs=2 if smoke else 3, batch_size=128 if smoke else 1024,
                                  device=str(device), compile=bool(compile), out=Path(out),
                                  extra={"widths": "8,16,16"} if smoke else {})
                loop, net, o = recipe(train, test, options, callbacks=[])
                with contextlib.redirect_stdout(io.StringIO()):
                    history = loop.fit(net, epochs=o.epochs, device=o.device, compile=compile,
                                       precision=o.precision)
            per_epoch = [n / epoch["examples_per_second"] for epoch in history.epochs[1:]]
            return min(per_epoch), (f"{n} random CIFAR-shaped images, precision {o.precision}; "
                                    "best epoch after the first (training phase)")

        table.attempt("airbench", setting, "s/epoch", measure)


GROUPS: dict[str, Callable[[Table, torch.device, bool], None]] = {
    "workloads": workloads, "gpt": gpt, "data": cifar_data, "airbench": airbench}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU: prove the script runs (CI)")
    parser.add_argument("--only", nargs="+", choices=list(GROUPS), default=list(GROUPS),
                        help="run only these groups of rows (a rerun under a deadline)")
    args = parser.parse_args()
    device = torch.device("cpu") if args.smoke else tl.devices.resolve_device("auto")
    if not args.smoke and device.type != "cuda":
        parser.error("no CUDA device here: run with --smoke, or on a GPU machine")
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    print(f"device: {name}; torch {torch.__version__}; fit has sync_debug: {FIT_HAS_SYNC_DEBUG}")
    table = Table()
    for group in args.only:
        GROUPS[group](table, device, args.smoke)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
