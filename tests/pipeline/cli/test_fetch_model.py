"""`m3pipe fetch-model`: the cache is filled (or found filled) and each model loads from it.

No machine here reaches the hub: a hub model is staged in a Hugging Face cache laid out as a
download leaves it (models--org--name/snapshots/<revision>, refs/main), and fetch-model runs
with HF_HUB_OFFLINE=1, as workers then do."""

from __future__ import annotations

import shutil

from pipeline.cli.main import main
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK

REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_a_cached_hub_model_is_found_offline_and_loaded(tmp_path, capsys, monkeypatch, tiny):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--acme--m3-test"
    shutil.copytree(tiny.path, repo / "snapshots" / REVISION)  # a model's files, as downloaded
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    # What HF_HOME and HF_HUB_OFFLINE=1 set when huggingface_hub is imported.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("M3PIPE_CACHE_DIR", str(tmp_path / "m3pipe"))
    assert main(["fetch-model", "--model", "acme/m3-test", "--tasks", "embed"]) == EXIT_OK
    said = capsys.readouterr().err
    assert f"embed model acme/m3-test: revision {REVISION}" in said and "loads" in said


def test_a_model_that_cannot_be_had_fails_with_advice(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("M3PIPE_CACHE_DIR", str(tmp_path))
    missing = str(tmp_path / "no-such-model")
    assert main(["fetch-model", "--model", missing, "--tasks", "embed"]) == EXIT_FAILED
    assert "no such directory" in capsys.readouterr().err
    assert main(["fetch-model", "--tasks", "bm25"]) == 2
