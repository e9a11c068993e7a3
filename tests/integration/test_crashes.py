"""Workers killed or stopped mid-shard, and shards delivered twice: every id exactly once."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.broker.backlog import backlog
from pipeline.jobs.keys import DEFAULT_QUEUE, worker_key
from pipeline.jobs.resume import read_shard_file
from pipeline.settings import Settings
from pipeline.storage.sink import part_name
from schemas.document import Document
from schemas.job import ShardMessage
from schemas.tenant import Priority
from tests.integration.conftest import WORKER_COMMAND, run_cli, slow_stub, submit, wait_until

SHARDS = 4
# Workers run the stand-in encoder at this rate (tests/integration/conftest.py, slow_stub):
# a shard of four documents of 300 words (~1,400 tokens each) takes ~2 s, time enough to be
# killed or stopped mid-shard, while the CPU sleeps.
TOKENS_PER_SECOND = 2500
# A worker that kills its pool process at a chosen stage of a shard (stage_kills.py).
STAGE_KILL_WORKER = (sys.executable, "-m", "tests.integration.stage_kills", *WORKER_COMMAND[3:])


def long_records(count: int, words: int = 300) -> list[dict[str, str]]:
    from pipeline.engine.synthetic_text import TextGenerator

    gen = TextGenerator(3)
    return [{"id": f"doc-{i:03d}", "text": gen.document(words)} for i in range(count)]


def assert_exactly_once(out, records, shards: int) -> None:
    files = sorted(out.glob("part-*.parquet"))
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(shards)]
    for f in files:
        pq.read_metadata(f)  # every visible file is whole
    ids = ds.dataset(out, format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in records)
    assert not list(out.glob(".part-*"))  # temp files of killed writes are cleaned up


def running_shard(store, job_id):
    states = store.shard_states(job_id)
    return next((s for s, state in states.items() if state.value == "running"), None)


def test_pool_process_killed_mid_shard(tmp_path, cli_env, stub_built, workers, store):
    slow_stub(cli_env, stub_built, TOKENS_PER_SECOND)
    records = long_records(16)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "4")
    [name] = workers.start(1)
    wait_until(lambda: store.attempts(job_id, 1) == 1)  # the second shard has started
    time.sleep(0.3)  # let some batches run
    os.kill(int(store.redis.hget(worker_key(name), "pid")), signal.SIGKILL)
    # The killed shard stays `running` while a new pool process loads the model.
    shard = running_shard(store, job_id)
    assert shard is not None
    attempts_at_kill = store.attempts(job_id, shard)
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    assert store.attempts(job_id, shard) == attempts_at_kill + 1  # handed back, run again
    assert_exactly_once(tmp_path / "out", records, SHARDS)
    assert store.status(job_id).documents_done == 16


def test_whole_worker_killed_shard_redelivered_after_visibility_timeout(
    tmp_path, cli_env, stub_built, workers, store
):
    slow_stub(cli_env, stub_built, TOKENS_PER_SECOND)
    # A short timeout keeps the test quick; the planned rate is raised so shards still hold
    # several documents (shards are cut to fit half the timeout at that rate).
    cli_env.update(M3PIPE_VISIBILITY_TIMEOUT="10", M3PIPE_PLANNED_TOKENS_PER_SECOND="8000")
    records = long_records(8)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "4")
    [first] = workers.start(1)
    wait_until(lambda: running_shard(store, job_id) is not None)
    time.sleep(0.3)  # let some batches run
    os.killpg(workers.processes[first].pid, signal.SIGKILL)  # main process and pool, at once
    workers.processes[first].wait()
    # The dead worker's shard stays `running` until it is redelivered.
    shard = running_shard(store, job_id)
    assert shard is not None
    attempts_at_kill = store.attempts(job_id, shard)
    workers.start(1)
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    assert store.attempts(job_id, shard) == attempts_at_kill + 1
    assert store.status(job_id).shards.total == 2
    assert_exactly_once(tmp_path / "out", records, 2)


def test_sigterm_finishes_the_current_shard(tmp_path, cli_env, stub_built, workers, store):
    slow_stub(cli_env, stub_built, TOKENS_PER_SECOND)
    records = long_records(16)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "4")
    [first] = workers.start(1)
    wait_until(lambda: running_shard(store, job_id) is not None)
    shard = running_shard(store, job_id)
    workers.processes[first].send_signal(signal.SIGTERM)  # warm shutdown
    assert workers.processes[first].wait(timeout=120) == 0
    assert store.shard_states(job_id)[shard].value == "done"
    made_by = read_shard_file(tmp_path / "out" / part_name(shard))
    assert made_by is not None and made_by.facts["worker"] == first  # in the part's footer
    [second] = workers.start(1)
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    assert store.attempts(job_id, shard) == 1
    assert_exactly_once(tmp_path / "out", records, SHARDS)
    workers.processes[second].send_signal(signal.SIGINT)  # Ctrl-C: m3pipe's status for it
    assert workers.processes[second].wait(timeout=120) == 130


def test_duplicate_delivery_writes_one_file_and_counts_once(
    tmp_path, cli_env, stub_built, workers, store
):
    slow_stub(cli_env, stub_built, 50_000)
    records = long_records(8)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "4")
    from workers.app import shard_publisher

    publish = shard_publisher(Settings(broker_url=cli_env["M3PIPE_BROKER_URL"]))
    first = [Document(id=r["id"], text=r["text"]) for r in records[:4]]
    for _ in range(2):  # the same shard twice more, as a redelivery would
        publish(
            ShardMessage(job_id=job_id, shard=0, documents=first), DEFAULT_QUEUE, Priority.NORMAL
        )
    workers.start(1)
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    wait_until(lambda: backlog(store.redis, DEFAULT_QUEUE).queued == 0, timeout=60)
    time.sleep(1)  # the duplicates are consumed after the job ended; they must change nothing
    status = store.status(job_id)
    assert (status.documents_done, status.rows_done, status.shards.done) == (8, 8, 2)
    assert store.attempts(job_id, 0) == 1  # the duplicates were skipped, not run
    assert_exactly_once(tmp_path / "out", records, 2)


def test_pool_process_killed_while_its_part_is_being_written(
    tmp_path, cli_env, stub_built, workers, store
):
    """Pieces of two documents: the part's temp file grows while the shard still computes
    (the stand-in engine at 20k tokens/s: ~0.7 s a piece). A kill then leaves the temp file
    only; the shard runs again, whole, exactly once."""
    cli_env.update(M3PIPE_PIECE_DOCUMENTS="2")
    slow_stub(cli_env, stub_built, 20_000)
    records = long_records(16, words=1500)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "8")
    [name] = workers.start(1)
    out = tmp_path / "out"
    writing = wait_until(lambda: list(out.glob(".part-*.tmp-*")), step=0.005)
    os.kill(int(store.redis.hget(worker_key(name), "pid")), signal.SIGKILL)
    shard = running_shard(store, job_id)
    assert shard is not None and not (out / part_name(shard)).exists(), writing
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    assert_exactly_once(out, records, 2)
    assert read_shard_file(out / part_name(shard)).facts["documents"] == 8


def test_a_worker_of_two_slots_holds_two_shards_and_a_killed_slot_loses_nothing(
    tmp_path, cli_env, stub_built, workers, store
):
    """`--slots 2` (M3PIPE_WORKER_SLOTS): one worker, two pool processes taking turns on
    the device, each its own shard: both are running at once (the second one's input read
    and tokenized while the first computes). One slot killed mid-shard, likely holding the
    device gate: the other goes on, the killed shard is run again, every id once."""
    slow_stub(cli_env, stub_built, TOKENS_PER_SECOND)
    cli_env.update(M3PIPE_WORKER_SLOTS="2")
    records = long_records(8)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "4")
    [name] = workers.start(1)

    def two_running() -> bool:  # in the job's state, and a busy marker a slot
        states = store.shard_states(job_id).values()
        markers = {"shard_started", "shard_started:1"} <= set(store.worker_record(name))
        return sum(state.value == "running" for state in states) == 2 and markers

    wait_until(two_running)  # (a slot marks its shard running a moment before its marker)
    record = store.worker_record(name)
    os.kill(int(record["pid"]), signal.SIGKILL)  # the slot that registered last
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    assert_exactly_once(tmp_path / "out", records, 2)
    assert store.status(job_id).documents_done == 8
    assert sorted(store.attempts(job_id, shard) for shard in range(2)) == [1, 2]


def test_a_pool_process_killed_at_each_stage_of_the_pipelined_path_loses_nothing(
    tmp_path, cli_env, stub_built, workers, store
):
    """One shard for each stage of a shard's pipelined path (tests/integration/stage_kills.py):
    reading its input, tokenizing ahead, computing, writing behind, its part committed but
    not recorded, recorded but not acknowledged. The pool process is SIGKILLed there on the
    shard's first delivery. Each shard is delivered again and the job ends with every id
    once; a shard killed before it was recorded ran twice, the one killed after it was
    recorded ran once (its second delivery found it done)."""
    from tests.integration.stage_kills import DIR_ENV, PLAN_ENV, STAGES

    kills = tmp_path / "kills"
    kills.mkdir()
    plan = ",".join(f"{shard}:{stage}" for shard, stage in enumerate(STAGES))
    root = Path(__file__).resolve().parents[2]
    cli_env.update(M3PIPE_MODEL=stub_built, M3PIPE_PIECE_DOCUMENTS="2")
    env = {**cli_env, PLAN_ENV: plan, DIR_ENV: str(kills), "PYTHONPATH": str(root)}
    # The tokenizer's thread pool as a user gets it (m3pipe sets TOKENIZERS_PARALLELISM=true,
    # which turns off the tokenizers library's guard for forks): each of the seven pool
    # processes is forked from the worker's main process and tokenizes in parallel, which
    # hangs if the main process ever used that pool before forking.
    env.pop("TOKENIZERS_PARALLELISM")
    records = long_records(4 * len(STAGES), words=150)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "4")
    assert store.status(job_id).shards.total == len(STAGES)
    [name] = workers.start(1, env=env, command=STAGE_KILL_WORKER)
    result = run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320)
    assert result.returncode == 0, workers.log(name)[-3000:]
    killed = sorted(path.name for path in kills.iterdir())
    assert killed == sorted(f"killed-{shard}-{stage}" for shard, stage in enumerate(STAGES))
    assert_exactly_once(tmp_path / "out", records, len(STAGES))
    attempts = {stage: store.attempts(job_id, shard) for shard, stage in enumerate(STAGES)}
    assert attempts == {stage: 1 if stage == "recorded" else 2 for stage in STAGES}
    status = store.status(job_id)
    assert (status.documents_done, status.shards.done) == (len(records), len(STAGES))
