"""The autoscaling policy on tables of cases."""

from __future__ import annotations

import pytest

from pipeline.ops.scaling import ScaleLimits, desired_workers

LIMITS = ScaleLimits(max_workers=4, min_workers=0, shards_per_worker=2, cooldown_seconds=30)


@pytest.mark.parametrize(
    ("backlog", "running", "low_since", "now", "desired", "next_low_since"),
    [
        (0, 0, None, 100.0, 0, None),  # idle stays idle
        (1, 0, None, 100.0, 1, None),  # any backlog starts a worker at once
        (5, 1, None, 100.0, 3, None),  # ceil(5 / 2): up at once
        (50, 2, None, 100.0, 4, None),  # never above the devices
        (8, 4, 90.0, 100.0, 4, None),  # enough again: the low timer resets
        (2, 4, None, 100.0, 4, 100.0),  # fewer would do: the cooldown starts, nobody stops
        (2, 4, 100.0, 129.0, 4, 100.0),  # still cooling down
        (2, 4, 100.0, 130.0, 1, None),  # cooled down: down to what the backlog needs
        (0, 3, 70.0, 100.0, 0, None),  # ... or to zero
        (3, 0, None, 100.0, 2, None),  # in-flight shards count: 3 -> 2 workers
    ],
)
def test_desired_workers(backlog, running, low_since, now, desired, next_low_since):
    decision = desired_workers(backlog, running, LIMITS, low_since, now)
    assert (decision.desired, decision.low_since) == (desired, next_low_since)


def test_minimum_and_lost_devices():
    floor = ScaleLimits(max_workers=3, min_workers=1, cooldown_seconds=0)
    assert desired_workers(0, 0, floor, None, 0.0).desired == 1  # the floor starts at once
    assert desired_workers(0, 3, floor, None, 0.0).desired == 1  # zero cooldown: at once
    # More running than devices (a device was removed): shrink to the devices at once.
    assert desired_workers(10, 5, floor, None, 0.0).desired == 3
    slow = ScaleLimits(max_workers=2, cooldown_seconds=60)
    assert desired_workers(0, 5, slow, None, 0.0).desired == 2  # no cooldown above the devices


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, "at least one device"),
        ({"max_workers": 2, "min_workers": 3}, "--min"),
        ({"max_workers": 2, "shards_per_worker": 0}, "--shards-per-worker"),
        ({"max_workers": 2, "cooldown_seconds": -1}, "--cooldown"),
    ],
)
def test_limits_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScaleLimits(**kwargs)


def test_autoscale_names_or_removes_its_worker_logs_at_exit(tmp_path):
    """Issue 33, item 9: the logs were left in a temp directory never named at exit."""
    from pipeline.cli.scale import closing_words

    own = tmp_path / "m3pipe-autoscale-x"
    own.mkdir()
    (own / "cpu0.log").write_text("ready.")
    assert "their logs removed" in closing_words(own, own=True, died=0)
    assert not own.exists()
    own.mkdir()
    said = closing_words(own, own=True, died=2)
    assert said.endswith(f"(2 worker(s) died on their own); worker logs kept in {own}")
    assert own.exists()
    given = tmp_path / "given"
    given.mkdir()
    assert closing_words(given, own=False, died=0).endswith(f"worker logs kept in {given}")
    assert given.exists()


def test_devices_the_machine_does_not_have_are_refused_at_start(tmp_path):
    """Issue 29, item 4: --devices 0,1,2,3 on a 2-GPU box restarted the missing ones on
    every poll. Counted without CUDA: the driver's GPUs, narrowed by CUDA_VISIBLE_DEVICES."""
    from pipeline.ops.autoscaler import check_devices
    from pipeline.ops.gpus import visible_gpu_count

    driver = tmp_path / "gpus"
    driver.mkdir()
    for bus in ("0000:3b:00.0", "0000:86:00.0"):
        (driver / bus).mkdir()
    assert visible_gpu_count({}, driver) == 2
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": "1"}, driver) == 1
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}, driver) == 0
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": "0,7,1"}, driver) == 1  # CUDA stops at 7
    assert visible_gpu_count({}, tmp_path / "no-driver") == 0
    check_devices(["0", "1", "cpu"], 2)
    with pytest.raises(ValueError, match=r"GPU 2, 3 not present: this machine shows 2"):
        check_devices(["0", "1", "2", "3"], 2)


