"""`m3pipe worker` device pinning and naming, and the Celery settings it runs with."""

from __future__ import annotations

import os
import socket

import pytest

from pipeline.cli.main import main
from pipeline.cli.worker import pin_device
from pipeline.settings import Settings
from workers.app import celery_config


@pytest.fixture
def clean_env(monkeypatch):
    # setenv records the original value (or its absence) and restores it afterwards,
    # whatever the command under test writes into os.environ.
    names = ("CUDA_VISIBLE_DEVICES", "M3PIPE_WORKER_DEVICE", "M3PIPE_WORKER_NAME",
             "M3PIPE_STARTUP_FAILURE_FILE", "PYTORCH_CUDA_ALLOC_CONF")  # fmt: skip
    for name in (*names, "M3PIPE_PRECISION", "M3PIPE_MODEL"):
        monkeypatch.setenv(name, "x")
    for name in names:
        monkeypatch.delenv(name)
    return monkeypatch


def test_pin_device(clean_env):
    assert pin_device("3") == ("cuda", "gpu3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert pin_device("cpu") == ("cpu", "cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ValueError, match="GPU index or cpu"):
        pin_device("cuda:1")


def test_pin_device_maps_through_an_inherited_device_list(clean_env):
    """A scheduler gave the process GPUs 4 and 5: --device 1 is physical GPU 5 (issue 29,
    item 4), and an index beyond the list is refused, not pinned to a GPU of another job."""
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    assert pin_device("1") == ("cuda", "gpu1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa, GPU-bbbb")
    pin_device("0")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
    clean_env.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    with pytest.raises(ValueError, match=r"--device 2: only 2 GPU\(s\) visible"):
        pin_device("2")


def test_worker_command_pins_names_and_starts_celery(clean_env):
    seen: list[tuple[str, list[str], int]] = []
    clean_env.setattr("workers.app.run_worker", lambda *args: seen.append(args) or 0)
    # No Redis here: tests/integration/test_redis_auth.py runs the start-up checks for real.
    clean_env.setattr("pipeline.cli.worker.check_worker_can_start", lambda settings, name: None)
    assert main(["worker", "--device", "2", "--queues", "a,b"]) == 0
    name, queues, slots = seen[0]
    assert name == f"gpu2@{socket.gethostname()}"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert os.environ["M3PIPE_WORKER_DEVICE"] == "cuda"
    assert os.environ["M3PIPE_WORKER_NAME"] == name
    assert (queues, slots) == (["a", "b"], 1)
    # The allocator setting compose and k8s set, set by the worker itself (issue 29, item 4)
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    clean_env.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")  # the user's wins
    clean_env.delenv("CUDA_VISIBLE_DEVICES")  # a new worker process, nothing inherited
    assert main(["worker", "--device", "2"]) == 0
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
    assert main(["worker", "--device", "gpu0"]) == 2  # a usage error, not a crash


def test_worker_exits_non_zero_when_celerys_worker_stopped_on_an_error(clean_env, capsys):
    """Celery's worker class keeps its exit status (1 after an unrecoverable error) where its
    command line would exit with it; the worker command must not say 0."""
    from workers.app import worker_exit_code

    clean_env.setattr("pipeline.cli.worker.check_worker_can_start", lambda settings, name: None)
    clean_env.setattr("workers.app.run_worker", lambda name, queues, slots: 1)
    assert main(["worker", "--device", "cpu"]) == 1
    assert "stopped with exit status 1" in capsys.readouterr().err
    clean_env.setattr("workers.app.run_worker", lambda name, queues, slots: 0)
    assert main(["worker", "--device", "cpu"]) == 0
    clean_env.setattr("workers.app.run_worker", lambda name, queues, slots: 130)
    assert main(["worker", "--device", "cpu"]) == 130  # Ctrl-C, as every m3pipe command
    codes = [worker_exit_code(c, []) for c in (None, 0, 1, 70, 300, -1, "no broker")]
    assert codes == [0, 0, 1, 70, 1, 1, 1]
    assert worker_exit_code(1, ["SIGINT"]) == 130 and worker_exit_code(None, ["SIGTERM"]) == 0


