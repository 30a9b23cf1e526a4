"""Time the same workloads through a hand-written loop, trainingloop and its peers.

    python benchmarks/compare.py [--repeats 3] [--workloads W1 W2 W3] [--python PATH]

Every (workload, runner) pair runs in a fresh process (benchmarks/workloads.py), interleaved
over the repeats; the table gives the median seconds (min-max), the ratio to the hand-written
loop, the final training loss (all runners should roughly agree: same work), peak resident
memory and import time. Peers are included when importable by ``--python`` (``make
bench-peers`` builds a separate environment with them). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
PEERS = {"lightning": "lightning", "keras": "keras", "ignite": "ignite",
         "accelerate": "accelerate"}


def available(python: str, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([python, "-c", code]).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["W1", "W2", "W3"])
    parser.add_argument("--runners", nargs="+")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    runners = args.runners or ["hand", "tl", "tl-compiled"] + [
        name for name, module in PEERS.items() if available(args.python, module)]
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for w in args.workloads:
            for runner in runners:
                out = subprocess.run([args.python, str(HERE / "workloads.py"), w, runner],
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{w} {runner} failed: {out.stderr.strip().splitlines()[-1:]}",
                          file=sys.stderr)
                    continue
                results.setdefault((w, runner), []).append(json.loads(out.stdout.splitlines()[-1]))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    print("| workload | runner | seconds, median (min-max) | ratio to hand | final train loss "
          "| peak MB | import s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w in args.workloads:
        hand = results.get((w, "hand"))
        base = statistics.median(r["seconds"] for r in hand) if hand else None
        for runner in runners:
            runs = results.get((w, runner))
            if not runs:
                print(f"| {w} | {runner} | failed | | | | |")
                continue
            seconds = [r["seconds"] for r in runs]
            median = statistics.median(seconds)
            ratio = f"{median / base:.3f}" if base else "-"
            print(f"| {w} | {runner} | {median:.3f} ({min(seconds):.3f}-{max(seconds):.3f}) | "
                  f"{ratio} | {statistics.median(r['loss'] for r in runs):.4f} | "
                  f"{max(r['peak_mb'] for r in runs):.0f} | "
                  f"{statistics.median(r['import_seconds'] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
