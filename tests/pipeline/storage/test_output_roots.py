"""Where workers may write: absolute paths or URLs, under the configured roots."""

from __future__ import annotations

import pytest

from pipeline.errors import OutputNotAllowed
from pipeline.storage.output_roots import allowed_output, parse_roots


def test_no_roots_allow_any_absolute_path_or_url_but_never_a_relative_one(tmp_path):
    assert allowed_output(str(tmp_path), ()).uri == str(tmp_path)
    assert allowed_output("memory://bucket/out", ()).uri == "memory://bucket/out"
    for bad in ("relative/dir", "out", "./x", ""):
        with pytest.raises(OutputNotAllowed, match="relative path"):
            allowed_output(bad, ())
    with pytest.raises(OutputNotAllowed, match=r"'\.' or '\.\.'"):
        allowed_output("s3://bucket/data/../other", ("s3://bucket/data",))


def test_roots_confine_paths_links_resolved(tmp_path):
    root = tmp_path / "data"
    (root / "job").mkdir(parents=True)
    (tmp_path / "data-other").mkdir()
    (root / "escape").symlink_to(tmp_path, target_is_directory=True)
    roots = parse_roots(f" {root} , s3://bucket/prefix ")
    assert roots == (str(root), "s3://bucket/prefix")
    assert allowed_output(str(root / "job"), roots).uri == str(root / "job")
    assert allowed_output(str(root), roots).uri == str(root)
    for outside in (tmp_path / "data-other", root / "escape", root / "job" / ".." / ".."):
        with pytest.raises(OutputNotAllowed, match="outside the allowed roots"):
            allowed_output(str(outside), roots)


def test_url_roots_match_whole_path_segments():
    roots = ("memory://bucket/prefix",)
    assert allowed_output("memory://bucket/prefix/run1", roots)
    for outside in ("memory://bucket/prefix-evil/run", "memory://bucket/other", "/data"):
        with pytest.raises(OutputNotAllowed):
            allowed_output(outside, roots)


def test_roots_must_be_absolute():
    with pytest.raises(ValueError, match="absolute path or a URL"):
        parse_roots("/data,relative")
