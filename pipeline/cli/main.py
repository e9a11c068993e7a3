"""The `m3pipe` command line. Flags win over M3PIPE_* environment settings, then defaults."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.settings import Settings
from schemas.options import MAX_SUPPORTED_LENGTH, EncodeOptions

if TYPE_CHECKING:
    from pipeline.storage.location import Location

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTS = 3  # finished, but some input records were rejected (see _rejects.jsonl)


MODEL_COMMANDS = {
    "encode",
    "rerank",
    "make-test-model",
    "worker",
    "run",
}  # the ones that import torch


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def add_encode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="model dir, hub name or random:tiny|small|full "
        "(default: $M3PIPE_MODEL or BAAI/bge-m3)",
    )
    parser.add_argument(
        "--modes",
        default="dense,sparse,colbert",
        help="comma-separated subset of dense,sparse,colbert",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        help="tokens per sequence, <= 8192 (default: 8192 to embed, 512 per pair to rerank)",
    )
    parser.add_argument(
        "--batch-tokens", type=int, help="padded tokens per forward pass (default: per device)"
    )
    parser.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="storage dtype of dense and colbert vectors",
    )
    parser.add_argument(
        "--long-docs",
        choices=["truncate", "chunk"],
        default="truncate",
        help="over-length documents: truncate (default) or one row per chunk",
    )
    parser.add_argument("--chunk-overlap", type=int, default=0, help="tokens shared by chunks")


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="compute precision (default: fp16 on CUDA, fp32 on CPU)",
    )


def add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        dest="input_format",
        choices=["auto", "jsonl", "csv", "parquet", "txt"],
        default="auto",
        help="input format (default: from the name; a directory reads its .txt files)",
    )
    parser.add_argument("--id-field", default="id", help="id field or column (default: id)")
    parser.add_argument("--text-field", default="text", help="text field or column")
    parser.add_argument(
        "--keep-fields",
        default="",
        help="comma-separated input fields carried into the output as string columns",
    )
    add_record_limit_option(parser)


def add_record_limit_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-record-bytes",
        type=int,
        help="largest input record (line, CSV record, .txt file); a larger one is rejected "
        "while it is read (default: $M3PIPE_MAX_RECORD_BYTES, else 8 MiB)",
    )


def max_record_bytes(args: argparse.Namespace, settings: Settings) -> int:
    """The record limit from the flag or the setting; ValueError when it is too small."""
    value = args.max_record_bytes
    if value is None:
        return settings.max_record_bytes
    if value < 1024:
        raise ValueError("--max-record-bytes must be >= 1024")
    return int(value)


def out_arg(value: str) -> str:
    """--out: an empty value would write into the current directory."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def parse_keep_fields(value: str) -> tuple[str, ...]:
    """The --keep-fields list; raises ValueError naming a field that cannot be a column."""
    from schemas.output import RESERVED_COLUMNS

    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    for name in names:
        if name in RESERVED_COLUMNS:
            raise ValueError(f"--keep-fields: {name!r} is an output column name")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3pipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"m3pipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    encode = sub.add_parser("encode", help="encode a JSONL file to Parquet, no queue")
    encode.add_argument(
        "input",
        help="JSONL (.gz/.zst), CSV, Parquet, or a directory of .txt files; a path or a "
        "URL (s3://...)",
    )
    encode.add_argument(
        "--out",
        required=True,
        type=out_arg,
        help="output directory: a path or a URL (s3://bucket/prefix)",
    )
    add_encode_options(encode)
    add_input_options(encode)
    encode.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    add_compute_options(encode)
    encode.add_argument("--shard-docs", type=int, default=1000, help="documents per output file")
    encode.add_argument("--overwrite", action="store_true", help="replace earlier output in --out")
    encode.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    encode.set_defaults(func=cmd_encode)

    make = sub.add_parser("make-test-model", help="write a random bge-m3-architecture model")
    make.add_argument("dir", type=Path, help="new directory to create")
    make.add_argument("--size", choices=["tiny", "small", "full"], default="tiny")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=cmd_make_test_model)

    from pipeline.cli.queue import add_queue_commands
    from pipeline.cli.rerank import add_rerank_command
    from pipeline.cli.scale import add_scale_commands
    from pipeline.cli.tenants import add_tenants_command

    add_rerank_command(sub)
    add_queue_commands(sub)
    add_tenants_command(sub)
    add_scale_commands(sub)
    return parser


