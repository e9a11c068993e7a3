"""`m3pipe fetch-model`: the cache is filled (or found filled) and each model loads from it.

No machine here reaches the hub: a hub model is staged in a Hugging Face cache laid out as a
download leaves it (models--org--name/snapshots/<revision>, refs/main), and fetch-model runs
with HF_HUB_OFFLINE=1, as workers then do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.cli.main import main
from pipeline.engine.random_model import write_random_model
from pipeline.exit_codes import EXIT_FAILED

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_a_cached_hub_model_is_found_offline_and_loaded(tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--acme--m3-test"
    write_random_model(repo / "snapshots" / REVISION, "tiny", seed=3)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "M3PIPE_CACHE_DIR": str(tmp_path / "m3pipe"), "PYTHONPATH": str(ROOT)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "fetch-model", "--model", "acme/m3-test",
         "--tasks", "embed"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"embed model acme/m3-test: revision {REVISION}" in result.stderr
    assert "loads" in result.stderr


def test_a_model_that_cannot_be_had_fails_with_advice(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("M3PIPE_CACHE_DIR", str(tmp_path))
    missing = str(tmp_path / "no-such-model")
    assert main(["fetch-model", "--model", missing, "--tasks", "embed"]) == EXIT_FAILED
    assert "no such directory" in capsys.readouterr().err
    assert main(["fetch-model", "--tasks", "bm25"]) == 2
