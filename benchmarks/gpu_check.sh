#!/usr/bin/env bash
# The GPU check: one command, at most ~8 minutes on one H200 (step limits 100 + 50 + 70 +
# 55 + 100 + 50 + 45 s, plus installing the wheels and touching memory): allow it 9 minutes.
# JSON results under $RESULTS.
# Steps run in order of what the issue's GPU targets need; each has its own time limit and
# a failed step does not stop the others (the exit status says whether any failed). The
# sizes and limits come from the first H200 run (docs/engine.md).
#
#   1. bench_engine at 512-token documents, bf16: MFU against the bf16 matmul peak measured
#      in the same process, the same with each batch finished at once ("-sync": does the
#      launch/finish overlap pay?), and FlagEmbedding's encode in bf16 beside it.
#   2. profile_engine at 512-token documents, bf16: the engine's wall time per stage with
#      float16 and float32 storage, and torch.profiler's top operators (what bounds it).
#   3. bench_worker at 512-token documents, float16 storage: the worker path end to end
#      (`m3pipe encode`, and `m3pipe run --workers 1` with one and with two slots taking
#      turns on the GPU) with the real engine in fp16, then with the stand-in engine
#      (stub:full): what the host allows around the GPU.
#   4. bench_engine, random:full, mixed lengths (some > 4,000 tokens): the engine in bf16
#      (padded batches through variable-length flash attention), bf16-sdpa (SDPA with its
#      mask, as before) and fp32 (agreement with fp32 on the first 400 documents, MFU
#      against each dtype's measured matmul peak) and FlagEmbedding's encode in bf16 beside it.
#   5. bench_rerank, random:full: the reranker against FlagReranker (fp16); the dry run adds
#      an engine side in another precision (bf16-sdpa), as a CPU run compares them.
#   6. tests/pipeline/engine/test_cuda_attention.py's CUDA tests (-k on_cuda): torch's varlen_attn
#      against masked SDPA, and a padded batch launched with torch's sync debug mode set to
#      "error" (the CPU suite runs the rest of the file with a stand-in kernel; not in the
#      dry run).
#
# The image lacks FlagEmbedding, pydantic, celery, redis and friends: they travel as the
# wheels benchmarks/gpu-wheels.txt lists (benchmarks/fetch_gpu_wheels.sh downloads them into
# .whl here; carry .whl). On the GPU the check stops at once, saying so, if any is missing.
#
# Every timed side first runs a few inputs untimed (--warmup): CUDA context, cuBLAS and
# attention kernel choice and the allocator's pools are not part of steady throughput. The
# machine's memory is touched once first: a fresh VM backs pages on first touch (~2.5 GB/s
# there, against ~4 GB/s after), which would otherwise fall on whichever side runs first.
# (bench_compile.py --device cuda measured torch.compile at 0.44x eager there: not rerun.)
#
# Usage: benchmarks/gpu_check.sh            on the GPU machine (the wheels in $WHEELS, .whl
#                                           by default, are checked and installed first)
#        benchmarks/gpu_check.sh --dry-run  the same steps on CPU, random:tiny, tiny corpora
#                                           (what CI runs: everything but CUDA itself)
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${RESULTS:-${OUT:-benchmarks/.results}}  # git-ignored; commit a run on purpose
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true

if [ "${1:-}" = "--dry-run" ]; then
    device=cpu model=random:tiny docs=12 long=1 agree=6 fixed_docs=8 pairs=40 peak=0.03
    precisions=auto,fp32 flag=fp32 fixed_precisions=fp32 rerank_precision=fp32
    peak_square=512 warmup=2 profile_docs=4 touch_gb=0 limit=300 worker_docs=24
    worker_precision=fp32
    mixed_max=1024  # the long text truncated: FlagEmbedding pads every text to it (10 s of CI)
    disk_bytes=0  # the disk's bandwidth not measured: 2 GiB written for nothing a dry run uses
    stub=stub:tiny real_paths=encode stub_paths=run stub_slots=2  # each path once: CI's time
    fixed_flag=--no-flag  # FlagEmbedding's side runs in the mixed-length step
    rerank_more="--per-query 4 --engine-precisions bf16-sdpa"  # the engine's own sides too
