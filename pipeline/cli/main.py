"""The `m3pipe` command line. Flags win over M3PIPE_* environment settings, then defaults."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from redis.exceptions import AskError, ClusterError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemory
from redis.exceptions import ReadOnlyError as RedisReadOnly
from redis.exceptions import ResponseError as RedisResponseError

from pipeline import __version__
from pipeline.cli.local_commands import process_command
from pipeline.cli.models import add_model_commands
from pipeline.cli.options import (
    add_encode_options,
    add_input_options,
    add_process_command,
    max_record_bytes,
    options_from_args,
    parse_keep_fields,
    usage_error,
)
from pipeline.cli.queue import add_queue_commands
from pipeline.cli.rerank import add_rerank_command
from pipeline.cli.scale import add_scale_commands
from pipeline.cli.search import add_search_commands
from pipeline.cli.tenants import add_tenants_command
from pipeline.errors import PipelineError
from pipeline.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pipeline.runtime.heap import collector_paused_while_loading, exit_without_teardown
from pipeline.settings import Settings

MODEL_COMMANDS = {
    "encode",
    "rerank",
    "make-test-model",
    "worker",
    "search",
    "fetch-model",
}  # the ones that load a model in this process (`run` starts workers that do)


def _quiet_libraries(own_process: bool) -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    # transformers' import: a model's first part (pipeline/runtime/heap.py)
    with collector_paused_while_loading(freeze=own_process):
        import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3pipe", description=__doc__)
    parser.add_argument("--version", action="version", version=f"m3pipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def encode_options(encode: argparse.ArgumentParser) -> None:
        add_encode_options(encode)
        add_input_options(encode)

    encode = add_process_command(
        sub,
        "encode",
        summary="encode a JSONL file to Parquet, no queue",
        input_help="JSONL (.gz/.zst), CSV, Parquet, or a directory of .txt files; a path or "
        "a URL (s3://...)",
        shard_flag="--shard-docs",
        shard_help="documents per output file",
        add_task_options=encode_options,
    )
    encode.set_defaults(func=cmd_encode)

    make = sub.add_parser("make-test-model", help="write a random bge-m3-architecture model")
    make.add_argument("dir", type=Path, help="new directory to create")
    make.add_argument("--size", choices=["tiny", "small", "full"], default="tiny")
    make.add_argument("--seed", type=int, default=0)
    make.set_defaults(func=cmd_make_test_model)

    add_rerank_command(sub)
    add_queue_commands(sub)
    add_tenants_command(sub)
    add_scale_commands(sub)
    add_search_commands(sub)
    add_model_commands(sub)
    return parser


def cmd_encode(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.inputs.readers.jsonl import count_lines
    from pipeline.tasks import Reading
    from schemas.job import Task

    def reading() -> Reading:
        return Reading(
            input_format=args.input_format,
            id_field=args.id_field,
            text_field=args.text_field,
            keep_fields=parse_keep_fields(args.keep_fields),
            max_record_bytes=max_record_bytes(args, settings),
        )

    return process_command(
        Task.EMBED,
        args,
        settings,
        options=lambda: options_from_args(args),
        reading=reading,
        shard_items=args.shard_docs,
        shard_flag="--shard-docs",
        # A line count (a full read of the file) is only worth it for a bar's ETA.
        total=lambda source: count_lines(source) if source.is_file() else None,
    )


def cmd_make_test_model(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.engine.random_model import write_random_model

    if args.dir.exists():
        return usage_error(f"{args.dir} already exists")
    path = write_random_model(args.dir, args.size, args.seed)
    print(f"wrote random:{args.size} (seed {args.seed}) to {path}: random weights, not bge-m3")
    return EXIT_OK


def _redacted(settings: Settings) -> str:
    from pipeline.broker.redis_url import redact

    return redact(settings.broker)


def entry() -> NoReturn:
    """The `m3pipe` command as a process of its own (the console script, `python -m`):
    it ends without the interpreter's teardown (pipeline/runtime/heap.py)."""
    exit_without_teardown(main(own_process=True))


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """`own_process`: this process runs the command and nothing else, so what a model's
    load leaves may be frozen out of the garbage collector (pipeline/runtime/heap.py)."""
    args = build_parser().parse_args(argv)
    args.own_process = own_process
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command in MODEL_COMMANDS:
        _quiet_libraries(own_process)
    try:
        settings = Settings()
    except ValidationError as exc:
        return usage_error(exc)
    try:
        return int(args.func(args, settings))
    except PipelineError as exc:
        print(f"m3pipe {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # The reader went away (`m3pipe status JOB | head -3`): nothing more to say to it.
        # Point stdout at /dev/null so the interpreter's final flush cannot fail either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:  # a full disk, a vanished mount: said plainly, not a traceback
        print(f"m3pipe {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RedisOutOfMemory:
        print(
            f"m3pipe {args.command}: Redis is out of memory (maxmemory reached, policy "
            "noeviction) and refuses writes: give it more memory, lower --max-queued, or send "
            "shards by reference (without --inline-shards)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except RedisConnectionError as exc:
        print(
            f"m3pipe {args.command}: cannot reach Redis at {_redacted(settings)}: {exc} "
            "(set M3PIPE_BROKER_URL)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except RedisReadOnly:
        print(
            f"m3pipe {args.command}: Redis at {_redacted(settings)} is a read-only replica "
            "(after a failover, the URL still names the old primary?): point "
            "M3PIPE_BROKER_URL at the primary",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except RedisResponseError as exc:  # MOVED from a cluster, a renamed command, an ACL
        hint = ""
        if isinstance(exc, (ClusterError, AskError)):  # AskError: MOVED too
            hint = ": it is a Redis Cluster, which m3pipe does not support"
        print(f"m3pipe {args.command}: Redis refused a command ({exc}){hint}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        resume = ""
        if args.command in ("run", "submit"):
            resume = "; run it again with --resume (same inputs and --out) to finish the job"
        elif args.command in ("encode", "rerank"):
            again = [arg for arg in (argv if argv is not None else sys.argv[1:])]
            again = [arg for arg in again if arg not in ("--resume", "--overwrite")]
            resume = f"; finish it with: m3pipe {shlex.join([*again, '--resume'])}"
        print(f"m3pipe {args.command}: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    entry()
