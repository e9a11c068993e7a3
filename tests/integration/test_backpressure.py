"""The producer never lets a job's queued shards exceed --max-queued."""

from __future__ import annotations

import threading

from pipeline.jobs.keys import DEFAULT_QUEUE
from tests.integration.conftest import corpus_records, run_cli, slow_stub, write_jsonl


def queue_length(client, queue: str) -> int:
    # Celery's Redis transport keeps one list per priority step: "q" and "q\x06\x16N".
    keys = [queue, *client.scan_iter(match=f"{queue}\x06\x16*")]
    return sum(client.llen(key) for key in keys)


def test_queued_shards_stay_under_the_limit(tmp_path, cli_env, stub_built, workers, store):
    slow_stub(cli_env, stub_built, 5000)  # the job lasts ~4 s: the producer waits on it
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(120))
    workers.start(1)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(queue_length(store.redis, DEFAULT_QUEUE))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_cli(
            "submit", str(corpus), "--out", str(tmp_path / "out"),
            "--shard-docs", "6", "--max-queued", "2",
            env=cli_env, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip().splitlines()[-1]
        assert run_cli("wait", job_id, "--timeout", "600", env=cli_env, timeout=620).returncode == 0
    finally:
        stop.set()
        sampler.join()
    assert store.status(job_id).shards.done == 20
    assert len(samples) > 100
    assert max(samples) <= 2
    assert max(samples) == 2  # the limit was reached: the producer really waited