class ProgressBar:
    """Items (documents, pairs) done of the total, tokens/s and ETA, on stderr if a terminal."""

    def __init__(self, total: int | None, enabled: bool, unit: str = "doc") -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total or None,
            unit=unit,
            disable=not enabled or None,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self._tokens = 0
        self._started = time.perf_counter()

    def __call__(self, documents: int, tokens: int) -> None:
        self._tokens += tokens
        rate = self._tokens / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
        self._bar.update(documents)

    def close(self) -> None:
        self._bar.close()


def options_from_args(args: argparse.Namespace) -> EncodeOptions:
    return EncodeOptions(
        modes=args.modes,
        max_length=MAX_SUPPORTED_LENGTH if args.max_length is None else args.max_length,
        batch_tokens=args.batch_tokens,
        dtype=args.dtype,
        long_docs=args.long_docs,
        chunk_overlap=args.chunk_overlap,
    )


def cmd_encode(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.engine.embedder import Engine
    from pipeline.local.encode import encode_file
    from pipeline.runtime.worker_models import load_task_model
    from pipeline.storage.location import open_location
    from producers.jsonl import count_lines
    from schemas.job import Task

    try:
        options = options_from_args(args)
    except ValidationError as exc:
        return usage_error(exc)
    if args.shard_docs < 1:
        return usage_error("--shard-docs must be >= 1")
    try:
        keep_fields = parse_keep_fields(args.keep_fields)
        record_limit = max_record_bytes(args, settings)
    except ValueError as exc:
        return usage_error(exc)
    source = open_location(args.input)
    if not input_found("encode", source):
        return EXIT_FAILED

    spec = args.model or settings.model
    model = load_task_model(
        Task.EMBED, spec, device=args.device, precision=args.precision, settings=settings
    )
    engine = Engine(model, options)
    show_bar = not args.quiet and sys.stderr.isatty()
    # The line count (a full read of the file) is only worth it when a bar shows an ETA.
    total = count_lines(source) if show_bar and source.is_file() else None
    bar = ProgressBar(total, enabled=show_bar)
    try:
        summary = encode_file(
            source,
            args.out,
            engine,
            id_field=args.id_field,
            text_field=args.text_field,
            keep_fields=keep_fields,
            input_format=args.input_format,
            shard_docs=args.shard_docs,
            overwrite=args.overwrite,
            progress=bar,
            max_record_bytes=record_limit,
        )
    finally:
        bar.close()
    stats = summary.stats
    done = (
        f"{summary.documents} documents -> {stats.rows} rows in {len(summary.files)} file(s) "
        f"under {summary.out_dir}; {stats.tokens:,} tokens in {stats.seconds:.1f}s "
        f"({stats.tokens_per_second:,.0f} tokens/s, padding efficiency "
        f"{stats.padding_efficiency:.3f})"
    )
    return local_outcome("encode", done, summary.out_dir, summary.rejected)


def input_found(command: str, source: Location) -> bool:
    """False, having said so, when the input of a local command does not exist."""
    from pyarrow.fs import FileType

    if source.probe() == FileType.NotFound:
        print(f"m3pipe {command}: input file not found: {source}", file=sys.stderr)
        return False
    return True


def local_outcome(command: str, done: str, out_dir: Location, rejected: int) -> int:
    """Print what a local command did; exit 3 when records were rejected, else 0."""
    rejects = f" (see {out_dir / '_rejects.jsonl'})" if rejected else ""
    print(f"m3pipe {command}: {done}; {rejected} rejected{rejects}", file=sys.stderr)
    return EXIT_REJECTS if rejected else EXIT_OK


def cmd_make_test_model(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.engine.random_model import write_random_model

    if args.dir.exists():
        return usage_error(f"{args.dir} already exists")
    path = write_random_model(args.dir, args.size, args.seed)
    print(f"wrote random:{args.size} (seed {args.seed}) to {path}: random weights, not bge-m3")
    return EXIT_OK


def usage_error(problem: object) -> int:
    if isinstance(problem, ValidationError):
        problem = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in problem.errors()
        )
    print(f"m3pipe: {problem}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in MODEL_COMMANDS:
        _quiet_libraries()
    try:
        settings = Settings()
    except ValidationError as exc:
        return usage_error(exc)
    try:
        return int(args.func(args, settings))
    except PipelineError as exc:
        print(f"m3pipe {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a full disk, a vanished mount: said plainly, not a traceback
        print(f"m3pipe {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RedisConnectionError as exc:
        from pipeline.broker.redis_url import redact

        print(
            f"m3pipe {args.command}: cannot reach Redis at {redact(settings.broker)}: {exc} "
            "(set M3PIPE_BROKER_URL)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        resume = (
            "; run it again with --resume (same inputs and --out) to finish the job"
            if args.command in ("run", "submit")
            else ""
        )
        print(f"m3pipe {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
