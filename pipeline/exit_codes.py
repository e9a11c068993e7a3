"""Exit codes of every m3pipe command, in one place (README.md lists them)."""

EXIT_OK = 0  # done, every record encoded (or scored)
EXIT_FAILED = 1  # failed: missing input, model not loadable, failed shards, cancelled job
EXIT_USAGE = 2  # bad options
EXIT_REJECTS = 3  # finished, but some input records were rejected (see _rejects.jsonl)
EXIT_TIMEOUT = 124  # `wait --timeout` ran out
EXIT_INTERRUPTED = 130  # Ctrl-C, and SIGTERM for `run` (128 + SIGINT, as shells report it)
