"""The gate a worker's slots take turns at (pipeline/runtime/device_gate.py): one holder
at a time across processes, and a holder that dies (kill -9) never blocks the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from pipeline.runtime.device_gate import GATE_FILE_ENV, DeviceGate, gate_from_environment

HOLD = """
import sys, time
from pipeline.runtime.device_gate import DeviceGate
gate = DeviceGate(sys.argv[1])
with gate():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(path, seconds: float) -> subprocess.Popen[str]:
    """A process holding the gate for `seconds` (once it printed "held")."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_another_process_waits_for_the_holder_and_the_wait_is_counted(tmp_path):
    path = tmp_path / "gate"
    waits: list[float] = []
    gate = DeviceGate(str(path), waits.append)
    process = holder(path, 0.6)
    started = time.perf_counter()
    with gate():
        waited = time.perf_counter() - started
    process.wait(timeout=10)
    assert waited >= 0.3  # it waited for the holder to let go
    assert waits and waits[0] == gate.waited >= 0.3
    gate.close()


def test_a_holder_killed_outright_frees_the_gate(tmp_path):
    path = tmp_path / "gate"
    process = holder(path, 600)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    gate = DeviceGate(str(path))
    started = time.perf_counter()
    with gate():
        assert time.perf_counter() - started < 5
    gate.close()


def test_threads_of_one_process_take_turns_too(tmp_path):
    gate = DeviceGate(str(tmp_path / "gate"))
    inside, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            with gate():
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.001)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1
    gate.close()


def test_no_gate_without_the_file_a_worker_of_several_slots_names(monkeypatch, tmp_path):
    monkeypatch.delenv(GATE_FILE_ENV, raising=False)
    assert gate_from_environment() is None
    monkeypatch.setenv(GATE_FILE_ENV, str(tmp_path / "gate"))
    gate = gate_from_environment()
    assert gate is not None and gate.path == str(tmp_path / "gate")


def test_a_slot_runs_its_shards_batches_inside_the_gate_and_marks_its_own_slot(
    tmp_path, store, tiny
):
    """A runtime of slot 1 of 2: the engine it makes holds the gate while its batches run
    (not while the shard is read, tokenized or written), and the busy marker is slot 1's."""
    import dataclasses

    from pipeline.runtime.shard_runner import run_shard
    from tests.pipeline.runtime.queue_job import runtime_of, submitted

    events: list[str] = []
    gate = DeviceGate(str(tmp_path / "gate"), lambda waited: events.append("gate"))
    runtime = dataclasses.replace(runtime_of(store, tiny), slots=2, slot=1, device_gate=gate)
    markers: list[set[str]] = []
    note_busy = store.note_busy

    def busy(worker: str, shard: str, started: float, slot: int = 0) -> None:
        note_busy(worker, shard, started, slot)
        markers.append(set(store.worker_record(worker)))

    store.note_busy = busy
    job_id, sent = submitted(tmp_path, store, documents=20)
    outcome = run_shard(sent[0], runtime)
    assert outcome.state is not None and outcome.state.value == "done"
    spec = runtime.job_spec(job_id)
    engine = runtime.engine(spec)
    assert engine.device_gate is gate
    assert engine.batch_tokens == type(engine)(tiny, engine.options).batch_tokens  # CPU: whole
    assert events == ["gate"]  # one piece: its batches inside the gate once
    assert markers == [{"shard:1", "shard_started:1"}]
    gate.close()


def test_a_cuda_budget_is_shared_between_slots_within_its_floor():
    from pipeline.engine.batching import CUDA_BUDGET_BOUNDS, share_budget

    assert share_budget(131_072, 2) == 65_536
    assert share_budget(100_000, 3) == 32_768  # whole 1,024s
    assert share_budget(20_480, 4) == CUDA_BUDGET_BOUNDS[0]
    assert share_budget(65_536, 1) == 65_536
