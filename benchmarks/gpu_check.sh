#!/usr/bin/env bash
# The GPU check: one command, at most ~9.5 minutes on one H200 (step limits 160 + 100 + 180
# + 100 s, plus installing the wheels and touching memory): run it with timeout_s=600.
# JSON results under $RESULTS.
# Steps run in order of what the issue's GPU targets need; each has its own time limit and
# a failed step does not stop the others (the exit status says whether any failed). The
# sizes and limits come from the first H200 run (docs/engine.md).
#
#   1. bench_engine at 512-token documents, bf16: MFU against the bf16 matmul peak measured
#      in the same process, and FlagEmbedding's encode in bf16 beside it.
#   2. profile_engine at 512-token documents, bf16: the engine's wall time per stage with
#      float16 and float32 storage, and torch.profiler's top operators (what bounds it).
#   3. bench_engine, random:full, mixed lengths (some > 4,000 tokens): the engine in bf16 and
#      fp32 (agreement with fp32 on the first 500 documents, MFU against each dtype's
#      measured matmul peak) and FlagEmbedding's encode in bf16 beside it.
#   4. bench_rerank, random:full: the reranker against FlagReranker (fp16).
#
# Every timed side first runs a few inputs untimed (--warmup): CUDA context, cuBLAS and
# attention kernel choice and the allocator's pools are not part of steady throughput. The
# machine's memory is touched once first: a fresh VM backs pages on first touch (~2.5 GB/s
# there, against ~4 GB/s after), which would otherwise fall on whichever side runs first.
# (bench_compile.py --device cuda measured torch.compile at 0.44x eager there: not rerun.)
#
# Usage: benchmarks/gpu_check.sh            on the GPU machine (see the device notes:
#                                           wheels in .whl are installed first if present)
#        benchmarks/gpu_check.sh --dry-run  the same steps on CPU, random:tiny, tiny corpora
#                                           (what CI runs: everything but CUDA itself)
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${RESULTS:-${OUT:-benchmarks/.results}}  # git-ignored; commit a run on purpose
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true

if [ "${1:-}" = "--dry-run" ]; then
    device=cpu model=random:tiny docs=12 long=1 agree=6 fixed_docs=8 pairs=40 peak=0.1
    precisions=auto,fp32 flag=fp32 fixed_precisions=fp32 rerank_precision=fp32
    warmup=2 profile_docs=4 touch_gb=0 limit=300
else
    device=cuda model=random:full docs=2000 long=20 agree=500 fixed_docs=3000 pairs=10000
    peak=0.5 precisions=bf16,fp32 flag=bf16 fixed_precisions=bf16 rerank_precision=fp16
    warmup=64 profile_docs=500 touch_gb=16 limit=0
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        # The device image lacks FlagEmbedding, pydantic and friends: they travel as wheels.
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA here'; \
print(torch.__version__, torch.cuda.get_device_name())" || exit 1
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv || true
fi
if [ "$touch_gb" -gt 0 ]; then
    "$PY" -c "import numpy as np, time; t = time.perf_counter(); \
np.ones($touch_gb << 30, np.uint8); print('touched $touch_gb GB in', round(time.perf_counter() - t, 1), 's')"
fi

failed=0
step() {  # name, seconds, command...: run one step with a time limit, say how long it took
    local name=$1 seconds=$2 started=$SECONDS
    shift 2
    [ "$limit" -gt 0 ] && seconds=$limit
    echo "== $name"
    if timeout "$seconds" "$@"; then
        echo "== $name took $((SECONDS - started)) s"
    else
        echo "== $name FAILED (exit $?) after $((SECONDS - started)) s"
        failed=$((failed + 1))
    fi
}

step "engine, 512-token documents" 160 "$PY" benchmarks/bench_engine.py --device "$device" \
    --model "$model" --docs "$fixed_docs" --fixed-tokens 512 --max-length 512 \
    --precisions "$fixed_precisions" --flag-precision "$fixed_precisions" \
    --warmup "$warmup" --peak-seconds "$peak" \
    --out "$RESULTS/engine-$device-${model/:/-}-512.json"
step "where the engine's time goes" 100 "$PY" benchmarks/profile_engine.py --device "$device" \
    --model "$model" --precision "$fixed_precisions" --docs "$fixed_docs" --fixed-tokens 512 \
    --max-length 512 --warmup "$warmup" --profile-docs "$profile_docs" \
    --out "$RESULTS/profile-$device-${model/:/-}.json"
step "engine, mixed lengths" 180 "$PY" benchmarks/bench_engine.py --device "$device" \
    --model "$model" --docs "$docs" --long-docs "$long" --precisions "$precisions" \
    --flag-precision "$flag" --warmup "$warmup" --agree-docs "$agree" \
    --peak-seconds "$peak" --out "$RESULTS/engine-$device-${model/:/-}.json"
step "reranker" 100 "$PY" benchmarks/bench_rerank.py --device "$device" --model "$model" \
    --pairs "$pairs" --precision "$rerank_precision" --warmup "$((warmup * 4))" \
    --out "$RESULTS/rerank-$device-${model/:/-}.json"
echo "results in $RESULTS ($failed failed steps)"
[ "$failed" -eq 0 ]
