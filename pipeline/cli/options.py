"""Options shared by several commands: their flags, how they parse, and usage errors."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from pydantic import ValidationError

from pipeline.exit_codes import EXIT_USAGE
from pipeline.jobs.store import JobStore
from pipeline.settings import Settings
from schemas.options import (
    MAX_POOL_FACTOR,
    MAX_SUPPORTED_LENGTH,
    STORAGE_FIELDS,
    STORAGE_PRESETS,
    EncodeOptions,
    StoragePreset,
    VectorForm,
)


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
    storage = parser.add_argument_group(
        "storage", 'how vectors are stored (docs/pipeline.md, "Compact storage")'
    )
    storage.add_argument(
        "--storage",
        choices=[preset.value for preset in StoragePreset],
        default=StoragePreset.EXACT.value,
        help="exact (default: every value as computed) or compact (int8 dense, binary "
        "ColBERT: ~1/15 of the bytes); the flags below go over it",
    )
    forms = [form.value for form in VectorForm]
    storage.add_argument(
        "--dense-storage",
        choices=forms,
        help="dense vectors: float (--dtype), float16, float32 (that width whatever --dtype "
        "says), int8, binary",
    )
    storage.add_argument(
        "--colbert-storage",
        choices=forms,
        help="ColBERT vectors: float (--dtype), float16, float32, int8, binary",
    )
    storage.add_argument(
        "--colbert-pool",
        type=int,
        metavar="FACTOR",
        help=f"token pooling: a document's ColBERT vectors clustered to 1/FACTOR of them "
        f"(1-{MAX_POOL_FACTOR}; default 1, none)",
    )
    storage.add_argument(
        "--sparse-top-k", type=int, metavar="K", help="keep each row's K heaviest sparse terms"
    )
    parser.add_argument(
        "--long-docs",
        choices=["truncate", "chunk"],
        default="truncate",
        help="over-length documents: truncate (default) or one row per chunk",
    )
    parser.add_argument("--chunk-overlap", type=int, default=0, help="tokens shared by chunks")
    parser.add_argument(
        "--reuse",
        metavar="PREVIOUS_OUT",
        type=out_arg,
        help="a finished output of the same model and options (a path or URL): documents "
        "whose id, text and kept fields are unchanged are copied from it, not encoded",
    )


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="compute precision (default: $M3PIPE_PRECISION, else auto: fp16 on CUDA; on a "
        "CPU with native bf16 (AMX, AVX512-BF16) bf16 to embed, fp32 to rerank; fp32 on other "
        "CPUs). fp32 is FlagEmbedding-exact; bf16's accuracy is in docs/engine.md",
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


def options_from_args(args: argparse.Namespace) -> EncodeOptions:
    options = EncodeOptions(
        modes=args.modes,
        max_length=MAX_SUPPORTED_LENGTH if args.max_length is None else args.max_length,
        batch_tokens=args.batch_tokens,
        dtype=args.dtype,
        long_docs=args.long_docs,
        chunk_overlap=args.chunk_overlap,
    )
    return with_storage(options, args)


def with_storage(options: EncodeOptions, args: argparse.Namespace) -> EncodeOptions:
    """`options` stored as --storage and the storage flags say: the preset's choices for
    the modes asked for, then each flag given."""
    chosen = {
        name: value
        for name, value in STORAGE_PRESETS[StoragePreset(args.storage)].items()
        if STORAGE_FIELDS[name] in options.modes
    }
    for name in STORAGE_FIELDS:
        if getattr(args, name, None) is not None:
            chosen[name] = getattr(args, name)
    return EncodeOptions.model_validate({**options.model_dump(), **chosen})


def usage_error(problem: object) -> int:
    if isinstance(problem, ValidationError):
        problem = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in problem.errors()
        )
    print(f"m3pipe: {problem}", file=sys.stderr)
    return EXIT_USAGE


def comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def checked_queue(name: str) -> str:
    """The queue name, or ValueError saying what a queue name may hold."""
    from schemas.job import QUEUE_NAME_PATTERN

    if not re.fullmatch(QUEUE_NAME_PATTERN, name):
        raise ValueError(
            f"queue name {name!r}: use letters, digits, '_', '.', '-' (at most 64 characters)"
        )
    return name


def job_store(settings: Settings) -> JobStore:
    return JobStore.connect(settings.broker, settings.redis_retry_seconds)


def add_process_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    summary: str,
    input_help: str,
    shard_flag: str,
    shard_help: str,
    add_task_options: Callable[[argparse.ArgumentParser], None],
) -> argparse.ArgumentParser:
    """A no-queue command (`encode`, `rerank`): input, --out, the task's own flags, then
    the flags every such command shares."""
    command = sub.add_parser(name, help=summary)
    command.add_argument("input", help=input_help)
    command.add_argument(
        "--out",
        required=True,
        type=out_arg,
        help="output directory: a path or a URL (s3://bucket/prefix)",
    )
    add_task_options(command)
    command.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    add_compute_options(command)
    command.add_argument(shard_flag, type=int, default=1000, help=shard_help)
    command.add_argument("--overwrite", action="store_true", help="replace earlier output in --out")
    command.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted run into --out (same input and flags): its part files "
        "whose documents still match are kept, the rest computed",
    )
    command.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return command


def gpu_present() -> bool:
    """Whether a GPU is visible to this process, without initialising CUDA."""
    from pipeline.ops.gpus import visible_gpu_count

    return visible_gpu_count() > 0


def device_on_gpu(device: str | None) -> bool:
    """Whether `--device` puts a model on a GPU, known without loading torch."""
    if device in (None, "auto"):
        return gpu_present()
    return device.startswith("cuda")
