"""Exit codes of every m3pipe command, in one place (README.md, "Exit codes")."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTS = 3  # finished, but some input records were rejected (see _rejects.jsonl)
EXIT_TIMEOUT = 124
