"""Jobs and shard messages: the JSON wire formats between producers, Redis and workers."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.document import DEFAULT_MAX_RECORD_BYTES, Document
from schemas.options import EncodeOptions
from schemas.pair import Pair, RerankOptions
from schemas.reuse_plan import MAX_REUSE_RUNS, ReuseRun, runs_problem
from schemas.shard_ref import ShardRef
from schemas.tenant import DEFAULT_TENANT, Priority, TenantName

# Job ids and queue names end up in Redis keys and log lines, never in paths; keep them plain.
JobId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{2,63}$")]
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
QueueName = Annotated[str, StringConstraints(pattern=QUEUE_NAME_PATTERN)]

SHARD_MESSAGE_VERSION = 1


class Task(StrEnum):
    """What a job does: embed documents (bge-m3) or score (query, passage) pairs (reranker)."""

    EMBED = "embed"
    RERANK = "rerank"

    @property
    def item(self) -> str:
        """The noun for one unit of its work, in messages and reports."""
        return {"embed": "document", "rerank": "pair"}[self.value]

    @property
    def count_names(self) -> tuple[str, str]:
        """Its manifest counts: (records read, items accepted)."""
        return {"embed": ("input_records", "documents"), "rerank": ("input_pairs", "pairs")}[
            self.value
        ]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class ShardState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobSpec(BaseModel):
    """What a job encodes and where it writes; registered in Redis at submit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: JobId
    task: Task = Task.EMBED
    tenant: TenantName = DEFAULT_TENANT
    priority: Priority = Priority.NORMAL
    inputs: list[str] = Field(min_length=1)
    input_format: str = "auto"
    out: str  # absolute path of the output directory, shared by producer and workers
    model: str  # the embedder (task embed) or the cross-encoder (task rerank)
    options: EncodeOptions = Field(default_factory=EncodeOptions)  # task embed only
    rerank: RerankOptions | None = None  # task rerank only
    id_field: str = "id"
    text_field: str = "text"
    keep_fields: list[str] = Field(default_factory=list)
    queue: QueueName
    shard_docs: int = Field(ge=1)
    shard_bytes: int = Field(ge=1024)
    shard_tokens: int | None = Field(default=None, ge=1)  # worst-case tokens per shard
    max_queued: int = Field(ge=1)
    created_at: float
    command: Literal["submit", "run"] = "submit"  # what made the job, for its manifest
    # Workers reading shards by reference apply the producer's record limit too.
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_BYTES, ge=1)
    # `--reuse`: the previous output (absolute path or URL) unchanged documents are copied
    # from; workers read it under their input or output roots.
    reuse: str | None = None
    # The compute precision every shard runs at: fp32, fp16, bf16; "any" accepts workers of
    # any (the manifest records the mix); None: the first worker's, which then binds the job.
    precision: Literal["fp32", "fp16", "bf16", "any"] | None = None

    @model_validator(mode="after")
    def _options_of_task(self) -> JobSpec:
        if (self.task is Task.RERANK) != (self.rerank is not None):
            raise ValueError("rerank options come with task rerank, and only with it")
        if self.reuse is not None and self.task is not Task.EMBED:
            raise ValueError("--reuse applies to embed jobs only")
        return self


class ShardMessage(BaseModel):
    """The one argument of the `encode_shard` task. Anything else is refused unexecuted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1  # SHARD_MESSAGE_VERSION
    job_id: JobId
    shard: int = Field(ge=0, le=9_999_999)
    # One payload per shard: documents for an embed job, pairs for a rerank job, or where
    # an embed job's documents are in its inputs (schemas/shard_ref.py).
    documents: list[Document] = Field(default_factory=list)
    pairs: list[Pair] = Field(default_factory=list)
    ref: ShardRef | None = None
    # Documents copied from the job's previous output (`--reuse`), not encoded.
    reuse: list[ReuseRun] | None = Field(default=None, max_length=MAX_REUSE_RUNS)

    @model_validator(mode="after")
    def _one_payload(self) -> ShardMessage:
        if [bool(self.documents), bool(self.pairs), self.ref is not None].count(True) != 1:
            raise ValueError("a shard holds documents, pairs or a reference: exactly one")
        if self.reuse is not None:
            if self.pairs:
                raise ValueError("rerank shards reuse nothing")
            problem = runs_problem(self.reuse, self.size)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def items(self) -> Sequence[Document] | Sequence[Pair]:
        """The documents or pairs it carries (none for a reference: the worker reads them)."""
        return self.documents or self.pairs

    @property
    def size(self) -> int:
        """Documents or pairs in the shard."""
        return self.ref.documents if self.ref is not None else len(self.items)

    @property
    def task(self) -> Task:
        """The task whose items this shard holds."""
        return Task.RERANK if self.pairs else Task.EMBED

    def wire(self) -> dict[str, object]:
        """The JSON task argument: the empty payloads are left out."""
        empty = {
            "documents": not self.documents,
            "pairs": not self.pairs,
            "ref": not self.ref,
            "reuse": self.reuse is None,
        }
        return self.model_dump(mode="json", exclude={k for k, none in empty.items() if none})


class ShardCounts(BaseModel):
    total: int | None = None  # known once the producer has cut every shard
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0


class JobStatus(BaseModel):
    """What `m3pipe status JOB --json` prints."""

    job_id: str
    task: Task = Task.EMBED  # for task rerank, "documents" and "rows" count pairs
    tenant: str = DEFAULT_TENANT
    priority: Priority = Priority.NORMAL
    state: JobState
    submitted: bool  # the producer has enqueued every shard
    shards: ShardCounts
    input_records: int | None = None
    documents: int  # documents enqueued so far
    documents_done: int
    rows_done: int
    rejected: int | None = None
    tokens_done: int
    tokens_per_second: float
    eta_seconds: float | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    out: str
    queue: str
    model: str
    error: str | None = None
    # Set while shards are handed back by workers that cannot serve them (another model,
    # weights or precision): what the job waits for, and who last gave one back.
    waiting: str | None = None
    expires_at: float | None = None  # when Redis forgets the ended job (M3PIPE_JOB_TTL)
    documents_reused: int | None = None  # --reuse: copied from the previous output so far
    documents_dropped: int | None = None  # --reuse: the previous output's, not in the input

    @property
    def lost_shards(self) -> int:
        """Shards in the job's total with no state at all. Only Redis losing writes (a
        failover that dropped the last ones, an eviction) makes any: every shard has a
        state from its registration on, and the counts change with the states, in one
        script. Nothing runs such a shard until `m3pipe repair`."""
        counts = self.shards
        if not self.submitted or counts.total is None or self.state.finished:
            return 0
        known = counts.queued + counts.running + counts.done + counts.failed + counts.cancelled
        return max(0, counts.total - known)
