"""The engine: documents in, one Arrow table of dense/sparse/ColBERT rows out.

Used unchanged by `m3pipe encode` and by the queue workers. Never imports Celery.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from pipeline import __version__
from pipeline.engine.batching import (
    budget_after_oom,
    default_batch_tokens,
    device_memory,
    plan_batches,
)
from pipeline.engine.device_forms import DeviceForms
from pipeline.engine.encoder import PendingBatch, encode_with_split, forward_batch
from pipeline.engine.model import M3Model
from pipeline.engine.recycled import RecycledBuffers
from pipeline.engine.stats import BatchStats
from pipeline.engine.table import ShardColumns, assemble_table
from pipeline.engine.tokenize import TokenizedShard, tokenize_texts
from schemas.document import Document
from schemas.options import EncodeOptions, VectorForm
from schemas.output import output_schema
from schemas.vector_layout import OUTPUT_FORMAT

ProgressCallback = Callable[[int, int], None]  # (documents finished, tokens) of one batch


@dataclass
class EncodeStats(BatchStats):
    documents: int = 0
    rows: int = 0


@dataclass
class ShardResult:
    table: pa.Table
    stats: EncodeStats = field(default_factory=EncodeStats)


class EmbedEngine:
    """A loaded model plus encode options; between calls it keeps only its batch budget,
    lowered after an out-of-memory (pipeline/engine/batching.budget_after_oom)."""

    def __init__(self, model: M3Model, options: EncodeOptions) -> None:
        self.model = model
        self.options = options
        # Launch batch k + 1 before finishing batch k (False: finish each at once; the GPU
        # check measures both: benchmarks/bench_engine.py's "-sync" sides).
        self.overlap_batches = True
        # Held while this engine's batches run; a worker with several slots on one device
        # shares it between them (pipeline/runtime/device_gate.py). Alone: no gate.
        self.device_gate: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
        # ColBERT arrays of pieces in flight (one filling, the one before it finishing its
        # last batch, two queued for the writer, one writing: pipeline/storage/part_writer.py;
        # at a shard's end its last may still be with its writer as the next shard's first
        # fills), their memory used again for later pieces: pipeline/engine/recycled.py.
        self.buffers = RecycledBuffers(keep=6)
        self.batch_tokens = options.batch_tokens or default_batch_tokens(
            model.device.type, memory=device_memory(model)
        )
        # Vectors leave the device as they are stored, but for token pooling, which
        # clusters floats on the host first (pipeline/engine/table.py).
        colbert = options.colbert_storage
        if options.colbert_pool > 1 and colbert is not VectorForm.FLOAT32:
            colbert = VectorForm.FLOAT  # clustered as computed, then stored as asked
        self.device_forms = DeviceForms(options.dtype, dense=options.dense_storage, colbert=colbert)
        self.schema = output_schema(
            options.modes,
            options.dtype,
            model.dense_dim,
            model.colbert_dim,
            chunked=options.chunked,
            metadata=self.file_metadata(),
            dense_form=options.dense_storage,
            colbert_form=options.colbert_storage,
        )

    def file_metadata(self) -> dict[str, object]:
        """Written into every Parquet file's schema metadata."""
        storage = self.options.storage()
        return {
            **self.model.describe(),
            "m3pipe_version": __version__,
            "output_format": OUTPUT_FORMAT,  # how colbert is stored: schemas/vector_layout.py
            "dtype": self.options.dtype.value,
            "max_length": self.options.max_length,
            "modes": [mode.value for mode in self.options.modes],
            "long_docs": self.options.long_docs.value,
            "chunk_overlap": self.options.chunk_overlap,
            # Compact storage only (so exact outputs keep the identity they always had).
            **({"storage": storage} if storage else {}),
        }

    def tokenize(self, docs: Sequence[Document]) -> TokenizedShard:
        if not docs:  # every document of a shard reused (`--reuse`): nothing to encode
            return TokenizedShard(
                [], np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
            )
        return tokenize_texts(
            self.model.tokenizer,
            [doc.text for doc in docs],
            self.options,
            self.model.cls_id,
            self.model.eos_id,
        )

    def encode(
        self, docs: Sequence[Document], progress: ProgressCallback | None = None
    ) -> ShardResult:
        return self.encode_tokenized(docs, self.tokenize(docs), progress)

    def encode_tokenized(
        self,
        docs: Sequence[Document],
        shard: TokenizedShard,
        progress: ProgressCallback | None = None,
    ) -> ShardResult:
        with self.device_gate():
            return PieceRun(self, docs, shard, progress).complete()

    def encode_stream(
        self,
        shards: Iterable[Sequence[Document]],
        progress: ProgressCallback | None = None,
    ) -> Generator[tuple[Sequence[Document], ShardResult], None, None]:
        """Encode shard after shard (a worker's pieces); the next is tokenized while this
        one runs, and its first batch is launched before this one's last is finished: the
        device computes it while the host places that batch's vectors, makes the table and
        hands it on. So the device gate is held from the first launch to the last finish
        (a worker's other slot computes between two of this one's shards), or until the
        stream is closed: a consumer that stops early closes it."""
        ready: queue.Queue[tuple[Sequence[Document], TokenizedShard] | BaseException | None]
        ready = queue.Queue(maxsize=1)
        stop = threading.Event()

        def tokenize_ahead() -> None:
            try:
                for docs in shards:
                    item = (docs, self.tokenize(docs))
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                ready.put(None)
            except BaseException as exc:  # handed to the consumer, raised there
                ready.put(exc)

        worker = threading.Thread(target=tokenize_ahead, name="tokenize-ahead", daemon=True)
        worker.start()
        try:
            with contextlib.ExitStack() as device:
                previous: PieceRun | None = None
                while True:
                    item = ready.get()
                    if item is None:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    docs, tokenized = item
                    current = PieceRun(self, docs, tokenized, progress)
                    if previous is None:  # taken once there is something to launch
                        device.enter_context(self.device_gate())
                    current.launch(1)
                    if previous is not None:
                        yield previous.docs, previous.complete()
                    current.launch()
                    previous = current
                if previous is None:
                    return
                last = previous.complete()
            yield previous.docs, last  # the device let go: nothing is left to launch
        finally:
            stop.set()
            worker.join(timeout=5)

    def _empty_cache(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()


class PieceRun:
    """One piece (a shard, or a worker's part of one) being encoded: its batches launched in
    their planned order, each launch followed by finishing the batch before it, so at most
    one is on the device unfinished (`in_flight`) while the host places the one before.
    `complete` finishes the last and makes the table; until then the next piece's first
    batch may be launched (`EmbedEngine.encode_stream`)."""

    def __init__(
        self,
        engine: EmbedEngine,
        docs: Sequence[Document],
        shard: TokenizedShard,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.engine, self.docs, self.shard, self.progress = engine, docs, shard, progress
        lengths = shard.lengths  # empty for a piece with nothing to encode (all reused)
        # A document is finished when its last sequence (last chunk) is encoded.
        self.ends_doc = np.append(shard.doc_index[1:] != shard.doc_index[:-1], True)
        self.stats = EncodeStats(documents=len(docs), rows=len(shard), tokens=int(lengths.sum()))
        self.columns = ShardColumns(
            lengths,
            engine.options,
            engine.model.dense_dim,
            engine.model.colbert_dim,
            engine.buffers,
        )
        self.planned = iter(plan_batches(lengths, engine.batch_tokens))
        self.in_flight: PendingBatch | None = None
        self.seconds = 0.0  # spent launching, finishing and assembling this piece

    def launch(self, count: int | None = None) -> None:
        """Launch the next `count` planned batches (all that are left when None)."""
        started = time.perf_counter()
        engine = self.engine
        for batch in itertools.islice(self.planned, count):
            launched = encode_with_split(self._run, batch, engine._empty_cache, self._lower)
            for pending in launched:
                if self.in_flight is not None:
                    self._finish(self.in_flight)
                self.in_flight = pending
                if not engine.overlap_batches:
                    self._finish(pending)
                    self.in_flight = None
            self.stats.oom_splits += len(launched) - 1
        self.seconds += time.perf_counter() - started

    def complete(self) -> ShardResult:
        """Launch and finish what is left; the piece's rows in input order."""
        self.launch()
        started = time.perf_counter()
        if self.in_flight is not None:
            self._finish(self.in_flight)
            self.in_flight = None
        if not self.docs:
            return ShardResult(table=self.engine.schema.empty_table())
        shard = self.shard
        table = assemble_table(
            self.columns,
            self.engine.schema,
            [doc.id for doc in self.docs],
            shard.doc_index,
            shard.chunk,
            shard.lengths,
            shard.truncated,
        )
        self.stats.seconds = self.seconds + time.perf_counter() - started
        return ShardResult(table=table, stats=self.stats)

    def _run(self, rows: np.ndarray) -> PendingBatch:
        engine = self.engine
        ids = self.shard.ids
        return forward_batch(
            engine.model, [ids[i] for i in rows], rows, engine.options.modes, engine.device_forms
        )

    def _lower(self, rows: np.ndarray) -> None:
        engine = self.engine
        engine.batch_tokens = budget_after_oom(engine.batch_tokens, rows, self.shard.lengths)

    def _finish(self, batch: PendingBatch) -> None:
        self.columns.add(batch.result())
        lengths = self.shard.lengths
        self.stats.batches += 1
        self.stats.padded_tokens += len(batch.rows) * int(lengths[batch.rows].max())
        if self.progress is not None:
            rows = batch.rows
            self.progress(int(self.ends_doc[rows].sum()), int(lengths[rows].sum()))
