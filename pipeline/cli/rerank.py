"""`m3pipe rerank` (local, no queue) and the rerank options of `submit --task rerank` / `run`."""

from __future__ import annotations

import argparse

from pipeline.cli.local_commands import process_command
from pipeline.cli.options import (
    add_process_command,
    add_record_limit_option,
    max_record_bytes,
)
from pipeline.settings import Settings
from schemas.pair import DEFAULT_RERANK_MAX_LENGTH, RerankOptions

# Embedding flags with their defaults: a rerank job refuses any of them set otherwise.
EMBED_ONLY_DEFAULTS = {
    "modes": "dense,sparse,colbert",
    "dtype": "float16",
    "long_docs": "truncate",
    "chunk_overlap": 0,
    "id_field": "id",
    "text_field": "text",
    "keep_fields": "",
    "reuse": None,
    "storage": "exact",
    "dense_storage": None,
    "colbert_storage": None,
    "colbert_pool": None,
    "sparse_top_k": None,
}


def add_rerank_options(parser: argparse.ArgumentParser) -> None:
    """--query-max-length; `--max-length` and `--batch-tokens` are shared with embedding."""
    parser.add_argument(
        "--query-max-length",
        type=int,
        help="rerank: tokens of the query before pairing (default: 3/4 of --max-length)",
    )


def add_task_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        choices=["embed", "rerank"],
        default="embed",
        help="embed documents with bge-m3 (default), or score (query, passage) pairs with "
        "the reranker ($M3PIPE_RERANK_MODEL)",
    )
    add_rerank_options(parser)


def rerank_options_from_args(args: argparse.Namespace) -> RerankOptions:
    return RerankOptions(
        max_length=DEFAULT_RERANK_MAX_LENGTH if args.max_length is None else args.max_length,
        query_max_length=args.query_max_length,
        batch_tokens=args.batch_tokens,
    )


def check_no_embed_flags(args: argparse.Namespace) -> None:
    """ValueError naming the first embedding-only flag given to a rerank job."""
    for name, default in EMBED_ONLY_DEFAULTS.items():
        if getattr(args, name, default) != default:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is for --task embed; a rerank job does not take it")
    if getattr(args, "input_format", "auto") == "txt":
        raise ValueError("rerank input is JSONL, CSV or Parquet, not .txt files")


def add_rerank_command(sub: argparse._SubParsersAction) -> None:
    def rerank_options(rerank: argparse.ArgumentParser) -> None:
        rerank.add_argument(
            "--model",
            help="cross-encoder dir, hub name or random:tiny|small|full "
            "(default: $M3PIPE_RERANK_MODEL or BAAI/bge-reranker-v2-m3)",
        )
        rerank.add_argument(
            "--max-length",
            type=int,
            help=f"tokens per pair, specials included (default {DEFAULT_RERANK_MAX_LENGTH})",
        )
        add_rerank_options(rerank)
        rerank.add_argument(
            "--batch-tokens", type=int, help="padded tokens per forward pass (default: per device)"
        )
        rerank.add_argument(
            "--format",
            dest="input_format",
            choices=["auto", "jsonl", "csv", "parquet"],
            default="auto",
            help="input format (default: from the name)",
        )
        add_record_limit_option(rerank)

    rerank = add_process_command(
        sub,
        "rerank",
        summary="score (query, passage) pairs to Parquet, no queue",
        input_help="JSONL (.gz/.zst), CSV or Parquet of pairs (query_id, query, doc_id, "
        "passage) or of queries with candidates; a path or a URL (s3://...)",
        shard_flag="--shard-pairs",
        shard_help="pairs per output file",
        add_task_options=rerank_options,
    )
    rerank.set_defaults(func=cmd_rerank)


def cmd_rerank(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.tasks import Reading
    from schemas.job import Task

    def reading() -> Reading:
        limit = max_record_bytes(args, settings)
        return Reading(input_format=args.input_format, max_record_bytes=limit)

    return process_command(
        Task.RERANK,
        args,
        settings,
        options=lambda: rerank_options_from_args(args),
        reading=reading,
        shard_items=args.shard_pairs,
        shard_flag="--shard-pairs",
    )
