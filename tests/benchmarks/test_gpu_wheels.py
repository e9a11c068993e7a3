"""The GPU check's wheels: a pinned list that agrees with constraints.txt, a check that says
what is missing, and a GPU run that stops at once (not halfway) without them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_wheels import listed, normalized, problems

ROOT = Path(__file__).resolve().parents[2]
LIST = ROOT / "benchmarks" / "gpu-wheels.txt"


def test_every_wheel_is_pinned_as_the_constraints_pin_it():
    wanted = listed(LIST)
    assert "flagembedding" in wanted and "pydantic_core" in wanted and "celery" in wanted
    pins = dict(
        (normalized(m[1]), m[2])
        for m in re.finditer(
            r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), re.M
        )
    )
    differ = {
        name: (v, pins[name]) for name, v in wanted.items() if name in pins and pins[name] != v
    }
    assert differ == {}


def test_the_check_names_what_is_missing_or_doubled(tmp_path):
    wanted = {"pydantic": "2.13.4", "redis": "8.1.0", "celery": "5.7.0"}
    (tmp_path / "pydantic-2.13.4-py3-none-any.whl").touch()
    (tmp_path / "redis-8.1.0-py3-none-any.whl").touch()
    (tmp_path / "redis-7.0.0-py3-none-any.whl").touch()
    assert problems(wanted, tmp_path) == [
        "missing celery==5.7.0",
        "redis: several versions ['7.0.0', '8.1.0']; keep 8.1.0 only",
    ]
    with pytest.raises(ValueError, match="not NAME==VERSION"):
        bad = tmp_path / "list.txt"
        bad.write_text("celery>=5\n")
        listed(bad)


def test_a_gpu_run_without_the_wheels_stops_first_saying_why(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "WHEELS": str(tmp_path),
             "RESULTS": str(tmp_path / "results")},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "missing flagembedding==1.4.2" in done.stderr
    assert "fetch_gpu_wheels.sh" in done.stderr
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").iterdir())
