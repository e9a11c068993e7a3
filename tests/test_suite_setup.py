"""The suite's own set-up (tests/conftest.py)."""

from __future__ import annotations

import os

from tests.conftest import share_the_cores


def test_xdist_processes_share_the_cores_and_a_chosen_value_stays():
    cores = os.cpu_count() or 1
    environ = {"PYTEST_XDIST_WORKER_COUNT": "2"}
    share_the_cores(environ)
    assert environ["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    chosen = {"PYTEST_XDIST_WORKER_COUNT": "3", "OMP_NUM_THREADS": "4"}
    share_the_cores(chosen)
    assert chosen["OMP_NUM_THREADS"] == "4"
    for alone in ({}, {"PYTEST_XDIST_WORKER_COUNT": "1"}):  # one process: torch's default
        share_the_cores(alone)
        assert "OMP_NUM_THREADS" not in alone
