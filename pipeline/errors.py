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
