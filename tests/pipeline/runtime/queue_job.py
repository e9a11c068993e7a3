"""A queue job submitted in-process, for tests that run its shards through a worker runtime:
the messages are kept instead of published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.jobs.store import JobStore
from pipeline.runtime.worker_models import WorkerModels
from pipeline.runtime.worker_runtime import WorkerRuntime
from producers.submit import ShardLimits, SubmitRequest, submit_job
from schemas.job import ShardMessage, Task
from schemas.options import EncodeOptions


def submitted(
    tmp_path: Path, store: JobStore, documents: int = 30, tag: str = "d", **changes: Any
) -> tuple[str, list[ShardMessage]]:
    """(job id, its shard messages) of `documents` short texts in shards of 10, into
    tmp_path/out; `changes` replace fields of the SubmitRequest."""
    corpus = tmp_path / f"{tag}.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"{tag}{i}", "text": f"{tag} text {i}"}) + "\n"
                              for i in range(documents)))  # fmt: skip
    request = SubmitRequest(**{
        "inputs": [corpus], "out": tmp_path / "out", "model": "random:tiny",
        "options": EncodeOptions(max_length=64), "queue": "q", "max_queued": 100,
        "limits": ShardLimits(items=10, bytes=1 << 20, tokens=10**6), **changes,
    })  # fmt: skip
    sent: list[ShardMessage] = []
    result = submit_job(request, store, lambda message, queue, priority: sent.append(message))
    return result.job_id, sent


def runtime_of(
    store: JobStore, model: Any, spec: str = "random:tiny", name: str = "t@host"
) -> WorkerRuntime:
    """A worker's runtime serving `model` under the name `spec`, without Celery."""
    models = WorkerModels(specs={Task.EMBED: spec}, loader=lambda task, s: model)
    return WorkerRuntime(models=models, store=store, hostname=name)
