"""`_manifest.json`: what a finished output directory holds, written last and atomically.

It stays small whatever the job's size: per-shard detail (each part file's name and
counts, each failure) is in `_shards.jsonl`; the manifest lists at most
MANIFEST_FAILURES failures and counts them all.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline import __version__
from pipeline.storage.output_dir import REJECTS, SHARDS

MANIFEST_FAILURES = 100  # failed shards listed in the manifest; all are in _shards.jsonl


def build_manifest(
    *,
    job: dict[str, Any],
    model: dict[str, Any] | None,
    parts: int,
    counts: dict[str, int],
    stats: dict[str, Any],
    failures: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One manifest layout for `m3pipe encode` and queue jobs alike. `failures`: the first
    failed shards (at most MANIFEST_FAILURES are kept)."""
    return {
        "m3pipe_version": __version__,
        "job": job,
        "model": model,
        "parts": parts,
        "shards_file": SHARDS,
        "failed_shards": (failures or [])[:MANIFEST_FAILURES],
        "rejects_file": REJECTS,
        "counts": counts,
        "stats": stats,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
