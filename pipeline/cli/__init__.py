"""The m3pipe command: argument parsing, exit codes, progress; calls everything below it."""
