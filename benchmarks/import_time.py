"""Import cost of trainingloop over torch alone: median of fresh interpreters.

    python benchmarks/import_time.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def timed(module: str) -> float:
    out = subprocess.run([sys.executable, "-c", CODE.format(module=module)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch_times, tl_times = [], []
    for _ in range(args.repeats):  # interleaved: the same disk cache for both
        torch_times.append(timed("torch"))
        tl_times.append(timed("trainingloop"))
    t, tl = statistics.median(torch_times), statistics.median(tl_times)
    print(f"import torch        median {t:.3f} s")
    print(f"import trainingloop median {tl:.3f} s (includes torch)")
    print(f"extra cost          {tl - t:.3f} s")


if __name__ == "__main__":
    main()
