"""The local commands (`encode`, `rerank`): their body, a progress bar while they run,
one summary line at the end."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline.cli.options import device_on_gpu, usage_error
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_REJECTS
from pipeline.runtime.heap import collector_paused_while_loading
from pipeline.runtime.openmp import forward_on_this_cpu, sleep_when_idle_unless_computing
from pipeline.settings import Settings
from schemas.job import Task
from schemas.options import EncodeOptions

if TYPE_CHECKING:
    from pipeline.storage.location import Location
    from pipeline.storage.output_lease import OutputLease
    from pipeline.tasks import Reading, TaskKind


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


def process_command(
    task: Task,
    args: argparse.Namespace,
    settings: Settings,
    *,
    options: Callable[[], object],
    reading: Callable[[], Reading],
    shard_items: int,
    shard_flag: str,
    total: Callable[[Location], int | None] | None = None,
) -> int:
    """The body of `m3pipe encode` and `m3pipe rerank`: check the flags (`options` and
    `reading` parse them; a ValueError is a usage error), load the task's model, run the
    input through it with a progress bar, print the summary; exit 3 if records were
    rejected. `shard_items` is the value of `shard_flag`; `total` counts the input's items
    for the bar's ETA (when it shows)."""
    from pipeline.tasks import task_kind

    try:
        task_options, task_reading = options(), reading()
    except ValueError as exc:  # pydantic's ValidationError included
        return usage_error(exc)
    kind = task_kind(task)
    model_spec = args.model or kind.model_spec(settings)
    if args.own_process:  # before torch loads: OpenMP spins only for a forward on this CPU
        on_gpu = device_on_gpu(args.device)
        sleep_when_idle_unless_computing(forward_on_this_cpu([model_spec], on_gpu))
    if shard_items < 1:
        return usage_error(f"{shard_flag} must be >= 1")
    if args.resume and (args.overwrite or getattr(args, "reuse", None) is not None):
        return usage_error("--resume keeps the earlier output: not with --overwrite or --reuse")
    from pipeline.storage.location import open_location
    from pipeline.storage.output_dir import check_output_dir
    from pipeline.storage.output_lease import take_lease

    source = open_location(args.input)
    if not input_found(kind.command, source):
        return EXIT_FAILED
    # The output directory (and a previous output to reuse) are checked, and the directory
    # owned, before the model loads (seconds to minutes).
    reuse = getattr(args, "reuse", None)
    if reuse is not None and isinstance(task_options, EncodeOptions):
        from pipeline.inputs.indexes.reuse_index import open_reusable

        open_reusable(reuse, args.out, model_spec, task_options, task_reading.keep_fields)
    out = check_output_dir(args.out, args.overwrite, args.resume, resumable=True)
    with take_lease(out, command=kind.command) as lease:
        return _run_local(kind, model_spec, source, args, settings, task_options,
                          task_reading, lease, shard_items=shard_items, total=total)  # fmt: skip


def _run_local(
    kind: TaskKind,
    model_spec: str,
    source: Location,
    args: argparse.Namespace,
    settings: Settings,
    task_options: object,
    task_reading: Reading,
    lease: OutputLease,
    *,
    shard_items: int,
    total: Callable[[Location], int | None] | None,
) -> int:
    with collector_paused_while_loading(freeze=args.own_process):
        model = kind.load_model(
            model_spec,
            device=args.device,
            precision=args.precision or settings.precision,
            cache_dir=settings.cache_dir,
            hub_timeout=settings.hub_timeout,
        )
    from pipeline.local.process import process_file

    engine = kind.engine(model, task_options)
    show_bar = not args.quiet and sys.stderr.isatty()
    count = total(source) if total is not None and show_bar else None
    bar = ProgressBar(count, enabled=show_bar, unit=kind.item)
    try:
        summary = process_file(
            kind,
            source,
            args.out,
            engine,
            reading=task_reading,
            shard_items=shard_items,
            overwrite=args.overwrite,
            progress=bar,
            reuse=getattr(args, "reuse", None),
            lease=lease,
            resume=args.resume,
            piece_documents=settings.piece_documents,
            direct_writes=settings.direct_writes,
        )
    finally:
        bar.close()
    done = kind.summary(
        summary.stats, summary.accepted, summary.rows, summary.parts, summary.out_dir
    )
    if summary.resumed is not None:
        done += f"; {summary.resumed:,} kept from the interrupted run"
    if summary.reused is not None:
        done += (
            f"; {summary.reused:,} reused, {summary.accepted - summary.reused:,} encoded, "
            f"{summary.dropped:,} of the previous output dropped"
        )
    return local_outcome(kind.command, done, summary.out_dir, summary.rejected)
