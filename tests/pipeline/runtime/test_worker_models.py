"""A worker's models: each task's loaded on first use, once, kept; wrong models refused."""

import pytest
from pydantic import ValidationError

from pipeline.errors import ModelLoadError, RetryableError, WrongWorker
from pipeline.runtime.worker_models import WorkerModels
from pipeline.settings import Settings
from schemas.job import Task


class Loaded:
    def __init__(self, task, spec):
        self.task, self.spec, self.device = task, spec, "cpu"


def models(fail_first=0):
    calls, loads = [], []
    failures = [fail_first]

    def loader(task, spec):
        calls.append((task, spec))
        if failures[0]:
            failures[0] -= 1
            raise ModelLoadError(f"cannot load {spec}")
        return Loaded(task, spec)

    specs = {Task.EMBED: "random:tiny", Task.RERANK: "rerank-dir"}
    on_load = lambda task, spec, seconds: loads.append((task, spec, seconds >= 0))  # noqa: E731
    return WorkerModels(specs=specs, loader=loader, on_load=on_load), calls, loads


def test_each_model_loads_on_first_use_once_and_is_kept():
    held, calls, loads = models()
    assert not held.loaded(Task.RERANK) and held.devices() == []
    first = held.for_shard(Task.RERANK)
    assert held.for_shard(Task.RERANK) is first and first.spec == "rerank-dir"
    assert held.for_shard(Task.EMBED).task is Task.EMBED
    assert calls == [(Task.RERANK, "rerank-dir"), (Task.EMBED, "random:tiny")]
    assert loads == [(Task.RERANK, "rerank-dir", True), (Task.EMBED, "random:tiny", True)]
    assert held.devices() == ["cpu", "cpu"]


def test_a_load_failure_on_a_shard_is_retryable_and_the_next_shard_loads_again():
    held, calls, _ = models(fail_first=1)
    failed: list[tuple[Task, str]] = []
    held.on_load_failed = lambda task, spec: failed.append((task, spec))  # the metric's hook
    with pytest.raises(
        RetryableError, match="cannot load the rerank model: cannot load rerank-dir"
    ):
        held.for_shard(Task.RERANK)
    assert held.for_shard(Task.RERANK).spec == "rerank-dir"
    assert len(calls) == 2 and failed == [(Task.RERANK, "rerank-dir")]
    # Loading at start (preload) keeps the error permanent: the worker stops.
    held, _, _ = models(fail_first=1)
    with pytest.raises(ModelLoadError):
        held.load(Task.EMBED)


def test_a_job_for_another_model_is_left_for_another_worker_without_loading_anything():
    held, calls, _ = models()
    held.check_job_model(Task.RERANK, "job-1", "rerank-dir")
    with pytest.raises(WrongWorker, match="serving rerank model 'BAAI/bge-reranker-v2-m3'"):
        held.check_job_model(Task.RERANK, "job-1", "BAAI/bge-reranker-v2-m3")
    with pytest.raises(WrongWorker, match="this one serves 'random:tiny'"):
        held.check_job_model(Task.EMBED, "job-1", "rerank-dir")
    assert calls == []


def test_preload_setting():
    assert Settings(preload="embed").preload_tasks == [Task.EMBED]
    assert Settings(preload=" rerank , embed").preload_tasks == [Task.RERANK, Task.EMBED]
    assert Settings(preload="none").preload_tasks == []
    with pytest.raises(ValidationError, match="unknown task 'colbert'"):
        Settings(preload="embed,colbert")
