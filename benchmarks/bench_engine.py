"""Engine vs FlagEmbedding's BGEM3FlagModel.encode on the same model and corpus, one run.

Each side runs in its own fresh process (clean peak-RSS figures), one after the other, on a
deterministic mixed-length corpus: lognormal lengths, some texts over 4000 tokens, none over
8192. Both compute dense + sparse + ColBERT. Prints a table and saves JSON under
benchmarks/results/.

    python benchmarks/bench_engine.py --model random:small            # CPU target run
    python benchmarks/bench_engine.py --device cuda --model random:full
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import run_facts, save, spawn_side  # noqa: E402


def make_corpus(tokenizer, n_docs: int, n_long: int, seed: int) -> list[str]:
    """Lognormal token lengths (median ~200), `n_long` texts of 4000-8000 tokens, none > 8192."""
    from pipeline.engine.synthetic_text import TextGenerator

    rng = np.random.default_rng(seed)
    gen = TextGenerator(seed)
    targets = np.clip(rng.lognormal(np.log(200), 1.0, n_docs), 8, 3500).astype(int)
    targets[rng.choice(n_docs, n_long, replace=False)] = rng.integers(4000, 8000, n_long)
    texts = []
    for target in targets:
        words = max(1, int(target / 2))
        text = gen.document(words)
        n = len(tokenizer(text)["input_ids"])
        # Rescale once to land near the target, then make sure it stays under 8192.
        text = gen.document(max(1, int(words * target / max(n, 1))))
        while len(tokenizer(text)["input_ids"]) > 8192:
            text = text[: int(len(text) * 0.9)]
        texts.append(text)
    return texts


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_side(side: str, args: argparse.Namespace, corpus_path: Path) -> dict:
    """Runs in a child process: load, encode the corpus once, report."""
    import torch

    from pipeline.engine.model import load_model
    from pipeline.settings import Settings

    texts = json.loads(corpus_path.read_text())
    model = load_model(
        args.model, device=args.device, precision=args.precision, cache_dir=Settings().cache_dir
    )
    lengths = np.array(
        [len(x) for x in model.tokenizer(texts, truncation=True, max_length=8192)["input_ids"]]
    )
    rss_loaded = rss_mb()
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result: dict = {"side": side}
    if side == "engine":
        from pipeline.engine.embedder import Engine
        from schemas.document import Document
        from schemas.options import EncodeOptions

        engine = Engine(
            model, EncodeOptions(max_length=8192, batch_tokens=args.batch_tokens, dtype=args.dtype)
        )
        docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
        shards = [docs[i : i + args.shard_docs] for i in range(0, len(docs), args.shard_docs)]
        sync()
        start = time.perf_counter()
        stats_padded = stats_tokens = rows = 0
        for _, shard in engine.encode_stream(shards):
            stats_padded += shard.stats.padded_tokens
            stats_tokens += shard.stats.tokens
            rows += shard.table.num_rows
        sync()
        seconds = time.perf_counter() - start
        result.update(
            padding_efficiency=stats_tokens / stats_padded,
            rows=rows,
            batch_tokens=engine.batch_tokens,
            storage_dtype=args.dtype,
        )
    else:
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(
            str(model.path),
            use_fp16=model.dtype == torch.float16,
            use_bf16=model.dtype == torch.bfloat16,
            devices=str(model.device),
        )
        del model.encoder
        sync()
        start = time.perf_counter()
        out = flag.encode(
            texts,
            batch_size=args.flag_batch_size,
            max_length=8192,
            return_dense=True,
            return_sparse=True,
            return_colbert_vecs=True,
        )
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
    tokens = int(lengths.sum())
    result.update(
        seconds=round(seconds, 3),
        tokens=tokens,
        tokens_per_second=round(tokens / seconds, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        rss_after_load_mb=round(rss_loaded, 1),
    )
    if torch.cuda.is_available() and args.device != "cpu":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--long-docs", type=int, default=6, help="texts of 4000-8000 tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--shard-docs", type=int, default=1000)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--flag-batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--side", choices=["engine", "flagembedding"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # child process
        print(json.dumps(run_side(args.side, args, args.corpus)))
        return 0

    from pipeline.engine.model import load_model
    from pipeline.settings import Settings

    model = load_model(args.model, device="cpu", cache_dir=Settings().cache_dir)
    texts = make_corpus(model.tokenizer, args.docs, args.long_docs, args.seed)
    lengths = [len(x) for x in model.tokenizer(texts)["input_ids"]]
    del model
    with tempfile.TemporaryDirectory() as tmp:
        corpus_path = Path(tmp) / "corpus.json"
        corpus_path.write_text(json.dumps(texts))
        sides = {}
        for side in ("engine", "flagembedding"):
            result = spawn_side(__file__, ["--side", side, "--corpus", str(corpus_path)])
            if result is None:
                return 1
            sides[side] = result
            print(f"{side:>14}: {sides[side]}", flush=True)

    engine, flag = sides["engine"], sides["flagembedding"]
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
        "engine": engine,
        "flagembedding": flag,
        "ratios": {
            "tokens_per_second": round(engine["tokens_per_second"] / flag["tokens_per_second"], 3),
            "peak_rss": round(engine["peak_rss_mb"] / flag["peak_rss_mb"], 3),
            "rss_growth_over_load": round(
                (engine["peak_rss_mb"] - engine["rss_after_load_mb"])
                / max(flag["peak_rss_mb"] - flag["rss_after_load_mb"], 1e-9),
                3,
            ),
        },
        "targets": {
            "tokens_per_second_ratio": ">= 3.0",
            "peak_rss_ratio": "<= 0.5",
            "engine_padding_efficiency": ">= 0.95",
        },
        **run_facts(),
    }
    print(json.dumps(report["ratios"]), f"padding efficiency {engine['padding_efficiency']:.3f}")
    save(report, "engine", args.device, args.model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