def test_a_slot_whose_worker_keeps_dying_backs_off(tmp_path, store, monkeypatch):
    """A worker that dies at start is restarted after 5 s, then 10 s, ... not every poll;
    the metric and the log say so."""
    import subprocess
    import sys

    from pipeline.ops import autoscaler as module
    from pipeline.ops.autoscaler import Autoscaler

    now = [1000.0]
    started: list[str] = []

    def dying_worker(device, name, env, log, **kwargs):
        started.append(name)
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])

    monkeypatch.setattr(module, "spawn_worker", dying_worker)
    store.redis.lpush("m3pipe", "a waiting shard")  # backlog: one worker wanted
    scaler = Autoscaler(
        devices=["cpu"], limits=ScaleLimits(max_workers=1), queues=["m3pipe"],
        client=store.redis, env={}, log_dir=tmp_path, clock=lambda: now[0],
    )  # fmt: skip

    def poll(seconds_later: float) -> None:
        now[0] += seconds_later
        slot = scaler.slots[0]
        if slot.process is not None:
            slot.process.wait(30)
        scaler.step()

    poll(0)
    assert len(started) == 1
    poll(1)  # it died: not started again at once
    assert len(started) == 1 and scaler.slots[0].not_before == now[0] + 5
    assert scaler.metrics.registry.get_sample_value("m3pipe_autoscaler_slots_backing_off") == 1
    poll(5)  # the pause is over
    assert len(started) == 2
    poll(1)  # dead again: twice the pause
    assert scaler.slots[0].deaths_in_a_row == 2 and scaler.slots[0].not_before == now[0] + 10
    poll(9)
    assert len(started) == 2
    poll(1)
    assert len(started) == 3
    scaler.shutdown()


def test_a_gpu_without_free_memory_gets_no_worker_until_it_has_some(tmp_path, store, monkeypatch):
    """Another process holds GPU 0: no worker is started there (it would fail to load and
    restart for ever); the log and metrics say why; it starts once the memory is free."""
    import subprocess
    import sys

    from pipeline.ops import autoscaler as module
    from pipeline.ops.autoscaler import MEMORY_RECHECK_SECONDS, Autoscaler

    now, free, started = [1000.0], [1 << 30], []

    def waiting_worker(device, name, env, log, **kwargs):
        started.append(device)
        return subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )

    monkeypatch.setattr(module, "spawn_worker", waiting_worker)
    store.redis.lpush("m3pipe", "a", "b")  # backlog: two workers wanted
    scaler = Autoscaler(
        devices=["0", "1"], limits=ScaleLimits(max_workers=2, shards_per_worker=1),
        queues=["m3pipe"], client=store.redis, env={}, log_dir=tmp_path,
        clock=lambda: now[0], min_free_bytes=4 << 30,
        free_memory=lambda device: free[0] if device == "0" else 40 << 30,
    )  # fmt: skip
    gauge = "m3pipe_autoscaler_slots_short_of_memory"
    try:
        scaler.step()
        assert started == ["1"] and scaler.metrics.registry.get_sample_value(gauge) == 1
        now[0] += 1
        scaler.step()
        assert started == ["1"]  # not asked again before the pause is over
        free[0] = 60 << 30
        now[0] += MEMORY_RECHECK_SECONDS
        scaler.step()
        assert started == ["1", "0"] and scaler.metrics.registry.get_sample_value(gauge) == 0
    finally:
        scaler.shutdown()


def test_free_gpu_memory_is_read_through_the_inherited_device_list():
    from pipeline.ops.gpus import gpu_free_bytes
    from tests.fake_nvml import FakeNvml

    nvml = FakeNvml(free=7 << 30)
    assert gpu_free_bytes("1", {"CUDA_VISIBLE_DEVICES": "4,5"}, nvml) == 7 << 30
    assert nvml.handles[-1] == ("index", 5)
    assert gpu_free_bytes("0", {"CUDA_VISIBLE_DEVICES": "GPU-abc"}, nvml) == 7 << 30
    assert nvml.handles[-1] == ("uuid", "GPU-abc")
    assert gpu_free_bytes("3", {"CUDA_VISIBLE_DEVICES": "0"}, nvml) is None  # not visible
    assert gpu_free_bytes("0", {}, FakeNvml(fail_after_init=False)) == 50 << 30


def test_run_takes_one_worker_per_gpu_the_driver_shows_without_cuda(monkeypatch):
    """`m3pipe run` counts GPUs as the autoscaler does (the driver and CUDA_VISIBLE_DEVICES),
    with no CUDA context in its own process."""
    import pipeline.local.run as run

    monkeypatch.setattr(run, "visible_gpu_count", lambda: 2)
    assert run.worker_devices(None, force_cpu=False) == ["0", "1"]
    assert run.worker_devices(1, force_cpu=False) == ["0"]
    assert run.worker_devices(None, force_cpu=True) == ["cpu"]
    monkeypatch.setattr(run, "visible_gpu_count", lambda: 0)
    assert run.worker_devices(3, force_cpu=False) == ["cpu"] * 3
