"""Two anchors on one GPU: airbench94 and nanoGPT's ``train.py`` against the same work through
``fit``, each side in its own process, interleaved over rounds.

    python benchmarks/anchors.py --anchors DIR                 # on a CUDA machine
    python benchmarks/anchors.py --anchors DIR --only nanogpt --rounds 2
    python benchmarks/anchors.py --smoke                       # our halves, tiny, on the CPU

``DIR`` holds the anchors' own files, unchanged and not part of this repository:
``DIR/airbench94_compiled.py`` (KellerJordan/cifar10-airbench, ``legacy/airbench94_compiled.py``)
and ``DIR/nanoGPT/{train.py,model.py,configurator.py}`` (karpathy/nanoGPT).

- **airbench**: CIFAR-shaped random data (50000 uint8 images, seed 0; the full CIFAR-10 is not
  offline here) for both. Theirs: the script's ``make_net``/``main`` imported as a module, both
  networks compiled with ``torch.compile``'s default mode (the script asks for
  ``max-autotune``, minutes of compilation we cannot afford; ours uses the default too), a
  warm-up run, then one timed run; seconds per training epoch from the script's own CUDA-event
  timer (epochs 2-9: epoch 1 holds the whitening, epoch 10 is partial). Ours: the
  ``airbench-cifar10`` recipe through ``fit(compile=True)`` in bf16-mixed, 4 epochs, seconds
  per training phase of epochs 2-4. Theirs drops the last partial batch (48 × 1024 examples),
  ours does not (50000): the ratio is of seconds per example.
- **nanoGPT**: GPT-2 124M (12 layers, 768 wide, block 1024, vocabulary 50304), batch 12 × 1024
  of random tokens from the same ``train.bin``, AdamW (fused) with its schedule, clipping at 1,
  bf16. Theirs: ``train.py --compile=True --dtype=bfloat16 --gradient_accumulation_steps=1``,
  the median of its printed per-iteration times from iteration 10 on. Ours: its ``GPT`` and
  ``configure_optimizers`` through ``fit(compile=True, precision="bf16-mixed",
  clip_grad_norm=1.0)`` with ``TokenDataset.random`` over the same file, tokens per second of
  epochs 2-3 (40 steps each; epoch 1 holds the compilation). MFU with nanoGPT's formula
  (6N + 12·L·H·Q·T FLOPs per token) against 989 TFLOP/s (H200, dense bf16).

Each side prints one ``RESULT {json}`` line; the parent prints a Markdown table and the ratios
(median over rounds), and with ``--out`` writes the table and every side's log there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
PEAK_BF16 = 989e12  # H200 SXM dense bf16, FLOP/s
GPT2 = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}
TINY_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": 128}


def result(**values: Any) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def random_tokens(path: Path, count: int, vocabulary: int) -> None:
    import numpy as np

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        rng.integers(0, min(vocabulary, 50257), count, dtype=np.uint16).tofile(path)


# -- airbench --------------------------------------------------------------------------------------
def cifar_like(n: int, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def airbench_theirs(anchors: Path, work: Path, smoke: bool) -> None:
    import torch

    if smoke:
        result(side="theirs", skipped="airbench94 needs CUDA")
        return
    os.chdir(work)
    Path("cifar10").mkdir(exist_ok=True)
    for name, n, seed in (("train.pt", 50000, 0), ("test.pt", 10000, 1)):
        images, labels = cifar_like(n, seed)
        torch.save({"images": images, "labels": labels, "classes": [str(i) for i in range(10)]},
                   Path("cifar10") / name)
    spec = importlib.util.spec_from_file_location("airbench94", anchors / "airbench94_compiled.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    totals: list[tuple[Any, float]] = []
    printed = module.print_training_details

    def capture(variables: dict[str, Any], is_final_entry: bool) -> None:
        totals.append((variables.get("epoch"), variables["total_time_seconds"]))
        printed(variables, is_final_entry)

    module.print_training_details = capture
    trainbias, freezebias = module.make_net(), module.make_net()
    freezebias[0].bias.requires_grad = False
    trainbias, freezebias = torch.compile(trainbias), torch.compile(freezebias)
    started = time.perf_counter()
    module.main("warmup", trainbias, freezebias)
    warmup = time.perf_counter() - started
    totals.clear()
    module.main(0, trainbias, freezebias)
    epochs = [t for epoch, t in totals if isinstance(epoch, int)]
    per_epoch = [b - a for a, b in itertools.pairwise(epochs)][:8]  # epochs 2..9
    examples = 50000 // 1024 * 1024
    seconds = statistics.median(per_epoch)
    result(side="theirs", seconds_per_epoch=seconds, examples=examples,
           seconds_per_example=seconds / examples, epochs=per_epoch, warmup_s=warmup)


def airbench_ours(work: Path, smoke: bool, channels_last: bool) -> None:
    import torch

    sys.path.insert(0, str(SRC))
    import trainingloop as tl
    from trainingloop.examples import Options
    from trainingloop.examples.airbench_cifar10 import recipe

    n = 512 if smoke else 50000
    train, test = cifar_like(n, 0), cifar_like(n // 5, 1)
    split = [tl.data.ArrayDataset({"image": x, "label": y}) for x, y in (train, test)]
    extra = {"channels_last": "1" if channels_last else "0"}
    if smoke:
        extra["widths"] = "8,16,16"
    options = Options(epochs=4, batch_size=128 if smoke else 1024,
                      device="cpu" if smoke else "cuda", compile=not smoke, out=work / "run",
                      extra=extra)
    loop, net, o = recipe(split[0], split[1], options, callbacks=[])
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        history = loop.fit(net, epochs=o.epochs, device=o.device, compile=o.compile,
                           precision=o.precision)
    per_epoch = [n / epoch["examples_per_second"] for epoch in history.epochs[1:]]
    seconds = statistics.median(per_epoch)
    result(side="ours" + ("" if channels_last else " (NCHW)"), seconds_per_epoch=seconds,
           examples=n, seconds_per_example=seconds / n, epochs=per_epoch,
           total_s=time.perf_counter() - started, precision=o.precision,
           torch=torch.__version__)


# -- nanoGPT ---------------------------------------------------------------------------------------
def flops_per_token(model: Any, config: dict[str, Any]) -> float:
    """nanoGPT's ``estimate_mfu``: 6N + 12·L·H·Q·T."""
    n = model.get_num_params()
    layers, heads = config["n_layer"], config["n_head"]
    return 6 * n + 12 * layers * heads * (config["n_embd"] // heads) * config["block_size"]


def nanogpt_theirs(anchors: Path, work: Path, smoke: bool, iterations: int) -> None:
    config = TINY_GPT if smoke else GPT2
    batch = 4 if smoke else 12
    random_tokens(work / "data" / "random" / "train.bin", 5_000_000, config["vocab_size"])
    random_tokens(work / "data" / "random" / "val.bin", 100_000, config["vocab_size"])
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(anchors / "nanoGPT" / name, work / name)
    arguments = ["--dataset=random", f"--batch_size={batch}",
                 f"--block_size={config['block_size']}", "--gradient_accumulation_steps=1",
                 f"--max_iters={iterations}", "--eval_interval=1000000", "--eval_iters=1",
                 "--log_interval=1", "--out_dir=out", "--always_save_checkpoint=False"]
    arguments += (["--device=cpu", "--compile=False", "--dtype=float32", "--n_layer=2",
                   "--n_head=2", "--n_embd=32"] if smoke else ["--compile=True", "--dtype=bfloat16"])
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "train.py", *arguments], cwd=work, text=True,
                         capture_output=True, check=False, timeout=150)
    print(run.stdout[-4000:], run.stderr[-4000:], flush=True)
    if run.returncode:
        raise RuntimeError(f"nanoGPT's train.py exited with {run.returncode}")
    times = []
    for line in run.stdout.splitlines():
        if line.startswith("iter ") and "time " in line:
            number = int(line.split()[1].rstrip(":"))
            milliseconds = float(line.split("time ")[1].split("ms")[0])
            if number >= 10:
                times.append(milliseconds / 1000)
    seconds = statistics.median(times)
    tokens = batch * config["block_size"] / seconds
    sys.path.insert(0, str(work))
    from model import GPT, GPTConfig  # nanoGPT's, for the parameter count

    model = GPT(GPTConfig(**config, bias=False, dropout=0.0))
    result(side="theirs", tokens_per_second=tokens, seconds_per_step=seconds,
           mfu=flops_per_token(model, config) * tokens / PEAK_BF16, steps=len(times),
           total_s=time.perf_counter() - started)


