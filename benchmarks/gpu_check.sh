#!/usr/bin/env bash
# The GPU check: one command, about 5-8 minutes on one H200, JSON results under $RESULTS.
#
#   1. bench_engine, random:full, mixed lengths (some > 4,000 tokens): the engine in bf16,
#      fp16 and fp32 (agreement with fp32, MFU against each dtype's measured matmul peak)
#      and FlagEmbedding's encode in fp16 beside it.
#   2. bench_engine at 512-token documents, bf16: MFU there, and FlagEmbedding in bf16.
#   3. bench_rerank, random:full: the reranker against FlagReranker (fp16).
#
# Usage: benchmarks/gpu_check.sh            on the GPU machine (see the device notes:
#                                           wheels in .wh* are installed first if present)
#        benchmarks/gpu_check.sh --dry-run  the same steps on CPU, random:tiny, tiny corpora
#                                           (what CI runs: everything but CUDA itself)
set -euo pipefail
cd "$(dirname "$0")/.."

RESULTS=${RESULTS:-${OUT:-benchmarks/results}}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    # The device image lacks FlagEmbedding, pydantic and friends: they travel as wheels.
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true

if [ "${1:-}" = "--dry-run" ]; then
    device=cpu model=random:tiny docs=12 long=1 fixed_docs=8 pairs=40 peak=0.1
    precisions=auto,fp32 flag=fp32 fixed_precisions=fp32 rerank_precision=fp32
else
    device=cuda model=random:full docs=4000 long=40 fixed_docs=20000 pairs=20000 peak=2
    precisions=bf16,fp16,fp32 flag=fp16 fixed_precisions=bf16 rerank_precision=fp16
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA here'; \
print(torch.__version__, torch.cuda.get_device_name())"
fi

step() {  # name, command...: run one step with a time limit, say how long it took
    local name=$1 started=$SECONDS
    shift
    echo "== $name"
    timeout 300 "$@"
    echo "== $name took $((SECONDS - started)) s"
}

step "engine, mixed lengths" "$PY" benchmarks/bench_engine.py --device "$device" \
    --model "$model" --docs "$docs" --long-docs "$long" --precisions "$precisions" \
    --flag-precision "$flag" --peak-seconds "$peak" \
    --out "$RESULTS/engine-$device-${model/:/-}.json"
step "engine, 512-token documents" "$PY" benchmarks/bench_engine.py --device "$device" \
    --model "$model" --docs "$fixed_docs" --fixed-tokens 512 --max-length 512 \
    --precisions "$fixed_precisions" --flag-precision "$fixed_precisions" \
    --peak-seconds "$peak" --out "$RESULTS/engine-$device-${model/:/-}-512.json"
step "reranker" "$PY" benchmarks/bench_rerank.py --device "$device" --model "$model" \
    --pairs "$pairs" --precision "$rerank_precision" \
    --out "$RESULTS/rerank-$device-${model/:/-}.json"
echo "results in $RESULTS"
