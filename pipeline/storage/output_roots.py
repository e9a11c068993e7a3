"""Where a worker may write (M3PIPE_OUTPUT_ROOTS) and read inputs (M3PIPE_INPUT_ROOTS):
absolute paths or URLs, below one of the roots when they are set.

A job's output location and inputs come from its record in Redis, which anything that can
write to Redis can forge. A worker therefore never resolves a relative path against its own
working directory, and with roots configured (docker-compose and the Kubernetes manifests
set them to the data volume) it writes, and reads shards by reference, only below one of
them, links resolved.
"""

from __future__ import annotations

import os

from pipeline.errors import InputNotAllowed, OutputNotAllowed, PermanentError
from pipeline.storage.location import Location, is_url, open_location


def parse_roots(value: str, what: str = "output") -> tuple[str, ...]:
    """M3PIPE_OUTPUT_ROOTS or M3PIPE_INPUT_ROOTS: comma-separated absolute paths or URL
    prefixes."""
    roots = tuple(part.strip() for part in value.split(",") if part.strip())
    for root in roots:
        if not is_url(root) and not os.path.isabs(root):
            raise ValueError(f"{what} root {root!r} must be an absolute path or a URL")
    return roots


def allowed_output(out: str, roots: tuple[str, ...]) -> Location:
    """The job's output Location, or OutputNotAllowed saying why it may not be written."""
    return _allowed(out, roots, "output", "M3PIPE_OUTPUT_ROOTS", OutputNotAllowed)


def allowed_input(uri: str, roots: tuple[str, ...]) -> Location:
    """A job input a worker is to read, or InputNotAllowed saying why it may not."""
    return _allowed(uri, roots, "input", "M3PIPE_INPUT_ROOTS", InputNotAllowed)


def allowed_reuse(
    uri: str, input_roots: tuple[str, ...], output_roots: tuple[str, ...]
) -> Location:
    """A previous output (`--reuse`) to copy rows from: readable below an input root (as
    inputs are: anywhere absolute when none is set) or below an output root."""
    try:
        return allowed_input(uri, input_roots)
    except InputNotAllowed:
        if not output_roots:
            raise
        try:
            return allowed_output(uri, output_roots)
        except OutputNotAllowed:
            raise InputNotAllowed(
                f"previous output {uri} is outside the allowed input roots "
                f"({', '.join(input_roots)}) and output roots ({', '.join(output_roots)})"
            ) from None


def _allowed(
    target: str, roots: tuple[str, ...], what: str, setting: str, error: type[PermanentError]
) -> Location:
    if not is_url(target) and not os.path.isabs(target):
        raise error(f"{what} {target!r} is a relative path: jobs name absolute ones")
    if is_url(target) and any(part in (".", "..") for part in target.split("?", 1)[0].split("/")):
        raise error(f"{what} {target!r} has '.' or '..' in its path")
    location = open_location(target)
    if roots and not any(_under(location, root) for root in roots):
        raise error(
            f"{what} {location} is outside the allowed roots ({', '.join(roots)}; {setting})"
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
