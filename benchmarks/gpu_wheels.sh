#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_suite.sh needs on a GPU machine that has Python 3.12 + torch but
# no package registry: the packages vaura imports that such an image lacks (PyAV, DAC and DAC's import-time
# dependencies). Versions are the project's pins in constraints.txt; --no-deps because everything else
# (numpy, torch, torchaudio, scipy, rich, tqdm, pandas, pyyaml, einops, tensorboard, ...) is already there.
#
#   bash benchmarks/gpu_wheels.sh [DEST]        # default DEST: .whl (git-ignored; carry it to the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
# compiled packages: manylinux wheels for CPython 3.12; pure-Python ones: wheels built here (some are sdists only)
BINARY=(av soundfile cffi)
PURE=(descript-audio-codec descript-audiotools argbind docstring-parser ffmpy flatten-dict julius randomname
      importlib-resources pycparser)
pin() {
  local found
  found=$(grep -iE "^${1//-/[-_]}==" constraints.txt | head -n 1 || true)
  [[ -n "$found" ]] || { echo "gpu_wheels: $1 has no pin in constraints.txt" >&2; exit 1; }
  echo "$found"
}
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
for name in "${BINARY[@]}"; do
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$DEST" "$(pin "$name")"
done
for name in "${PURE[@]}"; do
  "$PY" -m pip wheel --quiet --no-deps -w "$DEST" "$(pin "$name")"
done
if ls "$DEST"/*.whl | grep -vE -- '-none-any\.whl$|-abi3-manylinux|-cp312-cp312-manylinux|-none-manylinux'; then
  echo "gpu_wheels: the wheels above may not install on CPython 3.12 x86_64" >&2
  exit 1
fi
du -sh "$DEST"
