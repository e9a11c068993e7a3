"""Routing by model: each model's shards on a queue of their own.

With routing on (`--route-by-model`, $M3PIPE_ROUTE_BY_MODEL), `submit` sends a job's shards
to `<queue>.m-<name>-<hash>` and a worker takes only the queues of the models it serves, so
workers of two models never take each other's shards. The key is the model as spelled
(`BAAI/bge-m3` and `/models/bge-m3` are two routes): producers and workers must name a
model the same way. Without routing, a worker of another model hands a shard back
(docs/pipeline.md, "A pool per model").
"""

from __future__ import annotations

import hashlib
import re

from schemas.job import QUEUE_NAME_PATTERN

ROUTE_NAME_CHARS = 16  # of the model's last path component, for people reading queue names


def model_route(model_spec: str) -> str:
    """The route key of a model spec: a readable name and 8 hex digits of the exact spec."""

    spec = model_spec.strip()
    if not spec:
        raise ValueError("a model to route by is needed")
    last = spec.rstrip("/").rsplit("/", 1)[-1] or spec
    name = re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")[:ROUTE_NAME_CHARS] or "model"
    digest = hashlib.sha256(spec.encode("utf-8")).hexdigest()[:8]
    return f"m-{name.strip('-')}-{digest}"


def model_queue(queue: str, model_spec: str) -> str:
    """The queue of `model_spec`'s shards in the pool whose (tenant) queue is `queue`."""

    routed = f"{queue}.{model_route(model_spec)}"
    if not re.fullmatch(QUEUE_NAME_PATTERN, routed):
        raise ValueError(
            f"queue {queue!r} is too long to route by model ({routed!r} is over 64 "
            "characters): use a shorter base queue or tenant name"
        )
    return routed


def routed_queues(queues: list[str], models: list[str]) -> list[str]:
    """The queues a worker serving `models` takes from each of `queues`, in order."""

    routed = [model_queue(queue, model) for queue in queues for model in models]
    return list(dict.fromkeys(routed))
