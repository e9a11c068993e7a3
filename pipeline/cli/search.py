"""`m3pipe search` (exact hybrid search over an output) and `m3pipe eval` (its quality)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from pipeline.cli.options import add_compute_options, out_arg, usage_error
from pipeline.exit_codes import EXIT_OK
from pipeline.settings import Settings
from schemas.options import Mode

if TYPE_CHECKING:
    from pipeline.engine.model import M3Model
    from pipeline.engine.reranker import RerankEngine


def add_search_commands(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="exact hybrid search of queries over an m3pipe output")
    search.add_argument("index", help="an m3pipe embed output directory: a path or a URL")
    search.add_argument("--queries", required=True, help="JSONL, CSV or Parquet of queries")
    search.add_argument(
        "--out", required=True, type=out_arg, help="results file (.parquet): a path or a URL"
    )
    search.add_argument("--top-k", type=int, default=100, help="documents kept per query")
    search.add_argument(
        "--weights",
        default="0.4,0.2,0.4",
        help="the hybrid's weights of dense,sparse,colbert (FlagEmbedding's compute_score); "
        "1,0,0 is dense only",
    )
    search.add_argument(
        "--runs",
        default="hybrid",
        help="comma-separated rankings to write: dense, sparse, colbert, hybrid",
    )
    search.add_argument(
        "--binary-query",
        choices=["auto", "float", "sign"],
        default="auto",
        help="vectors the index stores as sign bits are scored against the float query "
        "(float) or its own sign bits (sign: D - 2 x Hamming distance); auto (default): "
        "sign for ColBERT, float for dense, as measured best (docs/pipeline.md)",
    )
    search.add_argument("--query-id-field", default="id")
    search.add_argument("--query-text-field", default="text")
    search.add_argument("--model", help="query encoder (default: the index's model)")
    search.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    add_compute_options(search)
    search.add_argument(
        "--rerank-model",
        help="rerank the hybrid's candidates with this cross-encoder (a `rerank` run)",
    )
    search.add_argument("--rerank-top-k", type=int, help="candidates reranked (default --top-k)")
    search.add_argument(
        "--corpus",
        nargs="+",
        default=[],
        help="where the passages to rerank are (default: the index's inputs)",
    )
    search.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    search.set_defaults(func=cmd_search)

    evaluate = sub.add_parser("eval", help="nDCG@10, R@100 and RR@10 (MRR@10) of search results")
    evaluate.add_argument(
        "--qrels", required=True, help="TREC qrels, or JSONL {query_id, doc_id, relevance}"
    )
    evaluate.add_argument("--results", required=True, help="a results file of `m3pipe search`")
    evaluate.add_argument("--json", help="also write the figures to this JSON file")
    evaluate.set_defaults(func=cmd_eval)


def parse_weights(value: str) -> dict[Mode, float]:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 3:
        raise ValueError("--weights takes three numbers: dense,sparse,colbert")
    weights = dict(zip(Mode, (float(part) for part in parts), strict=True))
    if any(weight < 0 for weight in weights.values()):
        raise ValueError("--weights must not be negative")
    return weights


def parse_runs(value: str) -> tuple[str, ...]:
    from pipeline.retrieval.exact_search import RUNS

    runs = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [run for run in runs if run not in RUNS]
    if unknown or not runs:
        raise ValueError(f"--runs takes {', '.join(RUNS)}; not {', '.join(unknown) or 'none'}")
    return runs


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.retrieval.exact_search import HYBRID, SearchRequest, open_index, search
    from pipeline.storage.location import open_location

    try:
        request = SearchRequest(
            index=args.index,
            queries=args.queries,
            out=args.out,
            top_k=args.top_k,
            weights=parse_weights(args.weights),
            runs=parse_runs(args.runs),
            query_id_field=args.query_id_field,
            query_text_field=args.query_text_field,
            rerank_top_k=args.rerank_top_k,
            corpus=args.corpus,
            binary_query=args.binary_query,
        )
    except ValueError as exc:
        return usage_error(exc)
    if request.top_k < 1 or (request.rerank_top_k is not None and request.rerank_top_k < 1):
        return usage_error("--top-k and --rerank-top-k must be >= 1")
    if args.rerank_model and HYBRID not in request.runs:
        return usage_error("--rerank-model reranks the hybrid run: add hybrid to --runs")
    if open_location(args.out).exists() and not args.overwrite:
        return usage_error(f"{args.out} exists: pass --overwrite to replace it")
    index = open_index(args.index)
    model = load_query_model(args, settings, str(args.model or index.identity.get("model")))
    reranker = load_reranker(args, settings) if args.rerank_model else None
    summary = search(request, model, reranker, index)
    reranked = f"; {summary.reranked:,} candidates reranked" if reranker is not None else ""
    print(
        f"m3pipe search: {summary.queries:,} queries x {summary.documents:,} documents in "
        f"{summary.seconds:.2f}s ({summary.pairs_per_second:,.0f} query-document pairs/s, "
        f"exact){reranked}; {summary.results:,} result rows -> {args.out}",
        file=sys.stderr,
    )
    return EXIT_OK


def load_query_model(args: argparse.Namespace, settings: Settings, spec: str) -> M3Model:
    from pipeline.engine.model import load_model

    return load_model(
        spec,
        device=args.device,
        precision=args.precision or settings.precision,
        cache_dir=settings.cache_dir,
        hub_timeout=settings.hub_timeout,
    )


def load_reranker(args: argparse.Namespace, settings: Settings) -> RerankEngine:
    from pipeline.engine.reranker import RerankEngine
    from pipeline.engine.reranker import load_reranker as load
    from schemas.pair import RerankOptions

    model = load(
        args.rerank_model,
        device=args.device,
        precision=args.precision or settings.precision,
        cache_dir=settings.cache_dir,
        hub_timeout=settings.hub_timeout,
    )
    return RerankEngine(model, RerankOptions())


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.retrieval.evaluate import evaluate, read_qrels, read_runs

    evaluation = evaluate(read_qrels(args.qrels), read_runs(args.results))
    print(evaluation.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(evaluation.as_json(), handle, indent=2)
            handle.write("\n")
    return EXIT_OK
