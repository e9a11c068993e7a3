"""The interface every task kind implements, and the small records drivers pass to it.

Models and engines are imported lazily by the kinds: `m3pipe submit` and the job commands
use a kind to read and cut inputs without importing torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from pipeline.errors import PermanentError
from pipeline.inputs.intake import IntakeCounts, RejectSink
from pipeline.inputs.readers.lines import DEFAULT_MAX_RECORD_BYTES
from pipeline.inputs.references import ReferencedShard
from pipeline.inputs.sharding import ShardLimits, UnitSize, cut_sized_shards
from pipeline.inputs.validate import InputItem
from schemas.job import JobSpec, ShardMessage, Task

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.engine.stats import BatchStats
    from pipeline.storage.location import Location

Progress = Callable[[int, int], None]  # (items finished, tokens) as work completes
Check = Callable[[Sequence[Any]], str | None]  # the reason to reject a unit, or None


class TaskEngine(Protocol):
    """A loaded model plus its task's options: what drivers keep and describe."""

    batch_tokens: int  # a batch's padded tokens at most
    # Held while its batches run (pipeline/runtime/device_gate.py): nullcontext alone.
    device_gate: Callable[[], AbstractContextManager[object]]

    def file_metadata(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class Reading:
    """How records are read from the inputs: the same for local runs and queued jobs."""

    input_format: str = "auto"
    id_field: str = "id"
    text_field: str = "text"
    keep_fields: tuple[str, ...] = ()
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


@dataclass(frozen=True)
class Computed:
    """One shard through the model: its output rows and what they cost."""

    table: pa.Table
    stats: BatchStats
    rows: int


class TaskKind(ABC):
    """What one task is: its records and readers, sizing, model, engine and output."""

    task: ClassVar[Task]
    command: ClassVar[str]  # the no-queue command: `m3pipe encode`, `m3pipe rerank`
    model_setting: ClassVar[str]  # the Settings field (and M3PIPE_* variable) naming its model
    seconds_name: ClassVar[str]  # its compute time in the manifest's stats
    rate_name: ClassVar[str]  # its throughput: a property of its stats, reported as is
    reusable: ClassVar[bool] = False  # whether `--reuse` can copy its rows from an output

    @property
    def item(self) -> str:
        """The noun for one unit of work in progress bars and summaries."""
        return self.task.item

    @property
    def counts(self) -> tuple[str, str]:
        """Its manifest counts: (records read, items accepted)."""
        return self.task.count_names

    @property
    def model_env(self) -> str:
        return f"M3PIPE_{self.model_setting.upper()}"

    def model_spec(self, settings: Any) -> str:
        return str(getattr(settings, self.model_setting))

    # -- inputs ---------------------------------------------------------------------------
    @abstractmethod
    def detect_format(self, location: Location | Path | str, requested: str = "auto") -> str:
        """The input format this task reads `location` as (InputError if it cannot)."""

    @abstractmethod
    def read(self, location: Location, fmt: str, reading: Reading) -> Iterator[InputItem]:
        """The input's records as read and validated (a bad one is a Reject item)."""

    @abstractmethod
    def accept(
        self,
        sources: Iterable[tuple[str, Iterable[InputItem]]],
        rejects: RejectSink,
        counts: IntakeCounts,
        check: Check | None,
    ) -> Iterator[list[Any]]:
        """Units of accepted items (what must share a shard), under the task's duplicate
        policy and `check`; every record read is counted once, as accepted or rejected."""

    @abstractmethod
    def unit_size(self, unit: Sequence[Any], options: Any) -> UnitSize:
        """A unit's message bytes and worst-case tokens."""

    @abstractmethod
    def oversize_reason(
        self,
        unit: Sequence[Any],
        limits: ShardLimits,
        options: Any,
        size: UnitSize | None = None,
    ) -> str | None:
        """Why a unit fits no shard (a reject reason), or None; `size`: its unit_size."""

    def referenced_shards(
        self,
        inputs: Sequence[Location],
        formats: Sequence[str],
        reading: Reading,
        options: Any,
        limits: ShardLimits,
        rejects: RejectSink,
        counts: IntakeCounts,
    ) -> Iterator[ReferencedShard] | None:
        """What `shards` would cut (strict), as references made without the units, where
        this task can read its inputs so; else None (the default)."""
        return None

    def shards(
        self,
        sources: Iterable[tuple[str, Iterable[InputItem]]],
        options: Any,
        limits: ShardLimits,
        rejects: RejectSink,
        counts: IntakeCounts,
        *,
        strict: bool,
    ) -> Iterator[list[Any]]:
        """Shards cut from (source name, items) pairs within `limits`. `strict`: a unit
        over a limit is rejected (a queue message must fit); else it forms its own shard."""

        # The check and the cutter each need a unit's size, one right after the other: it is
        # measured once (the unit is known by its first item, held here so it stays alive).
        measured: list[Any] = [None, None]

        def size(unit: Sequence[Any]) -> UnitSize:
            if unit[0] is not measured[0]:
                measured[:] = [unit[0], self.unit_size(unit, options)]
            return cast(UnitSize, measured[1])

        def check(unit: Sequence[Any]) -> str | None:
            return self.oversize_reason(unit, limits, options, size(unit))

        units = self.accept(sources, rejects, counts, check if strict else None)
        return cut_sized_shards(units, limits, size)

    # -- the model ------------------------------------------------------------------------
    @abstractmethod
    def model_loader(self) -> Callable[..., Any]:
        """The engine's loader for this task's model (imported when called: torch)."""

    def load_model(
        self,
        spec: str,
        *,
        device: str | None,
        precision: str | None,
        cache_dir: Path,
        hub_timeout: float,
    ) -> Any:
        """The loaded model (ModelLoadError if it cannot load)."""
        return self.model_loader()(
            spec, device=device, precision=precision, cache_dir=cache_dir, hub_timeout=hub_timeout
        )

    @abstractmethod
    def job_options(self, spec: JobSpec) -> Hashable:
        """This task's options in a job spec (hashable: workers keep an engine per options)."""

    @abstractmethod
    def engine(self, model: Any, options: Any) -> TaskEngine:
        """An engine for the loaded model and this task's options."""

    def shard_items(self, message: ShardMessage, spec: JobSpec) -> Sequence[Any]:
        """What a worker computes for a message: the items it carries, or, for a shard by
        reference, those read from the job's inputs (kinds that make references read them)."""
        if message.ref is not None:
            raise PermanentError(f"a {self.task.value} shard never comes by reference")
        return message.items

    @abstractmethod
    def compute(
        self, engine: Any, items: Sequence[Any], keep_fields: Sequence[str] = ()
    ) -> Computed:
        """One shard's output table and stats."""

    def compute_stream(
        self,
        engine: Any,
        shards: Iterable[Sequence[Any]],
        keep_fields: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> Generator[tuple[Sequence[Any], Computed], None, None]:
        """Shard after shard; kinds that can overlap reading with compute override this.
        A caller that stops early closes it (the engine may hold the device meanwhile)."""
        for shard in shards:
            computed = self.compute(engine, shard, keep_fields)
            if progress is not None:
                progress(len(shard), computed.stats.tokens)
            yield shard, computed

    def pieces(self, items: Sequence[Any], size: int) -> list[Sequence[Any]]:
        """A worker's shard cut into pieces of about `size` items, computed and written one
        after another (the next computes while the last is written:
        pipeline/storage/part_writer.py), rows in input order. One piece by default: a
        kind whose rows depend on each other (a query's candidates, ranked together) keeps
        its shard whole."""
        return [items]

    def part_table(
        self, table: pa.Table, items: Sequence[Any], keep_fields: Sequence[str] = ()
    ) -> pa.Table:
        """What a part file holds: the computed rows, plus what the kind records about the
        items they were made from (for `--reuse`)."""
        return table

    @abstractmethod
    def new_stats(self) -> BatchStats:
        """Empty stats of this task's kind, to add shards' stats into."""

    # -- reports --------------------------------------------------------------------------
    @abstractmethod
    def manifest_job(self, reading: Reading, engine: Any) -> dict[str, object]:
        """The `job` section of a local run's manifest (beside command, inputs)."""

    def manifest_stats(self, stats: Any) -> dict[str, object]:
        """This task's figures in a manifest's `stats`, beside wall_seconds."""
        return {
            self.seconds_name: round(stats.seconds, 3),
            self.rate_name: round(getattr(stats, self.rate_name), 1),
        }

    def summary(self, stats: Any, accepted: int, rows: int, files: int, out: object) -> str:
        """The line `m3pipe encode` / `rerank` prints about the work done."""
        rate, unit = getattr(stats, self.rate_name), self.rate_name.replace("_per_second", "/s")
        return (
            f"{accepted:,} {self.item}s -> {rows:,} rows in {files} file(s) under {out}; "
            f"{stats.tokens:,} tokens in {stats.seconds:.1f}s ({rate:,.1f} {unit}, "
            f"padding efficiency {stats.padding_efficiency:.3f})"
        )
