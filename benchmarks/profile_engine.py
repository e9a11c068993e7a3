"""Where the engine's time goes: wall time per stage, per storage dtype, and the top operators.

Encodes a corpus with `EmbedEngine.encode_stream`, as `m3pipe encode` does, and times each stage
from the batch loop's side: the batches (launching the forward pass, heads and copies to the
host), their results (on CUDA the wait for the device), placing each batch's vectors and
building each shard's table, and the rest (mostly waiting for the tokenizer thread to hand
over the next shard). Tokenizing is timed in its own thread, where
it overlaps the batches. Each storage dtype runs in the same process, model loaded once,
after an untimed warm-up. Then one shard under torch.profiler (CPU activity, and CUDA on a
GPU): the operators by self time. Saves JSON (and the profiler's table beside it).

    python -m benchmarks.profile_engine --device cuda --model random:full --docs 3000 \
        --fixed-tokens 512 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.report import run_facts, save


class StageClock:
    """Wraps functions so that the seconds spent in them add up under a stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed


def top_operators(prof: Any, cuda: bool, limit: int = 20) -> list[dict]:
    """The profiler's operators by self time (device time on a GPU), largest first."""

    def device_us(event: Any) -> float:
        return float(
            getattr(event, "self_device_time_total", None)
            or getattr(event, "self_cuda_time_total", 0.0)
        )

    events = list(prof.key_averages())
    key = device_us if cuda else (lambda e: float(e.self_cpu_time_total))
    events.sort(key=key, reverse=True)
    return [
        {
            "name": e.key,
            "calls": int(e.count),
            "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2),
            "self_device_ms": round(device_us(e) / 1000, 2) if cuda else None,
        }
        for e in events[:limit]
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--long-docs", type=int, default=0)
    parser.add_argument("--fixed-tokens", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--shard-docs", type=int, default=1000)
    parser.add_argument("--dtypes", default="float16,float32", help="storage dtypes to time")
    parser.add_argument("--warmup", type=int, default=64, help="documents encoded untimed")
    parser.add_argument("--profile-docs", type=int, default=500, help="0: no profiler run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from benchmarks.mfu import model_flops
    from pipeline.engine import embedder
    from pipeline.engine.embedder import EmbedEngine
    from pipeline.engine.encoder import PendingBatch
    from pipeline.engine.model import load_model
    from pipeline.engine.table import ShardColumns
    from pipeline.settings import Settings
    from pipeline.testing.corpora import lognormal_texts
    from schemas.document import Document
    from schemas.options import EncodeOptions

    model = load_model(
        args.model, device=args.device, precision=args.precision, cache_dir=Settings().cache_dir
    )
    cuda = model.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    texts = lognormal_texts(
        model.tokenizer, args.docs, args.long_docs, args.seed, args.fixed_tokens or None
    )
    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    shards = [docs[i : i + args.shard_docs] for i in range(0, len(docs), args.shard_docs)]

    clock = StageClock()
    # A batch is launched ("batches"), then finished after the next one's launch (on CUDA
    # the wait for the device is in "batch results").
    embedder.forward_batch = clock.wrap("batches", embedder.forward_batch)  # type: ignore[assignment]
    PendingBatch.result = clock.wrap("batch results (wait, sparse groups)", PendingBatch.result)  # type: ignore[method-assign]
    ShardColumns.add = clock.wrap("assembly (placing vectors)", ShardColumns.add)  # type: ignore[method-assign]
    embedder.assemble_table = clock.wrap("assembly (Arrow table)", embedder.assemble_table)  # type: ignore[assignment]
    EmbedEngine.tokenize = clock.wrap("tokenize (own thread)", EmbedEngine.tokenize)  # type: ignore[method-assign]

    runs = {}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        options = EncodeOptions(max_length=args.max_length, dtype=dtype)
        engine = EmbedEngine(model, options)
        for _ in engine.encode_stream([docs[: args.warmup]]):
            pass
        clock.seconds.clear()
        sync()
        started = time.perf_counter()
        tokens = 0
        lengths: list[int] = []
        for _, shard in engine.encode_stream(shards):
            tokens += shard.stats.tokens
            lengths += shard.table.column("n_tokens").to_pylist()
        sync()
        seconds = time.perf_counter() - started
        stages = dict(clock.seconds)
        in_loop = sum(s for name, s in stages.items() if "thread" not in name)
        stages["rest of the loop"] = seconds - in_loop
        flops = model_flops(model.encoder.config, lengths, head_outputs=int(model.colbert_dim) + 1)
        runs[dtype] = {
            "seconds": round(seconds, 3),
            "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1),
            "achieved_gflops": round(flops / seconds / 1e9, 1),
            "stage_seconds": {name: round(s, 4) for name, s in stages.items()},
            "stage_share": {name: round(s / seconds, 4) for name, s in stages.items()},
        }
        print(f"{dtype}: {runs[dtype]}", flush=True)

    operators: list[dict] = []
    table = ""
    if args.profile_docs:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        engine = EmbedEngine(model, EncodeOptions(max_length=args.max_length))
        with profile(activities=activities) as prof:
            for _ in engine.encode_stream([docs[: args.profile_docs]]):
                pass
            sync()
        operators = top_operators(prof, cuda)
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        print(table, flush=True)

    report = {
        "benchmark": "profile_engine",
        "model": args.model,
        "device": args.device,
        "compute_dtype": str(model.dtype).removeprefix("torch."),
        "corpus": {"docs": len(docs), "fixed_tokens": args.fixed_tokens, "seed": args.seed},
        "runs": runs,
        "top_operators": operators,
        **run_facts(),
    }
    path = save(report, "profile", args.device, args.model, args.out)
    if table:
        path.with_suffix(".txt").write_text(table + "\n")
    print(json.dumps({d: r["stage_share"] for d, r in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
