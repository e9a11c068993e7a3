"""Task kinds: what differs between embedding documents and reranking pairs, one module each.

Everything else (the CLI commands, the no-queue drivers, the producer, the worker runtime)
is written once against `TaskKind`. A new task is a new module here, its line below, and
its value and item noun in `schemas.job.Task`.
"""

from __future__ import annotations

from pipeline.tasks.embed import EmbedTask
from pipeline.tasks.kind import Computed, Reading, TaskEngine, TaskKind
from pipeline.tasks.rerank import RerankTask
from schemas.job import Task

TASK_KINDS: dict[Task, TaskKind] = {Task.EMBED: EmbedTask(), Task.RERANK: RerankTask()}


def task_kind(task: Task) -> TaskKind:
    return TASK_KINDS[task]


__all__ = ["TASK_KINDS", "Computed", "Reading", "TaskEngine", "TaskKind", "task_kind"]
