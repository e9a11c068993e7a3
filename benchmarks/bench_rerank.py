"""Reranker engine vs FlagEmbedding's FlagReranker.compute_score, same pairs and model.

Each side runs in its own fresh process (peak RSS is that process's VmHWM), one after the
other; with --rounds N, N times each, alternating, and the median run of each side is
reported. The pairs are deterministic: queries of 4-40 words, each with a list of
candidate passages of lognormal length (median about 150 tokens, some past --max-length).
Both sides truncate as FlagReranker does and score in the model's precision (fp32 on CPU,
fp16 on CUDA). The scores of the two sides are compared too. --engine-precisions adds
engine sides at other precisions, each compared with the engine side (speed, scores, and
each query's ranking). Prints a table and saves JSON under benchmarks/.results/
(git-ignored) unless --out names a file.

    python -m benchmarks.bench_rerank --model random:small --rounds 3     # CPU target run
    python -m benchmarks.bench_rerank --model random:full --pairs 200 --precision fp32 \
        --engine-precisions bf16,bf16-sdpa --no-flag     # the engine's precisions on a CPU
    python -m benchmarks.bench_rerank --device cuda --model random:full --pairs 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import kernels_for, run_facts, save, spawn_side


def make_pairs(n_pairs: int, per_query: int, seed: int) -> list[list[str]]:
    from pipeline.engine.synthetic_text import TextGenerator

    rng = np.random.default_rng(seed)
    gen = TextGenerator(seed)
    pairs = []
    while len(pairs) < n_pairs:
        query = gen.document(int(rng.integers(4, 40)))
        for words in np.clip(rng.lognormal(np.log(75), 0.9, per_query), 5, 1500).astype(int):
            pairs.append([query, gen.document(int(words))])
    return pairs[:n_pairs]


def ranking_agreement(scores: np.ndarray, reference: np.ndarray, per_query: int) -> dict:
    """How a side ranks each query's candidates against the reference side's ranking:
    Spearman's rho per query (mean, min) and the share of queries with the same top one;
    and the reference scores' spread, which the score differences are to be read against."""
    from scipy.stats import spearmanr

    rhos, same_top = [], []
    for start in range(0, len(scores), per_query):
        a, b = scores[start : start + per_query], reference[start : start + per_query]
        if len(a) > 1:
            rhos.append(float(spearmanr(a, b).statistic))
        same_top.append(int(np.argmax(a)) == int(np.argmax(b)))
    return {  # rho is None when no query has two candidates to order
        "spearman_per_query_mean": round(float(np.mean(rhos)), 6) if rhos else None,
        "spearman_per_query_min": round(float(np.min(rhos)), 6) if rhos else None,
        "same_top_share": round(float(np.mean(same_top)), 4),
        "reference_score_std": round(float(np.std(reference)), 4),
    }