def test_worker_slots_are_celerys_concurrency_with_a_gate_file_and_bounded(clean_env, capsys):
    from pipeline.runtime.device_gate import GATE_FILE_ENV

    seen: list[tuple[int, str | None]] = []
    clean_env.setattr(
        "workers.app.run_worker",
        lambda name, queues, slots: seen.append((slots, os.environ.get(GATE_FILE_ENV))) or 0,
    )
    clean_env.setattr("pipeline.cli.worker.check_worker_can_start", lambda settings, name: None)
    clean_env.delenv(GATE_FILE_ENV, raising=False)
    assert main(["worker", "--device", "cpu", "--slots", "2"]) == 0
    slots, gate = seen[-1]
    assert slots == 2
    assert gate is not None and gate.endswith("device-gate")  # in the worker's scratch dir
    clean_env.delenv(GATE_FILE_ENV, raising=False)
    clean_env.setenv("M3PIPE_WORKER_SLOTS", "1")
    assert main(["worker", "--device", "cpu"]) == 0
    slots, gate = seen[-1]
    assert slots == 1 and gate is None  # alone: no gate
    for bad in ("0", "9"):
        assert main(["worker", "--device", "cpu", "--slots", bad]) == 2
        assert "worker_slots" in capsys.readouterr().err
    clean_env.setenv("M3PIPE_WORKER_SLOTS", "1")  # the worker set it for its pool processes
    assert main(["run", "in.jsonl", "--out", "/tmp/x", "--slots", "9"]) == 2
    assert "--slots must be 1-8" in capsys.readouterr().err


def test_celery_settings_are_json_only_late_ack_no_prefetch():
    config = celery_config(Settings(broker_url="unix:///tmp/r.sock", visibility_timeout=77))
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["result_accept_content"] == ["json"]
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["worker_disable_prefetch"]
    assert config["broker_transport_options"]["visibility_timeout"] == 77
    assert config["broker_url"] == "redis+socket:///tmp/r.sock"
    assert config["worker_send_task_events"] and config["result_expires"] == 86400
    assert config["task_ignore_result"]


def test_bad_queue_names_and_shard_options_are_usage_errors(clean_env, tmp_path, capsys):
    clean_env.setattr("workers.app.run_worker", lambda name, queues, slots: 0)
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "x"}\n')
    out = str(tmp_path / "out")
    # Options are checked before Redis is contacted: none runs here.
    assert main(["submit", str(inp), "--out", out, "--queue", "a b"]) == 2
    assert "queue name 'a b'" in capsys.readouterr().err
    assert main(["worker", "--device", "cpu", "--queues", "ok,../x"]) == 2
    assert main(["submit", str(inp), "--out", out, "--shard-bytes", "10"]) == 2
    assert main(["submit", str(inp), "--out", out, "--max-queued", "0"]) == 2
    assert main(["submit", str(inp), "--out", out, "--shard-docs", "0"]) == 2
    assert main(["run", str(inp), "--out", out, "--workers", "0"]) == 2
    assert main(["submit", str(inp), "--out", out, "--keep-fields", "dense"]) == 2
    assert main(["submit", str(inp), "--out", out, "--task", "rerank", "--reuse", out]) == 2
    assert "--reuse is for --task embed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_worker_metrics_port_defaults():
    from pipeline.cli.worker import worker_metrics_port
    from pipeline.settings import Settings

    unset = Settings(metrics_port=None)
    assert worker_metrics_port(None, unset, "3") == 9403  # one port per GPU on a box
    assert worker_metrics_port(None, unset, "cpu") == 9400
    assert worker_metrics_port(None, Settings(metrics_port=0), "3") == 0  # env turns it off
    assert worker_metrics_port(9500, Settings(metrics_port=0), "3") == 9500  # the flag wins


def test_a_full_redis_is_one_line_with_what_to_do(redis_server, store, tmp_path, capsys,
                                                   monkeypatch):  # fmt: skip
    """`submit --inline-shards` into a Redis at maxmemory with noeviction (issue 28, item
    7): once a kombu traceback; now one line that names the ways out."""
    import json

    store.redis.config_set("maxmemory-policy", "noeviction")
    store.redis.config_set("maxmemory", store.redis.info("memory")["used_memory"] + (1 << 20))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": "word " * 400}) + "\n"
                              for i in range(2000)))  # fmt: skip
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    code = main(["submit", str(corpus), "--out", str(tmp_path / "out"), "--inline-shards",
                 "--shard-docs", "100", "--max-queued", "1000"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "Redis is out of memory (maxmemory reached" in err
    assert "without --inline-shards" in err and "--resume" in err


def test_a_reader_that_goes_away_is_not_an_error(redis_server, store, tmp_path):
    """`m3pipe status JOB | head -3` ended with "[Errno 32] Broken pipe" (issue 33, item 9)."""
    import subprocess
    import sys

    from tests.pipeline.jobs.test_jobs import make_spec

    store.create(make_spec(tmp_path))
    env = {**os.environ, "M3PIPE_BROKER_URL": redis_server.url}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "status", "job-1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b"", err
