"""One exception root, split by what a caller should do about it."""


class PipelineError(Exception):
    """Root of every error m3pipe raises on purpose."""


class RetryableError(PipelineError):
    """Transient: the same work may succeed later (lost connection, CUDA OOM at batch size 1)."""


class PermanentError(PipelineError):
    """The same work will fail again: bad data, bad configuration, a model that cannot load."""


class ModelLoadError(PermanentError):
    """The model spec cannot be resolved or loaded."""


class InputError(PermanentError):
    """An input file cannot be read at all (missing, unreadable, empty)."""
