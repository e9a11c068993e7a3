"""A benchmark run never changes the tree (issue 33, item 7): without --out its JSON goes to
a git-ignored folder; committing a result is a deliberate --out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.report import LOCAL_RESULTS, RESULTS, save

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs the git checkout")  # fmt: skip
def test_a_run_without_out_saves_where_git_ignores(tmp_path):
    path = save({"figure": 1}, "probe", "cpu", "random:tiny", None)
    try:
        assert path.parent == LOCAL_RESULTS and path.parent != RESULTS
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(path)])
        assert ignored.returncode == 0, f"{path} would show in git status"
    finally:
        path.unlink(missing_ok=True)
    chosen = save({"figure": 1}, "probe", "cpu", "random:tiny", tmp_path / "kept.json")
    assert chosen == tmp_path / "kept.json" and chosen.exists()
