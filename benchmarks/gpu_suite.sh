#!/usr/bin/env bash
# The one GPU benchmark run: every speed figure (decoder, end to end, batched, training MFU, cache) beside its
# reference-style figure, in one JSON (what is measured: the docstring of benchmarks/gpu_suite.py).
# Needs about 8 minutes on one H200; made for a lent GPU machine with Python 3.12 + torch but no registry.
#
#   1. here, once: bash benchmarks/gpu_wheels.sh      # PyAV, DAC and DAC's import-time deps into .whl/ (~37 MB,
#                                                     # git-ignored; versions pinned by constraints.txt). The list
#                                                     # was checked by running `gpu_suite.py --tiny` with every
#                                                     # package the GPU image lacks made unimportable.
#   2. there, from the repository root, with .whl carried along (the device tool: carry [".whl"], timeout 600 s):
#          bash benchmarks/gpu_suite.sh
#   3. commit the JSON it wrote: benchmarks/results/<date>-<device>.json (also copied to $OUT when set)
#
# The wheels are installed with --no-index --no-deps into /tmp/vaura-site (nothing is fetched there); without
# .whl/ the suite still runs: the decoder, batched and training sections need only torch, and the sections that
# need PyAV or DAC (e2e, cache) record the import error.
# Extra arguments go to gpu_suite.py (e.g. --budget-s 300).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vaura-site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/vaura-site:$PYTHONPATH
fi
"$PY" -c "import av, dac" 2>/dev/null || echo "gpu_suite.sh: PyAV or DAC does not import (wheels not carried?)" >&2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
mkdir -p benchmarks/results
marker=$(mktemp)
timeout 540 "$PY" benchmarks/gpu_suite.py "$@"
rc=$?
result=$(find benchmarks/results -name '*.json' -newer "$marker" | head -n 1)
rm -f "$marker"
if [[ -n "${OUT:-}" && -n "$result" ]]; then
  cp "$result" "$OUT/"
fi
echo "gpu_suite.sh: exit $rc, result ${result:-none}"
exit $rc
