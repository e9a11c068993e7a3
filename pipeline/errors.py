"""One exception root, split by what a caller should do about it."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error m3pipe raises on purpose."""


class RetryableError(PipelineError):
    """Transient: the same work may succeed later (lost connection, CUDA OOM at batch size 1)."""


class PermanentError(PipelineError):
    """The same work will fail again: bad data, bad configuration, a model that cannot load."""


class ModelLoadError(PermanentError):
    """The model spec cannot be resolved or loaded."""


class InputError(PermanentError):
    """The inputs cannot be used as given (missing, unknown format, no such column, empty)."""


class UnreadableInput(InputError):
    """A file, or the rest of it, cannot be read (I/O error, corrupt or truncated stream).

    Not fatal to a job: the reader turns it into one reject for the part it cannot read.
    `line` or `row` is where reading stopped (None when the file could not be opened).
    """

    def __init__(self, message: str, *, line: int | None = None, row: int | None = None):
        super().__init__(message)
        self.line = line
        self.row = row

    @classmethod
    def partway(
        cls, exc: BaseException, *, line: int | None = None, row: int | None = None
    ) -> UnreadableInput:
        """Reading stopped at this line or row (1-based, the first record not read)."""
        where = f"line {line}" if line is not None else f"row {row}"
        message = f"read failed at {where}, the rest of the file is lost: {exc}"
        return cls(message, line=line, row=row)


# -- where each error comes from: storage, the broker, job state, workers, submission, run --


class StorageError(InputError):
    """A URL m3pipe cannot use, or a storage location that is not what it must be."""


class OutputDirError(PermanentError):
    """The output directory cannot be used as asked."""


class InputNotAllowed(PermanentError):
    """A shard by reference names an input outside the allowed roots."""


class OutputNotAllowed(PermanentError):
    """A job's output location is not one this worker may write to."""


class BrokerUrlError(PermanentError, ValueError):
    """M3PIPE_BROKER_URL cannot be used as written."""


class JobNotFound(PermanentError):
    """Redis has no job of this id."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found in Redis")
        self.job_id = job_id


class ScratchSpaceError(PermanentError):
    """The producer's on-disk scratch index cannot be made or written (TMPDIR)."""


class BrokerFull(PermanentError):
    """Redis refused a write for want of memory (maxmemory with noeviction)."""


class RedisUnsuitable(PermanentError):
    """The broker's Redis would lose work (it evicts keys) or cannot be used (a cluster)."""


class JobLost(PermanentError):
    """A job's state vanished from Redis while it was being submitted."""


class ResumeError(InputError):
    """The output directory cannot be resumed with this submission."""


class OutputUnreadable(InputError):
    """A directory read as a finished m3pipe output is not one (or cannot be read)."""


class ReuseError(InputError):
    """`--reuse` names something whose rows cannot be reused by this job."""


class UnknownJob(PermanentError):
    """A message names a job Redis does not know: nothing to record it against."""


class UnregisteredShard(UnknownJob):
    """A message names a shard its job never registered (forged, or of another Redis)."""


class WrongWorker(PipelineError):
    """This worker cannot serve the shard (another model, weights or compute precision than
    the job's), but another worker can: the shard goes back to the queue, no attempt
    counted, nothing recorded against it."""


class ForgedMessage(UnregisteredShard):
    """A message that is not the one registered for its shard (same shard, other content):
    refused once, nothing recorded, so the registered message still runs."""


class StaleAttempt(PermanentError):
    """Another delivery took the shard over or ended it while this one ran: it must not
    write. Nothing is recorded; the owner's result stands."""


class SubmitCancelled(PermanentError):
    """The job was cancelled while its shards were being submitted."""


class QuotaExceeded(PermanentError):
    """The tenant may not start another job now (its max_jobs)."""


class EmbeddedRedisError(PipelineError):
    """The private redis-server of `m3pipe run` (or the tests) did not start."""


class WorkersGone(PipelineError):
    """Every worker process of `m3pipe run` exited before the job ended."""
