"""What local commands show: a progress bar while they run, one summary line at the end."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from pipeline.exit_codes import EXIT_OK, EXIT_REJECTS

if TYPE_CHECKING:
    from pipeline.storage.location import Location


class ProgressBar:
    """Items (documents, pairs) done of the total, tokens/s and ETA, on stderr if a terminal."""

    def __init__(self, total: int | None, enabled: bool, unit: str = "doc") -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total or None,
            unit=unit,
            disable=not enabled or None,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self._tokens = 0
        self._started = time.perf_counter()

    def __call__(self, documents: int, tokens: int) -> None:
        self._tokens += tokens
        rate = self._tokens / max(time.perf_counter() - self._started, 1e-9)
        self._bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
        self._bar.update(documents)

    def close(self) -> None:
        self._bar.close()


def input_found(command: str, source: Location) -> bool:
    """False, having said so, when the input of a local command does not exist."""
    from pyarrow.fs import FileType

    if source.probe() == FileType.NotFound:
        print(f"m3pipe {command}: input file not found: {source}", file=sys.stderr)
        return False
    return True


def local_outcome(command: str, done: str, out_dir: Location, rejected: int) -> int:
    """Print what a local command did; exit 3 when records were rejected, else 0."""
    rejects = f" (see {out_dir / '_rejects.jsonl'})" if rejected else ""
    print(f"m3pipe {command}: {done}; {rejected} rejected{rejects}", file=sys.stderr)
    return EXIT_REJECTS if rejected else EXIT_OK