else
    device=cuda model=random:full docs=1200 long=12 agree=400 fixed_docs=2000 pairs=6000
    peak=0.5 peak_square=4096 precisions=bf16,bf16-sdpa,fp32 flag=bf16 fixed_precisions=bf16
    rerank_precision=fp16
    warmup=64 profile_docs=400 touch_gb=16 limit=0 worker_docs=4000 worker_precision=fp16
    stub=stub:full real_paths=encode,run stub_paths=encode,run stub_slots=1,2 fixed_flag=
    rerank_more= mixed_max=8192 disk_bytes=$((256 << 20))  # the disk beside the worker path
    # Every listed wheel, exactly, or nothing runs: a missing one would fail a step later.
    "$PY" -m benchmarks.gpu_wheels benchmarks/gpu-wheels.txt "$WHEELS" || exit 1
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
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

step "engine, 512-token documents" 100 "$PY" -m benchmarks.bench_engine --device "$device" \
    --model "$model" --docs "$fixed_docs" --fixed-tokens 512 --max-length 512 \
    --precisions "$fixed_precisions,$fixed_precisions-sync" --flag-precision "$fixed_precisions" $fixed_flag \
    --warmup "$warmup" --peak-seconds "$peak" --peak-square "$peak_square" \
    --out "$RESULTS/engine-$device-${model/:/-}-512.json"
step "where the engine's time goes" 50 "$PY" -m benchmarks.profile_engine --device "$device" \
    --model "$model" --precision "$fixed_precisions" --docs "$fixed_docs" --fixed-tokens 512 \
    --max-length 512 --warmup "$warmup" --profile-docs "$profile_docs" \
    --out "$RESULTS/profile-$device-${model/:/-}.json"
step "worker path, real engine" 70 "$PY" -m benchmarks.bench_worker --device "$device" \
    --model "$model" --precision "$worker_precision" --documents "$worker_docs" \
    --doc-tokens 512 --dtypes float16 --paths "$real_paths" --slots 1,2 --disk-bytes "$disk_bytes" \
    --out "$RESULTS/worker-$device-${model/:/-}.json"
step "worker path, stand-in engine" 55 "$PY" -m benchmarks.bench_worker --device "$device" \
    --model "$stub" --documents "$worker_docs" --doc-tokens 512 --dtypes float16 \
    --paths "$stub_paths" --slots "$stub_slots" --disk-bytes "$disk_bytes" \
    --out "$RESULTS/worker-$device-${stub/:/-}.json"
step "engine, mixed lengths" 100 "$PY" -m benchmarks.bench_engine --device "$device" \
    --model "$model" --docs "$docs" --long-docs "$long" --max-length "$mixed_max" \
    --precisions "$precisions" --flag-precision "$flag" --warmup "$warmup" --agree-docs "$agree" \
    --peak-seconds "$peak" --peak-square "$peak_square" \
    --out "$RESULTS/engine-$device-${model/:/-}.json"
step "reranker" 50 "$PY" -m benchmarks.bench_rerank --device "$device" --model "$model" \
    --pairs "$pairs" --precision "$rerank_precision" --warmup "$((warmup * 4))" $rerank_more \
    --peak-seconds "$peak" --peak-square "$peak_square" \
    --out "$RESULTS/rerank-$device-${model/:/-}.json"
if [ "$device" = cuda ]; then
    step "varlen attention on CUDA" 45 "$PY" -m pytest -q -p no:cacheprovider -k on_cuda \
        tests/pipeline/engine/test_cuda_attention.py --junitxml "$RESULTS/cuda-attention-tests.xml"
fi
echo "results in $RESULTS ($failed failed steps)"
[ "$failed" -eq 0 ]
