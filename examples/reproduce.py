"""Run every example as ``trainingloop run NAME`` would and print the README's results table.

    TRAININGLOOP_DATA=../shared/data python examples/reproduce.py [--skip-slow]

Each row: the example, what it is compared with, the measured values, and the wall time of
the whole run (data loading included) on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import warnings
from pathlib import Path

import trainingloop as tl
from trainingloop.examples import Options, load, unigram_perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-slow", action="store_true")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="reproduce-"))
    rows = []

    def run(name: str, **options: object) -> tuple[tl.History, float]:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            history = load(name).run(Options(out=out / name, **options))  # type: ignore[arg-type]
        return history, time.perf_counter() - started

    h, t = run("digits")
    rows.append(("digits (`make demo`)", "val. accuracy >= 0.95",
                 f"val. accuracy {h['validation/accuracy'][-1]:.4f}", t))
    h, t = run("linear-regression")
    rows.append(("linear-regression", "d2l: w, b recovered",
                 f"train loss {h['train/loss'][-1]:.2e}", t))
    h, t = run("mlp-mnist")
    acc = h["validation/accuracy"]
    rows.append(("mlp-mnist", "MindSpore: 85.3% / 90.2% after 1 / 2 epochs",
                 f"test accuracy {acc[0]:.4f} / {acc[1]:.4f}", t))
    h, t = run("softmax-fashion-mnist")
    rows.append(("softmax-fashion-mnist", "d2l asserts: loss < 0.5, train acc > 0.7; test >= 0.80",
                 f"loss {h['train/loss'][-1]:.4f}, train acc {h['train/accuracy'][-1]:.4f}, "
                 f"test acc {h['validation/accuracy'][-1]:.4f}", t))
    h, t = run("lenet-fashion-mnist")
    rows.append(("lenet-fashion-mnist", "d2l (zh, PyTorch): test 0.779 / 0.814 in two builds",
                 f"loss {h['train/loss'][-1]:.3f}, train {h['train/accuracy'][-1]:.3f}, "
                 f"test {h['validation/accuracy'][-1]:.3f}", t))
    if not args.skip_slow:
        h, t = run("lenet-mnist")
        rows.append(("lenet-mnist (12 epochs)", "S4TF LeNet-MNIST",
                     f"test accuracy {h['validation/accuracy'][-1]:.4f}", t))
    h, t = run("bert-cola")
    rows.append(("bert-cola", "positive MCC (from scratch, no pre-training)",
                 f"best dev MCC {max(h['validation/mcc']):.4f}, last {h['validation/mcc'][-1]:.4f}",
                 t))
    h, t = run("gpt-shakespeare", epochs=1)
    base = unigram_perplexity(tl.datasets.tiny_shakespeare("train"),
                              tl.datasets.tiny_shakespeare("validation"))
    rows.append(("gpt-shakespeare (1 epoch)", f"unigram perplexity {base:.2f}",
                 f"val. perplexity {h['validation/perplexity'][-1]:.2f}", t))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the examples warn themselves when they fall back
        fit_split, eval_split = load("gpt-wikitext2").splits()
        images = len(load("resnet-cifar10").datasets()[0])
    h, t = run("gpt-wikitext2", epochs=2)
    base = unigram_perplexity(
        tl.datasets.wikitext2(fit_split, vocabulary_split=fit_split),
        tl.datasets.wikitext2(eval_split, vocabulary_split=fit_split))
    protocol = ("" if fit_split == "train" else
                f"`train_split={fit_split}`: train={fit_split}, eval={eval_split}, with a warning")
    rows.append((f"gpt-wikitext2 (2 epochs{'; ' + protocol if protocol else ''})",
                 f"unigram perplexity {base:.1f}",
                 f"{eval_split} perplexity {h['validation/perplexity'][-1]:.1f}", t))
    h, t = run("resnet-cifar10", epochs=2)
    copy = ("the full set" if images == 50000 else
            f"`data=auto` read the {images}-image `cifar-10-subset/`, with a warning")
    rows.append((f"resnet-cifar10 (ResNet-20, 2 epochs; {copy})",
                 "full run (>= 91%) not measured: no GPU lent",
                 f"test accuracy {h['validation/accuracy'][-1]:.4f}", t))
    print("| example | reference | measured | seconds |")
    print("| --- | --- | --- | --- |")
    for name, reference, measured, seconds in rows:
        print(f"| {name} | {reference} | {measured} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
