"""`m3pipe fetch-model`: fill the model cache once (a Kubernetes Job, an image build), so
workers start from it with HF_HUB_OFFLINE=1 instead of downloading on every scale-up."""

from __future__ import annotations

import argparse
import sys

from pipeline.exit_codes import EXIT_OK
from pipeline.settings import Settings
from schemas.job import Task

DEFAULT_FETCH_TIMEOUT = 3600.0  # bge-m3 and the reranker are ~2.3 GB each


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    fetch = sub.add_parser(
        "fetch-model",
        help="download the embedding and rerank models into the cache and check they load",
    )
    fetch.add_argument("--model", help="embedding model (default: $M3PIPE_MODEL)")
    fetch.add_argument("--rerank-model", help="cross-encoder (default: $M3PIPE_RERANK_MODEL)")
    fetch.add_argument(
        "--tasks",
        default="embed,rerank",
        help="whose models to fetch: embed, rerank or embed,rerank (default both)",
    )
    fetch.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_FETCH_TIMEOUT,
        help=f"seconds a download may take (default {DEFAULT_FETCH_TIMEOUT:.0f})",
    )
    fetch.set_defaults(func=cmd_fetch_model)


def cmd_fetch_model(args: argparse.Namespace, settings: Settings) -> int:
    """Each model is downloaded (huggingface_hub checks every file it gets) into the cache
    ($HF_HOME for hub models, $M3PIPE_CACHE_DIR for random ones), then loaded on the CPU as
    a worker loads it: a model that cannot load fails here, not on the first shard."""
    from pipeline.cli.options import usage_error
    from pipeline.tasks import task_kind

    try:
        tasks = [Task(name.strip()) for name in args.tasks.split(",") if name.strip()]
    except ValueError:
        return usage_error("--tasks takes embed, rerank or embed,rerank")
    flags = {Task.EMBED: args.model, Task.RERANK: args.rerank_model}
    for task in tasks:
        kind = task_kind(task)
        spec = flags[task] or kind.model_spec(settings)
        model = kind.load_model(
            spec,
            device="cpu",
            precision="fp32",
            cache_dir=settings.cache_dir,
            hub_timeout=args.timeout,
        )
        identity = model.describe()
        print(
            f"m3pipe fetch-model: {task.value} model {spec}: revision "
            f"{identity.get('model_revision') or '-'}, fingerprint "
            f"{identity.get('model_fingerprint')}, loads ({model.path})",
            file=sys.stderr,
        )
    return EXIT_OK
