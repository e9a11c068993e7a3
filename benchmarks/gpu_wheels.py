"""Whether a folder holds every wheel a list names, exactly (NAME==VERSION per line), and
nothing else of the same names: a missing or second version stops the device's install.

    python -m benchmarks.gpu_wheels benchmarks/gpu-wheels.txt .whl
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def listed(path: Path) -> dict[str, str]:
    """{normalized name: version} of the list; ValueError on a line that is not pinned."""
    wanted = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: {line!r} is not NAME==VERSION")
        wanted[normalized(match[1])] = match[2]
    return wanted


def problems(wanted: dict[str, str], folder: Path) -> list[str]:
    found: dict[str, list[str]] = {}
    for wheel in folder.glob("*.whl") if folder.is_dir() else []:
        name, version = wheel.name.split("-")[:2]
        found.setdefault(normalized(name), []).append(version)
    said = []
    for name, version in sorted(wanted.items()):
        versions = found.get(name, [])
        if version not in versions:
            said.append(f"missing {name}=={version}" + (f" (found {versions})" if versions else ""))
        elif len(versions) > 1:
            said.append(f"{name}: several versions {sorted(versions)}; keep {version} only")
    return said


def main() -> int:
    wanted = listed(Path(sys.argv[1]))
    folder = Path(sys.argv[2])
    said = problems(wanted, folder)
    for line in said:
        print(f"gpu wheels: {line}", file=sys.stderr)
    if said:
        advice = "run benchmarks/fetch_gpu_wheels.sh where pip works, and carry .whl"
        print(f"gpu wheels: {folder} lacks what {sys.argv[1]} lists: {advice}", file=sys.stderr)
        return 1
    print(f"gpu wheels: all {len(wanted)} in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
