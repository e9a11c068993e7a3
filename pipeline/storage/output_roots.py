"""Where a worker may write: an absolute path or a URL, under M3PIPE_OUTPUT_ROOTS when set.

A job's output location comes from its record in Redis, which anything that can write to
Redis can forge. A worker therefore never resolves a relative path against its own working
directory, and with roots configured (docker-compose and the Kubernetes manifests set them
to the data volume) it writes only below one of them, links resolved.
"""

from __future__ import annotations

import os

from pipeline.errors import OutputNotAllowed
from pipeline.storage.location import Location, is_url, open_location


def parse_roots(value: str) -> tuple[str, ...]:
    """M3PIPE_OUTPUT_ROOTS: comma-separated absolute paths or URL prefixes."""
    roots = tuple(part.strip() for part in value.split(",") if part.strip())
    for root in roots:
        if not is_url(root) and not os.path.isabs(root):
            raise ValueError(f"output root {root!r} must be an absolute path or a URL")
    return roots


def allowed_output(out: str, roots: tuple[str, ...]) -> Location:
    """The job's output Location, or OutputNotAllowed saying why it may not be written."""
    if not is_url(out) and not os.path.isabs(out):
        raise OutputNotAllowed(f"output {out!r} is a relative path: jobs name absolute ones")
    if is_url(out) and any(part in (".", "..") for part in out.split("?", 1)[0].split("/")):
        raise OutputNotAllowed(f"output {out!r} has '.' or '..' in its path")
    location = open_location(out)
    if roots and not any(_under(location, root) for root in roots):
        raise OutputNotAllowed(
            f"output {location} is outside the allowed roots ({', '.join(roots)}; "
            "M3PIPE_OUTPUT_ROOTS)"
        )
    return location


def _under(location: Location, root: str) -> bool:
    """Whether `location` is `root` or below it (a root URL is compared as text: opening
    it would reach out to its store)."""
    if location.is_local:
        if is_url(root) and not root.startswith("file://"):
            return False
        base = os.path.realpath(root.removeprefix("file://"))
        target = os.path.realpath(location.path)
    else:
        if not is_url(root):
            return False
        target, base = location.uri.rstrip("/"), root.split("?", 1)[0].rstrip("/")
    return target == base or target.startswith(base.rstrip("/") + "/")
