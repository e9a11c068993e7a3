"""The engine: documents in, one Arrow table of dense/sparse/ColBERT rows out.

Used unchanged by `m3pipe encode` and by the queue workers. Never imports Celery.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
        # ColBERT arrays of pieces in flight (one filling, two queued for the writer, one
        # writing: pipeline/storage/part_writer.py; at a shard's end its last may still be
        # with its writer as the next shard's first fills), their memory used again for
        # later pieces: pipeline/engine/recycled.py.
        self.buffers = RecycledBuffers(keep=5)
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
        started = time.perf_counter()
        if not docs:
            return ShardResult(table=self.schema.empty_table())
        lengths = shard.lengths
        # A document is finished when its last sequence (last chunk) is encoded.
        ends_doc = np.append(shard.doc_index[1:] != shard.doc_index[:-1], True)
        stats = EncodeStats(documents=len(docs), rows=len(shard), tokens=int(lengths.sum()))
        columns = ShardColumns(
            lengths,
            self.options,
            self.model.dense_dim,
            self.model.colbert_dim,
            self.buffers,
        )

        def run(rows: np.ndarray) -> PendingBatch:
            return forward_batch(
                self.model,
                [shard.ids[i] for i in rows],
                rows,
                self.options.modes,
                self.device_forms,
            )

        def lower_budget(rows: np.ndarray) -> None:
            self.batch_tokens = budget_after_oom(self.batch_tokens, rows, lengths)

        def finish(batch: PendingBatch) -> None:
            columns.add(batch.result())
            stats.batches += 1
            stats.padded_tokens += len(batch.rows) * int(lengths[batch.rows].max())
            if progress is not None:
                progress(int(ends_doc[batch.rows].sum()), int(lengths[batch.rows].sum()))

        with self.device_gate():
            stats.oom_splits += self._run_batches(lengths, run, lower_budget, finish)

        table = assemble_table(
            columns,
            self.schema,
            [doc.id for doc in docs],
            shard.doc_index,
            shard.chunk,
            lengths,
            shard.truncated,
        )
        stats.seconds = time.perf_counter() - started
        return ShardResult(table=table, stats=stats)

    def _run_batches(
        self,
        lengths: np.ndarray,
        run: Callable[[np.ndarray], PendingBatch],
        lower_budget: Callable[[np.ndarray], None],
        finish: Callable[[PendingBatch], None],
    ) -> int:
        """Every batch of a piece through the device; how many batches were split after
        running out of memory. One batch in flight: batch k + 1 is launched before batch k
        is finished, so the device computes while the host places the previous batch's
        outputs."""
        splits = 0
        in_flight: PendingBatch | None = None
        for batch in plan_batches(lengths, self.batch_tokens):
            pieces = encode_with_split(run, batch, self._empty_cache, lower_budget)
            for piece in pieces:
                if in_flight is not None:
                    finish(in_flight)
                in_flight = piece
                if not self.overlap_batches:
                    finish(in_flight)
                    in_flight = None
            splits += len(pieces) - 1
        if in_flight is not None:
            finish(in_flight)
        return splits

    def encode_stream(
        self,
        shards: Iterable[Sequence[Document]],
        progress: ProgressCallback | None = None,
    ) -> Iterator[tuple[Sequence[Document], ShardResult]]:
        """Encode shard after shard; the next shard is tokenized while this one runs."""
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
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                docs, tokenized = item
                yield docs, self.encode_tokenized(docs, tokenized, progress)
        finally:
            stop.set()
            worker.join(timeout=5)

    def _empty_cache(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
