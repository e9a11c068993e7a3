"""A worker's Prometheus endpoint after a real job: every documented series, real values."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import corpus_records, run_cli, wait_until, write_jsonl
from tests.integration.test_flower import get
from tests.integration.test_redis_auth import free_port


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    # The worker registers as ready just before its pool process starts serving metrics: on
    # a loaded machine (CI runs two test files at once) the first scrape can come too soon.
    _, text = wait_until(
        lambda: (r := get(f"http://127.0.0.1:{port}/metrics", auth=None))[0] == 200 and r,
        timeout=60, step=0.2, message="the worker's metrics endpoint never answered",
    )  # fmt: skip
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_worker_metrics_after_a_job(tmp_path, cli_env, workers):
    port = free_port()
    cli_env["M3PIPE_METRICS_PORT"] = str(port)
    [name] = workers.start(1)
    before = scrape(port)
    assert before[("m3pipe_shards_total", (("outcome", "done"),))] == 0
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(20))
    out = str(tmp_path / "out")
    submitted = run_cli("submit", str(corpus), "--out", out, "--shard-docs", "10", env=cli_env)
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert run_cli("wait", job_id, "--timeout", "120", env=cli_env, timeout=140).returncode == 0

    m = scrape(port)
    assert m[("m3pipe_shards_total", (("outcome", "done"),))] == 2
    assert m[("m3pipe_shards_total", (("outcome", "failed"),))] == 0
    assert m[("m3pipe_documents_total", ())] == 20
    assert m[("m3pipe_rows_total", ())] == 20
    tokens, padded = m[("m3pipe_tokens_total", ())], m[("m3pipe_padded_tokens_total", ())]
    assert 0 < tokens <= padded
    assert 0 < m[("m3pipe_padding_efficiency", ())] <= 1
    assert m[("m3pipe_shard_encode_seconds_count", ())] == 2
    assert m[("m3pipe_shard_encode_seconds_sum", ())] > 0
    assert m[("m3pipe_model_load_seconds", (("task", "embed"),))] > 0
    assert ("m3pipe_model_load_seconds", (("task", "rerank"),)) not in m  # not loaded yet
    assert m[("m3pipe_pairs_total", ())] == 0
    assert m[("m3pipe_tenant_shards_total", (("outcome", "done"), ("tenant", "default")))] == 2
    assert m[("m3pipe_tenant_rows_total", (("tenant", "default"),))] == 20
    info = (("device", "cpu"), ("model", "random:tiny"), ("task", "embed"), ("worker", name))
    assert m[("m3pipe_worker_info", info)] == 1
    assert m[("process_resident_memory_bytes", ())] > 100e6  # the pool process, model loaded
