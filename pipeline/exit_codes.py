"""Exit codes of every m3pipe command, in one place (README.md lists them)."""

from __future__ import annotations

from schemas.job import JobState, JobStatus

EXIT_OK = 0  # done, every record encoded (or scored)
EXIT_FAILED = 1  # failed: missing input, model not loadable, failed shards, cancelled job
EXIT_USAGE = 2  # bad options
EXIT_REJECTS = 3  # finished, but some input records were rejected (see _rejects.jsonl)
EXIT_TIMEOUT = 124  # `wait --timeout` ran out
EXIT_INTERRUPTED = 130  # Ctrl-C, and SIGTERM for `run` (128 + SIGINT, as shells report it)


def job_exit_code(status: JobStatus) -> int:
    """A queued job's: 0 completed cleanly, 3 completed with rejected records, 1 anything
    else (`wait`, `run`)."""
    if status.state is JobState.COMPLETED:
        return EXIT_REJECTS if status.rejected else EXIT_OK
    return EXIT_FAILED
