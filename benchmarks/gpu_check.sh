#!/usr/bin/env bash
# The GPU check, one script, each part with its own timeout, inside one deadline:
#   1. pytest -m cuda (the CUDA-only tests)           -> $OUT/pytest.log
#   2. the nanoGPT and airbench anchors               -> $OUT/anchors.md, $OUT/logs.tar.gz
#   3. benchmarks/gpu.py's table (cheap groups first) -> $OUT/gpu.md
# Usage on a GPU machine, from the repository root (the anchors' scripts in .anchors/, see
# benchmarks/anchors.py):  OUT=/some/folder bash benchmarks/gpu_check.sh [SECONDS] [PARTS...]
# PARTS: any of pytest nanogpt airbench table (default: all, in that order).
set -uo pipefail
OUT=${OUT:-gpu-check}
BUDGET=${1:-470}
shift || true
PARTS=${*:-pytest nanogpt airbench table}
mkdir -p "$OUT" "$OUT/logs"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
END=$(( $(date +%s) + BUDGET ))
left() { echo $(( END - $(date +%s) )); }
cap() { local want=$1 rest; rest=$(left); (( rest < want )) && want=$rest; (( want < 1 )) && want=1; echo "$want"; }

{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

for part in $PARTS; do
  echo "== $part: $(left) s left"
  case $part in
    pytest)
      timeout "$(cap 150)" $PY -m pytest -q -m cuda tests/test_gpu.py -p no:cacheprovider \
        -o addopts="" 2>&1 | tee "$OUT/pytest.log" | tail -25 ;;
    nanogpt|airbench)
      timeout "$(cap 330)" $PY benchmarks/anchors.py --only "$part" --timeout "$(cap 160)" ${SIDES:+--sides $SIDES} \
        --out "$OUT/logs/$part" 2>&1 | tee -a "$OUT/anchors.md" ;;
    table)
      pkill -f "train.py --dataset=random" || true
      timeout "$(cap 400)" $PY benchmarks/gpu.py --only gpt data workloads airbench 2>&1 \
        | tee "$OUT/gpu.md" ;;
  esac
done
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
echo "== done, $(left) s left of $BUDGET"
