"""`_manifest.json`: what a finished output directory holds, written last and atomically."""

from __future__ import annotations

import time
from typing import Any

from pipeline import __version__
from pipeline.storage.output_dir import REJECTS


def build_manifest(
    *,
    job: dict[str, Any],
    model: dict[str, Any] | None,
    files: list[dict[str, Any]],
    counts: dict[str, int],
    stats: dict[str, Any],
    failures: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One manifest layout for `m3pipe encode` and queue jobs alike."""
    return {
        "m3pipe_version": __version__,
        "job": job,
        "model": model,
        "files": files,
        "failed_shards": failures or [],
        "rejects_file": REJECTS,
        "counts": counts,
        "stats": stats,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
