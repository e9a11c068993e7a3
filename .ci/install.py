"""`pip install ARGS` into the running virtual environment, done by uv where it can be.

pip spends most of CI's first two minutes unpacking torch and compiling every module to
bytecode; uv installs the same wheels from the same indexes, and compiles them on every core,
in a fraction of that. The bytecode is needed: with PYTHONDONTWRITEBYTECODE set (as on these
machines) nothing is compiled later, and every process of the suite would compile what it
imports again (torch, transformers: twice the start-up). uv does not read pip's
configuration, so the index settings pip would use here (`pip config list`:
its files and PIP_* variables: index, extra indexes, find-links, constraints) are handed to
it as flags, and versions are picked across all indexes as pip picks them. If uv cannot be
installed, or fails, the same command runs with pip: slower, never different.

    python .ci/install.py -c constraints.txt -e '.[dev]'
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

# pip's setting -> uv's flag; each may hold several values, separated by whitespace.
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def pip_settings() -> list[tuple[str, str]]:
    """(setting, value) of each line of `pip config list` (files and PIP_* variables)."""
    found = []
    for line in pip("config", "list").stdout.splitlines():
        key, _, value = line.partition("=")
        found.append((key.rsplit(".", 1)[-1], value.strip().strip("'\"")))
    return found


def uv_flags(settings: list[tuple[str, str]]) -> list[str]:
    flags: list[str] = []
    for setting, value in settings:
        if setting in FLAGS:
            for item in shlex.split(value):
                flags += [FLAGS[setting], item]
    return flags


def main(args: list[str]) -> int:
    if pip("install", "-q", "uv").returncode == 0:
        settings = pip_settings()
        env = dict(os.environ)
        for setting, value in settings:
            if setting == "cert":  # the CA bundle pip trusts (a proxy's, say): uv trusts it too
                env["SSL_CERT_FILE"] = value
        uv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", sys.executable,
              "--index-strategy", "unsafe-best-match", "--compile-bytecode", *uv_flags(settings),
              *args]  # fmt: skip
        if subprocess.run(uv, env=env).returncode == 0:
            return 0
        print("install.py: uv failed; installing with pip instead", file=sys.stderr)
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
