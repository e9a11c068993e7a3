"""The engine at each precision vs FlagEmbedding's BGEM3FlagModel.encode, one run.

Each side runs in its own fresh process (clean peak-RSS figures), one after the other, on a
deterministic mixed-length corpus: lognormal lengths, some texts over 4000 tokens, none over
8192. All compute dense + sparse + ColBERT. Each engine side also measures the matmul peak
of its compute dtype in the same process (benchmarks/mfu.py) and reports MFU; every
precision's outputs are compared with fp32's (dense, ColBERT and sparse agreement).
Prints the figures and saves JSON under benchmarks/.results/
(git-ignored) unless --out names a file.

    python -m benchmarks.bench_engine --model random:small            # CPU, auto vs fp32
    python -m benchmarks.bench_engine --model random:full --docs 100 --no-flag
    python -m benchmarks.bench_engine --device cuda --model random:full --precisions fp16,bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import ROOT, kernels_for, run_facts, save, spawn_side
from pipeline.testing.corpora import lognormal_texts


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_side(side: str, args: argparse.Namespace, corpus_path: Path) -> dict:
    """Runs in a child process: load, encode the corpus once, report. `side` is
    `engine:PRECISION` or `flagembedding:PRECISION`."""
    import torch

    from benchmarks.mfu import matmul_peak, model_flops, peak_shapes
    from pipeline.engine.model import load_model
    from pipeline.settings import Settings

    kind, precision = side.split(":")
    name = precision  # what its outputs are saved as, for the agreement
    # "-sync": each batch finished right after its launch (EmbedEngine.overlap_batches off).
    overlap = not precision.endswith("-sync")
    precision = kernels_for(precision.removesuffix("-sync"))
    texts = json.loads(corpus_path.read_text())
    # int8 is measured here only (torch dynamic quantisation of every Linear, fp32 elsewhere):
    # m3pipe does not offer it, see docs/engine.md.
    model = load_model(
        args.model,
        device=args.device,
        precision="fp32" if precision == "int8" else precision,
        cache_dir=Settings().cache_dir,
    )
    if precision == "int8":
        model.encoder = torch.ao.quantization.quantize_dynamic(
            model.encoder, {torch.nn.Linear}, dtype=torch.qint8
        )
    lengths = np.array(
        [
            len(x)
            for x in model.tokenizer(texts, truncation=True, max_length=args.max_length)[
                "input_ids"
            ]
        ]
    )
    config = model.encoder.config
    rss_loaded = rss_mb()
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    compute = "int8-dynamic" if precision == "int8" else str(model.dtype).removeprefix("torch.")
    result: dict = {"side": side, "compute_dtype": compute}
    if kind == "engine":
        from pipeline.engine.embedder import EmbedEngine
        from schemas.document import Document
        from schemas.options import EncodeOptions

        engine = EmbedEngine(
            model,
            EncodeOptions(
                max_length=args.max_length, batch_tokens=args.batch_tokens, dtype=args.dtype
            ),
        )
        engine.overlap_batches = overlap
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
        shards = [docs[i : i + args.shard_docs] for i in range(0, len(docs), args.shard_docs)]
        if args.warmup:  # untimed: CUDA context, kernel selection, allocator pools
            for _ in engine.encode_stream([docs[: args.warmup]]):
                pass
        sync()
        start = time.perf_counter()
        stats_padded = stats_tokens = rows = 0
        tables = []  # only what the agreement needs: the first --agree-docs documents
        for _, shard in engine.encode_stream(shards):
            stats_padded += shard.stats.padded_tokens
            stats_tokens += shard.stats.tokens
            rows += shard.table.num_rows
            if args.dump_dir is not None:
                kept = shard.table
                if args.agree_docs:
                    ids = pc.cast(kept.column("id"), pa.int64())
                    kept = kept.filter(pc.less(ids, args.agree_docs))
                tables.append(kept)
        sync()
        seconds = time.perf_counter() - start
        if args.dump_dir is not None:
            pq.write_table(pa.concat_tables(tables), args.dump_dir / f"{name}.parquet")
        result.update(
            padding_efficiency=stats_tokens / stats_padded,
            rows=rows,
            batch_tokens=engine.batch_tokens,
            storage_dtype=args.dtype,
        )
        rows_per_batch = engine.batch_tokens
    else:
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(
            str(model.path),
            use_fp16=model.dtype == torch.float16,
            use_bf16=model.dtype == torch.bfloat16,
            devices=str(model.device),
        )
        del model.encoder
        flag_options = {
            "batch_size": args.flag_batch_size,
            "max_length": args.max_length,
            "return_dense": True,
            "return_sparse": True,
            "return_colbert_vecs": True,
        }
        if args.warmup:
            flag.encode(texts[: args.warmup], **flag_options)
        sync()
        start = time.perf_counter()
        out = flag.encode(texts, **flag_options)
        sync()
        seconds = time.perf_counter() - start
        order = np.sort(lengths)[::-1]
        padded = sum(
            len(order[i : i + args.flag_batch_size]) * order[i]
            for i in range(0, len(order), args.flag_batch_size)
        )
        result.update(
            padding_efficiency=float(order.sum() / padded),
            rows=len(out["dense_vecs"]),
            batch_size=args.flag_batch_size,
        )
        rows_per_batch = 4096
    tokens = int(lengths.sum())
    flops = model_flops(config, lengths.tolist(), head_outputs=int(model.colbert_dim) + 1)
    achieved = flops / seconds / 1e9
    # No int8 peak is measured (quantised GEMMs are not torch.matmul): no MFU for int8.
    peak = (
        None
        if precision == "int8"
        else matmul_peak(
            str(model.device),
            model.dtype,
            peak_shapes(config, rows_per_batch, args.peak_square),
            args.peak_seconds,
        )
    )
    result.update(
        seconds=round(seconds, 3),
        tokens=tokens,
        tokens_per_second=round(tokens / seconds, 1),
        gflop_per_token=round(flops / tokens / 1e9, 4),
        achieved_gflops=round(achieved, 1),
        matmul_peak=peak,
        mfu=round(achieved / peak["gflops"], 4) if peak else None,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        rss_after_load_mb=round(rss_loaded, 1),
    )
    if torch.cuda.is_available() and args.device != "cpu":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def process_side(
    args: argparse.Namespace, precision: str, texts: list[str], tokens: int, tmp: Path
) -> dict:
    """`m3pipe encode` as a user runs it, timed from start to exit: model load, any warm-up
    and writing Parquet included."""
    import subprocess

    corpus = tmp / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts))
    )
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "encode",
        str(corpus),
        "--out",
        str(tmp / f"process-out-{precision}"),
    ]
    command += [
        "--model",
        args.model,
        "--device",
        args.device,
        "--precision",
        precision,
    ]
    command += ["--max-length", str(args.max_length), "--dtype", args.dtype, "-q"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return {
        "side": f"process:{precision}",
        "command": " ".join(command[1:]),
        "seconds": round(seconds, 3),
        "tokens": tokens,
        "tokens_per_second": round(tokens / seconds, 1),
    }


def precision_agreement(dump_dir: Path, precisions: list[str]) -> dict:
    """Each precision's outputs against fp32's (when fp32 ran)."""
    import pyarrow.parquet as pq

    from pipeline.engine.agreement import agreement, table_outputs

    if "fp32" not in precisions or len(precisions) < 2:
        return {}
    reference = table_outputs(pq.read_table(dump_dir / "fp32.parquet"))
    found = {}
    for precision in precisions:
        if precision != "fp32":
            other = table_outputs(pq.read_table(dump_dir / f"{precision}.parquet"))
            pairs = zip(other, reference, strict=True)
            dense, colbert, sparse = ((a, b) for a, b in pairs)
            found[f"{precision}_vs_fp32"] = agreement(dense, colbert, sparse).as_dict()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precisions",
        default="auto,fp32",
        help="engine sides, compared with fp32's outputs (bf16-sdpa: bf16 with SDPA attention; "
        "fp32-mkl: fp32 with PyTorch's own GEMM and attention; bf16-sync: each batch "
        "finished right after its launch, no overlap)",
    )
    parser.add_argument("--flag-precision", default="fp32", help="FlagEmbedding's side")
    parser.add_argument("--no-flag", action="store_true", help="skip FlagEmbedding's side")
    parser.add_argument(
        "--process", action="store_true", help="also time a whole `m3pipe encode` process"
    )
    parser.add_argument(
        "--process-precision", default="auto", help="comma-separated: a process side each"
    )
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--long-docs", type=int, default=6, help="texts of 4000-8000 tokens")
    parser.add_argument("--fixed-tokens", type=int, help="every text this many tokens instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--shard-docs", type=int, default=1000)
    parser.add_argument("--dtype", default="float32", help="storage dtype of the vectors")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--flag-batch-size", type=int, default=32)
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="per matmul shape")
    parser.add_argument(
        "--peak-square", type=int, default=4096, help="the largest square matmul of the peak"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="texts each side encodes untimed first"
    )
    parser.add_argument(
        "--agree-docs",
        type=int,
        default=0,
        help="compare precisions on the first N documents only (0: all)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dump-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # child process
        print(json.dumps(run_side(args.side, args, args.corpus)))
        return 0

    from transformers import AutoTokenizer

    from pipeline.engine.model_source import locate_model
    from pipeline.settings import Settings

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    # The tokenizer alone (the sides load the model): the corpus and its lengths.
    source = locate_model(
        args.model, device="cpu", precision=None, cache_dir=Settings().cache_dir, hub_timeout=10
    )
    tokenizer = AutoTokenizer.from_pretrained(str(source.path))
    texts = lognormal_texts(tokenizer, args.docs, args.long_docs, args.seed, args.fixed_tokens)
    tokenized = tokenizer(texts, truncation=True, max_length=args.max_length)
    lengths = [len(x) for x in tokenized["input_ids"]]
    sides: dict[str, dict] = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.json"
        corpus_path.write_text(json.dumps(texts))
        names = [f"engine:{p}" for p in precisions]
        names += [] if args.no_flag else [f"flagembedding:{args.flag_precision}"]
        for side in names:
            extra = ["--side", side, "--corpus", str(corpus_path)]
            if "fp32" in precisions and len(precisions) > 1:  # outputs kept for agreement
                extra += ["--dump-dir", tmp]
            result = spawn_side(extra)
            if result is None:  # reported, and the other sides still run
                failed.append(side)
                continue
            sides[side] = result
            print(f"{side:>20}: {result}", flush=True)
        ran = [p for p in precisions if f"engine:{p}" in sides]
        accuracy = precision_agreement(Path(tmp), ran)
        for precision in args.process_precision.split(",") if args.process else ():
            result = process_side(args, precision, texts, int(sum(lengths)), Path(tmp))
            sides[result["side"]] = result
            print(f"{result['side']:>20}: {result}", flush=True)

    # Every side's tokens/s over the baseline's: fp32 (the exact mode) where it ran.
    engines = [side for side in sides if side.startswith("engine:")]
    baseline = "engine:fp32" if "engine:fp32" in sides else (engines or [None])[0]
    ratios = {
        f"{side} / {baseline}": round(
            result["tokens_per_second"] / sides[baseline]["tokens_per_second"], 3
        )
        for side, result in sides.items()
        if baseline is not None and side != baseline
    }
    report = {
        "benchmark": "bench_engine",
        "model": args.model,
        "device": args.device,
        "corpus": {
            "docs": len(texts),
            "tokens": int(sum(lengths)),
            "max_tokens": max(lengths),
            "over_4000": sum(n > 4000 for n in lengths),
            "seed": args.seed,
        },
        "sides": sides,
        "failed_sides": failed,
        "ratios": ratios,
        "accuracy": accuracy,
        "mfu_formula": "benchmarks/mfu.py: 2n(4d^2+2df) + 4n^2 d per layer, plus the heads",
        **run_facts(),
    }
    print(json.dumps(ratios), json.dumps(accuracy))
    save(report, "engine", args.device, args.model, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
