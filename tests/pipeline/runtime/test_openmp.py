"""OpenMP's idle threads sleep at once in a process whose forward is not on this CPU (a GPU
worker, the stand-in engine), spin as before for a CPU forward, and the user's choice wins;
the choice is made before torch loads, in an `m3pipe` process of its own only."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline.engine import stub_model
from pipeline.runtime import openmp
from pipeline.runtime.openmp import (
    WAIT_POLICY_ENV,
    forward_on_this_cpu,
    sleep_when_idle_unless_computing,
)


def test_a_forward_on_this_cpu_is_a_real_model_off_a_gpu():
    assert forward_on_this_cpu(["BAAI/bge-m3"], on_gpu=False)
    assert forward_on_this_cpu(["stub:full", "BAAI/bge-reranker-v2-m3"], on_gpu=False)
    assert not forward_on_this_cpu(["BAAI/bge-m3"], on_gpu=True)
    assert not forward_on_this_cpu(["stub:full"], on_gpu=False)
    assert not forward_on_this_cpu([], on_gpu=False)  # nothing loaded: nothing to spin for
    assert openmp.STUB_PREFIX == stub_model.STUB_PREFIX  # one spelling of the stand-in


def test_idle_threads_sleep_unless_computing_and_the_users_choice_wins():
    environ: dict[str, str] = {}
    sleep_when_idle_unless_computing(True, environ)
    assert environ == {}
    sleep_when_idle_unless_computing(False, environ)
    assert environ == {WAIT_POLICY_ENV: "PASSIVE"}
    chosen = {WAIT_POLICY_ENV: "ACTIVE"}
    sleep_when_idle_unless_computing(False, chosen)
    assert chosen == {WAIT_POLICY_ENV: "ACTIVE"}


@pytest.fixture
def policy_unset(monkeypatch):
    monkeypatch.setenv(WAIT_POLICY_ENV, "x")  # restored (absent) after the test
    monkeypatch.delenv(WAIT_POLICY_ENV)
    return monkeypatch


class _Loaded(Exception):
    """Raised where the model would load: the policy is read there."""


def _policy_at_load(monkeypatch, argv, own_process):
    from pipeline.cli.main import main
    from pipeline.tasks.embed import EmbedTask

    seen: list[str | None] = []

    def load_model(self, *args, **kwargs):
        seen.append(os.environ.get(WAIT_POLICY_ENV))
        raise _Loaded

    monkeypatch.setattr(EmbedTask, "load_model", load_model)
    # A process of its own also freezes its heap after a load: not this test's process.
    for module in ("pipeline.cli.main", "pipeline.cli.local_commands"):
        monkeypatch.setattr(f"{module}.collector_paused_while_loading",
                            lambda freeze: contextlib.nullcontext())  # fmt: skip
    with pytest.raises(_Loaded):
        main(argv, own_process=own_process)
    return seen[0]


def test_encode_chooses_before_its_model_loads(policy_unset, tmp_path):
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "some text"}\n')

    def argv(model, device, name):
        return ["encode", str(corpus), "--out", str(tmp_path / name), "-q", "--model", model,
                "--device", device]  # fmt: skip

    stub = argv("stub:full", "cpu", "stub")
    assert _policy_at_load(policy_unset, stub, own_process=False) is None  # a test's process
    assert _policy_at_load(policy_unset, stub, own_process=True) == "PASSIVE"
    policy_unset.delenv(WAIT_POLICY_ENV)
    cpu_forward = argv("random:tiny", "cpu", "random")
    assert _policy_at_load(policy_unset, cpu_forward, own_process=True) is None


def test_a_worker_chooses_before_its_start_up_checks_load_torch(policy_unset):
    from pipeline.cli.main import main

    seen: list[str | None] = []

    def checks(settings, name):  # where torch is first imported
        seen.append(os.environ.get(WAIT_POLICY_ENV))

    policy_unset.setattr("pipeline.cli.worker.check_worker_can_start", checks)
    policy_unset.setattr("workers.app.run_worker", lambda name, queues, slots: 0)
    for name in ("CUDA_VISIBLE_DEVICES", "M3PIPE_WORKER_DEVICE", "M3PIPE_WORKER_NAME",
                 "M3PIPE_PRECISION", "M3PIPE_MODEL", "M3PIPE_METRICS_PORT",
                 "M3PIPE_STARTUP_FAILURE_FILE"):  # fmt: skip
        policy_unset.setenv(name, "x")  # whatever the command sets, restored afterwards
        policy_unset.delenv(name)
    assert main(["worker", "--device", "cpu", "--model", "stub:full"], own_process=True) == 0
    policy_unset.delenv(WAIT_POLICY_ENV)
    assert main(["worker", "--device", "cpu", "--model", "random:tiny"], own_process=True) == 0
    assert seen == ["PASSIVE", None]


@pytest.mark.slow  # a process that imports torch: ~4 s
def test_an_m3pipe_process_has_chosen_when_torch_is_imported(tmp_path):
    """The real order, in a process of its own: the policy is in the environment when
    torch's module runs (GNU OpenMP reads it once, as torch loads it)."""
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "some text"}\n')
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, os, sys
        class Watch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name != "torch":
                    return None
                sys.meta_path.remove(self)  # asked again later if this spec goes unused
                spec = importlib.util.find_spec(name)
                sys.meta_path.insert(0, self)
                run = spec.loader.exec_module
                def exec_module(module):
                    if self in sys.meta_path:
                        sys.meta_path.remove(self)
                    print("at torch:", os.environ.get("{WAIT_POLICY_ENV}"), file=sys.stderr)
                    run(module)
                spec.loader.exec_module = exec_module
                return spec
        sys.meta_path.insert(0, Watch())
        sys.argv = ["m3pipe", "encode", {str(corpus)!r}, "--out", {str(tmp_path / "out")!r},
                    "-q", "--model", "stub:full", "--device", "cpu"]
        from pipeline.cli.main import entry
        entry()
    """)
    env = {k: v for k, v in os.environ.items() if k != WAIT_POLICY_ENV}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "at torch: PASSIVE" in done.stderr
