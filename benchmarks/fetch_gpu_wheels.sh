#!/usr/bin/env bash
# Downloads exactly the wheels listed in benchmarks/gpu-wheels.txt into .whl/ (git-ignored),
# for the GPU machine's image (Python 3.12, x86_64): what benchmarks/gpu_check.sh needs and
# the image lacks. Run it here, where pip reaches the package index; then carry `.whl` with
# the device run. gpu_check.sh refuses to start on a GPU when any listed wheel is missing.
#
#   benchmarks/fetch_gpu_wheels.sh            download (skips wheels already there)
#   benchmarks/fetch_gpu_wheels.sh --check    only say whether every listed wheel is there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIST=benchmarks/gpu-wheels.txt

if [ "${1:-}" != "--check" ]; then
    mkdir -p .whl
    grep -Ev '^\s*(#|$)' "$LIST" | sed 's/\s*#.*//' > .whl/requirements.txt
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl -r .whl/requirements.txt
fi
exec "$PY" -m benchmarks.gpu_wheels "$LIST" .whl