def vm_hwm_mb() -> float:
    """Peak RSS of this process since exec (ru_maxrss would carry the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_side(side: str, args: argparse.Namespace, pairs_path: Path, scores_path: Path) -> dict:
    """Runs in a child process: load, score every pair once, report."""
    import torch

    from pipeline.engine.reranker import RerankEngine, load_reranker
    from pipeline.settings import Settings
    from schemas.pair import Pair, RerankOptions

    pairs = json.loads(pairs_path.read_text())
    precision = kernels_for(side.split(":", 1)[1] if ":" in side else args.precision)
    model = load_reranker(
        args.model, device=args.device, precision=precision, cache_dir=Settings().cache_dir
    )
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    rss_loaded = vm_hwm_mb()
    result: dict = {"side": side}
    if side.startswith("engine"):
        options = RerankOptions(max_length=args.max_length, batch_tokens=args.batch_tokens)
        engine = RerankEngine(model, options)
        items = [
            Pair(query_id=str(i), query=q, doc_id=str(i), passage=p)
            for i, (q, p) in enumerate(pairs)
        ]
        if args.warmup:  # untimed: CUDA context, kernel selection, allocator pools
            engine.score(items[: args.warmup])
        sync()
        start = time.perf_counter()
        scored = engine.score(items)
        sync()
        seconds = time.perf_counter() - start
        scores = scored.logits.astype(float).tolist()
        # MFU: the pairs' real token lengths through the encoder (the one-logit head is
        # negligible), against the matmul peak of the compute dtype in this process.
        from benchmarks.mfu import matmul_peak, model_flops, peak_shapes

        config = model.model.config
        flops = model_flops(config, table_lengths(scored.table))
        peak = matmul_peak(
            str(model.device),
            model.dtype,
            peak_shapes(config, engine.batch_tokens, args.peak_square),
            args.peak_seconds,
        )
        result.update(
            padding_efficiency=round(scored.stats.padding_efficiency, 4),
            batches=scored.stats.batches,
            tokens=scored.stats.tokens,
            batch_tokens=engine.batch_tokens,
            compute_dtype=str(model.dtype).removeprefix("torch."),
            achieved_gflops=round(flops / seconds / 1e9, 1),
            matmul_peak=peak,
            mfu=round(flops / seconds / 1e9 / peak["gflops"], 4),
        )
    else:
        from FlagEmbedding import FlagReranker

        flag = FlagReranker(
            str(model.path),
            use_fp16=model.dtype == torch.float16,
            devices=[str(model.device)],
            batch_size=args.flag_batch_size,
            max_length=args.max_length,
        )
        del model
        if args.warmup:
            flag.compute_score(pairs[: args.warmup])
        sync()
        start = time.perf_counter()
        scores = [float(s) for s in flag.compute_score(pairs)]
        sync()
        seconds = time.perf_counter() - start
        result.update(batch_size=args.flag_batch_size)
    scores_path.write_text(json.dumps(scores))
    result.update(
        pairs=len(pairs),
        seconds=round(seconds, 3),
        pairs_per_second=round(len(pairs) / seconds, 2),
        peak_rss_mb=round(vm_hwm_mb(), 1),
        rss_after_load_mb=round(rss_loaded, 1),
    )
    if torch.cuda.is_available() and args.device != "cpu":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def table_lengths(table) -> list[int]:
    return [int(n) for n in table.column("n_tokens").to_pylist()]


def median_run(results: list[dict]) -> dict:
    """The run with the median pairs/s (the lower middle one for an even count)."""
    ordered = sorted(results, key=lambda r: r["pairs_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--pairs", type=int, default=800)
    parser.add_argument("--per-query", type=int, default=20, help="candidates per query")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating runs of each side; medians reported"
    )
    parser.add_argument("--flag-batch-size", type=int, default=128, help="FlagReranker default")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="per matmul shape")
    parser.add_argument(
        "--peak-square", type=int, default=4096, help="the largest square matmul of the peak"
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="pairs each side scores untimed first"
    )
    parser.add_argument(
        "--engine-precisions",
        default="",
        help="more engine sides, each compared with the engine at --precision "
        "(bf16-sdpa: bf16 with SDPA attention; fp32-mkl: fp32 with PyTorch's own GEMM and "
        "attention)",
    )
    parser.add_argument("--no-flag", action="store_true", help="skip FlagReranker's side")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scores-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:  # child process
        print(json.dumps(run_side(args.side, args, args.pairs_file, args.scores_file)))
        return 0

    pairs = make_pairs(args.pairs, args.per_query, args.seed)
    more = [f"engine:{p}" for p in args.engine_precisions.split(",") if p]
    runs: dict[str, list[dict]] = {side: [] for side in ["engine", *more]}
    if not args.no_flag:
        runs["flagreranker"] = []
    scores = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs_path = Path(tmp) / "pairs.json"
        pairs_path.write_text(json.dumps(pairs))
        # Sides alternate round by round, so a noisy neighbour slows both alike.
        for round_ in range(args.rounds):
            for side in runs:
                scores_path = Path(tmp) / f"{side}-scores.json"
                result = spawn_side(
                    [
                        "--side",
                        side,
                        "--pairs-file",
                        str(pairs_path),
                        "--scores-file",
                        str(scores_path),
                    ],
                )
                if result is None:  # reported; what ran is still saved
                    failed.append(side)
                    continue
                runs[side].append(result)
                scores[side] = np.array(json.loads(scores_path.read_text()))
                print(f"round {round_ + 1} {side:>13}: {result}", flush=True)

    if not all(runs.values()):
        report = {"benchmark": "bench_rerank", "runs": runs, "failed_sides": failed}
        save({**report, **run_facts()}, "rerank", args.device, args.model, args.out)
        return 1
    sides = {side: median_run(results) for side, results in runs.items()}
    engine = sides["engine"]
    report = {
        "benchmark": "bench_rerank",
        "model": args.model,
        "device": args.device,
        "pairs": {
            "count": len(pairs),
            "per_query": args.per_query,
            "max_length": args.max_length,
            "tokens": engine["tokens"],
            "seed": args.seed,
        },
        "engine": engine,
        "rounds": args.rounds,
        "engine_precisions": {
            side: {
                **sides[side],
                "pairs_per_second_vs_engine": round(
                    sides[side]["pairs_per_second"] / engine["pairs_per_second"], 3
                ),
                "max_abs_score_difference_vs_engine": float(
                    np.abs(scores[side] - scores["engine"]).max()
                ),
                "ranking_vs_engine": ranking_agreement(
                    scores[side], scores["engine"], args.per_query
                ),
            }
            for side in more
        },
        **run_facts(),
    }
    if "flagreranker" in sides:
        flag = sides["flagreranker"]
        report["flagreranker"] = flag
        report["ratios"] = {
            "pairs_per_second": round(engine["pairs_per_second"] / flag["pairs_per_second"], 3),
            "peak_rss": round(engine["peak_rss_mb"] / flag["peak_rss_mb"], 3),
            "pairs_per_second_by_round": [
                round(e["pairs_per_second"] / f["pairs_per_second"], 3)
                for e, f in zip(runs["engine"], runs["flagreranker"], strict=True)
            ],
        }
        report["max_abs_score_difference"] = float(
            np.abs(scores["engine"] - scores["flagreranker"]).max()
        )
        report["targets"] = {"pairs_per_second_ratio": ">= 2.0 (CPU, random:small)"}
        print(
            json.dumps(report["ratios"]),
            f"max |score difference| {report['max_abs_score_difference']:.2e}",
        )
    for side in more:
        figures = report["engine_precisions"][side]
        print(
            f"{side}: {figures['pairs_per_second_vs_engine']}x the engine at {args.precision}, "
            f"max |score difference| {figures['max_abs_score_difference_vs_engine']:.2e}, "
            f"ranking {figures['ranking_vs_engine']}"
        )
    report["failed_sides"] = failed
    save(report, "rerank", args.device, args.model, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