def nanogpt_ours(anchors: Path, work: Path, smoke: bool, steps: int) -> None:
    import torch

    sys.path.insert(0, str(SRC))
    sys.path.insert(0, str(anchors / "nanoGPT"))
    from model import GPT, GPTConfig  # nanoGPT's own model

    import trainingloop as tl

    config = TINY_GPT if smoke else GPT2
    batch = 4 if smoke else 12
    device = "cpu" if smoke else "cuda"
    tokens_file = work / "data" / "random" / "train.bin"
    random_tokens(tokens_file, 5_000_000, config["vocab_size"])
    torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(1337)
    model = GPT(GPTConfig(**config, bias=False, dropout=0.0)).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device)

    def rate(it: int, peak: float = 6e-4, low: float = 6e-5, warmup: int = 2000,
             decay: int = 600000) -> float:
        """train.py's ``get_lr``, as a factor of the peak."""
        if it < warmup:
            return (it + 1) / (warmup + 1)
        ratio = min(1.0, (it - warmup) / (decay - warmup))
        return (low + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - low)) / peak

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    stream = tl.data.TokenDataset.random(tokens_file, config["block_size"], batch, seed=1337)

    def step(loop: tl.TrainingLoop, model: torch.nn.Module) -> torch.Tensor:
        logits, loss = model(loop.last_input, loop.last_target)
        loop.last_output = logits
        return loss

    started = time.perf_counter()

    def progress(loop: tl.TrainingLoop, event: tl.Event) -> None:
        """Where the time goes, on stderr (a side stopped by its timeout still says)."""
        if event is tl.Event.EPOCH_END or (event is tl.Event.BATCH_END and loop.global_step < 3):
            print(f"{event.name} step {loop.global_step}: {time.perf_counter() - started:.1f} s",
                  file=sys.stderr, flush=True)

    loop = tl.TrainingLoop(stream, None, optimizer=optimizer,
                           callbacks=[tl.LearningRateScheduler(schedule), progress])
    with contextlib.redirect_stdout(io.StringIO()):
        history = loop.fit(model, epochs=3, steps_per_epoch=steps, device=device,
                           compile=not smoke, precision="32" if smoke else "bf16-mixed",
                           clip_grad_norm=1.0, step=step)
    rates = [epoch["tokens_per_second"] for epoch in history.epochs[1:]]
    tokens = statistics.median(rates)
    result(side="ours", tokens_per_second=tokens, seconds_per_step=batch * config["block_size"]
           / tokens, mfu=flops_per_token(model, config) * tokens / PEAK_BF16,
           epochs=rates, total_s=time.perf_counter() - started)


