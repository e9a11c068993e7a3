"""Routing by model with real workers (issue 28, item 4): with --route-by-model, a worker
never takes, or hands back, a shard of a model it does not serve."""

from __future__ import annotations

import time

from pipeline.broker.backlog import backlog
from pipeline.broker.routing import model_queue
from pipeline.engine.random_model import cached_random_model
from tests.integration.test_tenants import assert_every_document_once, finished, submit, wait


def test_workers_of_two_models_take_only_their_own_models_shards(
    tmp_path, cli_env, workers, store, model_cache
):
    # One model spelled two ways is two routes: enough to tell the workers apart.
    by_path = str(cached_random_model("tiny", model_cache))
    routed = {**cli_env, "M3PIPE_ROUTE_BY_MODEL": "1"}
    [by_name_worker] = workers.start(1, queue=None, env=routed)
    job_name = submit(tmp_path, routed, "name", 6)
    job_path = submit(tmp_path, routed, "path", 6, "--model", by_path)
    wait(job_name, routed)
    time.sleep(1.0)  # a worker that took the other model's shards would have by now
    assert store.status(job_path).shards.queued == 6 and store.status(job_path).shards.done == 0
    assert store.status(job_path).waiting is None  # never handed back: never taken
    assert backlog(store.redis, model_queue("m3pipe", by_path)).total == 6
    assert "waits for a worker serving" not in workers.log(by_name_worker)
    [by_path_worker] = workers.start(1, queue=None, env={**routed, "M3PIPE_MODEL": by_path})
    wait(job_path, routed)
    assert {w for *_, w in finished(store, job_name)} == {by_name_worker}
    assert {w for *_, w in finished(store, job_path)} == {by_path_worker}
    assert_every_document_once(tmp_path / "name", 6)
    assert_every_document_once(tmp_path / "path", 6)