# -- the parent ------------------------------------------------------------------------------------
SIDES = {"airbench": ["theirs", "ours", "ours-nchw"], "nanogpt": ["theirs", "ours"]}


def child(args: argparse.Namespace) -> None:
    anchor, side = args.side.split(":")
    work = Path(args.work)
    if anchor == "airbench":
        if side == "theirs":
            airbench_theirs(args.anchors, work, args.smoke)
        else:
            airbench_ours(work, args.smoke, channels_last=side == "ours")
    elif side == "theirs":
        nanogpt_theirs(args.anchors, work, args.smoke, 14 if args.smoke else 40)
    else:
        nanogpt_ours(args.anchors, work, args.smoke, 3 if args.smoke else 40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=Path, default=HERE.parent / ".anchors",
                        help="folder with the anchors' own scripts (see above)")
    parser.add_argument("--only", nargs="+", choices=list(SIDES), default=list(SIDES),
                        help="run only these anchors")
    parser.add_argument("--sides", nargs="+", help="run only these sides (theirs, ours, ...)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of each pair")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed to one side")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, help="write the table and the logs here")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.anchors = args.anchors.resolve()
    if args.side:
        child(args)
        return
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    lines = ["| anchor | side | round | value | unit | note |", "| --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(1, args.rounds + 1):
            for anchor in args.only:
                work = Path(scratch) / anchor
                work.mkdir(exist_ok=True)
                for side in [s for s in SIDES[anchor] if not args.sides or s in args.sides]:
                    if side == "theirs" and not args.anchors.exists():
                        print(f"| {anchor} | {side} | {round_} |  |  | skipped: no "
                              f"{args.anchors} |", flush=True)
                        continue
                    started = time.perf_counter()
                    command = [sys.executable, __file__, "--side", f"{anchor}:{side}", "--work",
                               str(work), "--anchors", str(args.anchors)]
                    if args.smoke:
                        command.append("--smoke")
                    try:
                        run = subprocess.run(command, text=True, capture_output=True,
                                             timeout=args.timeout, check=False)
                        output, code = run.stdout + run.stderr, run.returncode
                    except subprocess.TimeoutExpired as error:
                        output = f"{error.stdout or ''}{error.stderr or ''}"
                        code = -1
                        output = output if isinstance(output, str) else str(output)
                    if args.out:
                        (args.out / f"{anchor}-{side}-{round_}.log").write_text(output)
                    values = [json.loads(line[7:]) for line in output.splitlines()
                              if line.startswith("RESULT ")]
                    seconds = time.perf_counter() - started
                    if code or not values:
                        note = f"failed (exit {code}, {seconds:.0f} s): " + " | ".join(
                            output.strip().splitlines()[-3:])[-300:]
                        row = f"| {anchor} | {side} | {round_} |  |  | {note} |"
                    elif "skipped" in values[0]:
                        row = f"| {anchor} | {side} | {round_} |  |  | {values[0]['skipped']} |"
                    else:
                        value = values[0]
                        found.setdefault((anchor, side), []).append(value)
                        if anchor == "airbench":
                            row = (f"| {anchor} | {side} | {round_} | "
                                   f"{value['seconds_per_epoch']:.4f} | s/epoch | "
                                   f"{value['examples']} examples; epochs "
                                   f"{', '.join(f'{e:.4f}' for e in value['epochs'])}; "
                                   f"{seconds:.0f} s in all |")
                        else:
                            row = (f"| {anchor} | {side} | {round_} | "
                                   f"{value['tokens_per_second']:.0f} | tokens/s | "
                                   f"MFU {100 * value['mfu']:.1f} %; "
                                   f"{1000 * value['seconds_per_step']:.2f} ms/step; "
                                   f"{seconds:.0f} s in all |")
                    print(row, flush=True)
                    lines.append(row)
    summary = []
    for anchor, side in found:
        if side == "theirs" or (anchor, "theirs") not in found:
            continue
        key = "seconds_per_example" if anchor == "airbench" else "tokens_per_second"
        ours = statistics.median(v[key] for v in found[(anchor, side)])
        theirs = statistics.median(v[key] for v in found[(anchor, "theirs")])
        what = "time per example" if anchor == "airbench" else "tokens per second"
        summary.append(f"{anchor}: {side} / theirs = {ours / theirs:.3f} ({what}, median of "
                       f"{len(found[(anchor, side)])} round(s))")
    print("\n".join(summary), flush=True)
    if args.out:
        (args.out / "anchors.md").write_text("\n".join([*lines, "", *summary]) + "\n")


if __name__ == "__main__":
    main()
