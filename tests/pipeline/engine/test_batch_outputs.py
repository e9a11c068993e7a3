"""A batch's outputs in fixed shapes (sparse pooled by sorting on the device, no host sync)
and a shard's columns filled batch by batch, rows back in input order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.encoder import BatchOutput, PendingBatch, _sparse
from pipeline.engine.table import ShardColumns
from schemas.options import EncodeOptions, StorageDtype
from schemas.vector_layout import colbert_rows

VOCAB = 12
UNUSED = (0, 1, 2)


def reference_sparse(ids: np.ndarray, mask: np.ndarray, weights: np.ndarray) -> list[dict]:
    """FlagEmbedding's rule, row by row: max weight per kept token id."""
    rows = []
    for row_ids, row_mask, row_weights in zip(ids, mask, weights, strict=True):
        pooled: dict[int, float] = {}
        for token, real, weight in zip(row_ids, row_mask, row_weights, strict=True):
            if real and weight > 0 and token not in UNUSED:
                pooled[int(token)] = max(pooled.get(int(token), 0.0), float(weight))
        rows.append(pooled)
    return rows


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_sparse_pooling_in_fixed_shapes_is_flagembeddings_rule(batch, width, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (batch, width))
    lengths = rng.integers(1, width + 1, batch)
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    hidden = torch.from_numpy(rng.standard_normal((batch, width, 4)).astype(np.float32))
    linear = torch.nn.Linear(4, 1)
    model = SimpleNamespace(
        sparse_linear=linear, vocab_size=VOCAB, unused_ids_on_device=torch.tensor(UNUSED)
    )
    with torch.inference_mode():
        weights = torch.relu(linear(hidden)).squeeze(-1)
        host = _sparse(model, weights, torch.from_numpy(ids), torch.from_numpy(mask))  # type: ignore[arg-type]
        weights = weights.numpy()
    out = PendingBatch(np.arange(batch), lengths, host, VOCAB).result()
    want = reference_sparse(ids, mask, weights)
    assert list(out.sparse_counts) == [len(row) for row in want]
    starts = np.concatenate([[0], np.cumsum(out.sparse_counts)])
    for row, pooled in enumerate(want):
        got_ids = out.sparse_indices[starts[row] : starts[row + 1]]
        got_values = out.sparse_values[starts[row] : starts[row + 1]]
        assert list(got_ids) == sorted(pooled)  # ascending, unique
        assert list(got_values) == [np.float32(pooled[i]) for i in sorted(pooled)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 7), min_size=1, max_size=12), st.integers(0, 2**31 - 1))
def test_columns_filled_batch_by_batch_come_out_in_row_order(lengths, seed):
    rng = np.random.default_rng(seed)
    lengths_array = np.array(lengths)
    dim = 3
    # Every row's expected outputs, then split into batches of any order and size.
    dense = rng.standard_normal((len(lengths), dim)).astype(np.float16)
    colbert = [rng.standard_normal((n - 1, dim)).astype(np.float16) for n in lengths]
    terms = [np.sort(rng.choice(50, rng.integers(0, 4), replace=False)) for _ in lengths]
    order = rng.permutation(len(lengths))
    cuts = np.sort(rng.choice(np.arange(1, len(lengths)), rng.integers(0, len(lengths)),
                              replace=False)) if len(lengths) > 1 else []  # fmt: skip
    columns = ShardColumns(lengths_array, EncodeOptions(), dim, dim)
    for rows in np.split(order, cuts):
        width = int(lengths_array[rows].max())
        padded = np.full((len(rows), width - 1, dim), 9, np.float16)  # padding: never kept
        for place, row in enumerate(rows):
            padded[place, : lengths[row] - 1] = colbert[row]
        columns.add(BatchOutput(
            rows=rows, lengths=lengths_array[rows], dense=dense[rows], colbert=padded,
            sparse_counts=np.array([len(terms[r]) for r in rows]),
            sparse_indices=np.concatenate([terms[r] for r in rows]).astype(np.int32),
            sparse_values=np.concatenate([terms[r] for r in rows]).astype(np.float32) / 10,
        ))  # fmt: skip
    arrays = columns.columns()
    assert np.array_equal(np.array(arrays["dense"].to_pylist(), np.float16), dense)
    got = colbert_rows(arrays["colbert"], _field(dim))
    assert all(np.array_equal(g, w) for g, w in zip(got, colbert, strict=True))
    assert arrays["sparse_indices"].to_pylist() == [list(t) for t in terms]
    assert arrays["sparse_values"].to_pylist() == [list(np.float32(t) / 10) for t in terms]


def _field(dim: int):
    from schemas.vector_layout import colbert_field

    return colbert_field(StorageDtype.FLOAT16, dim)


@pytest.mark.slow
def test_overlapping_batches_changes_no_output(tiny):
    """Batch k + 1 launched before batch k is finished, or each finished at once: the same
    table, bit for bit (the GPU check times both)."""
    from pipeline.engine.embedder import EmbedEngine
    from pipeline.testing.corpora import documents
    from schemas.options import EncodeOptions

    docs = documents([f"text number {i} " * (1 + i % 9) for i in range(40)])
    options = EncodeOptions(max_length=64, batch_tokens=256)
    overlapped = EmbedEngine(tiny, options)
    at_once = EmbedEngine(tiny, options)
    at_once.overlap_batches = False
    first, second = overlapped.encode(docs), at_once.encode(docs)
    assert first.stats.batches > 3
    assert first.table.equals(second.table)


def test_a_stream_launches_the_next_pieces_first_batch_before_it_finishes_this_ones_last(
    tiny, monkeypatch
):
    """A worker's pieces one after another: the device gets piece i + 1's first batch
    before the host finishes piece i's last batch, places its vectors and makes its table,
    and each piece's table is the one it makes alone."""
    from pipeline.engine import embedder
    from pipeline.engine.encoder import PendingBatch
    from pipeline.testing.corpora import documents
    from schemas.options import EncodeOptions

    events: list[str] = []
    launch, finish = embedder.forward_batch, PendingBatch.result

    def launching(*args):
        events.append("launch")
        return launch(*args)

    def finishing(self):
        events.append("finish")
        return finish(self)

    texts = [f"piece text {i} " * (1 + i % 7) for i in range(30)]
    pieces = [documents(texts[start : start + 10]) for start in (0, 10, 20)]
    engine = embedder.EmbedEngine(tiny, EncodeOptions(max_length=64, batch_tokens=128))
    alone = [engine.encode(piece).table for piece in pieces]
    monkeypatch.setattr(embedder, "forward_batch", launching)
    monkeypatch.setattr(PendingBatch, "result", finishing)
    seen = []
    for piece, result in engine.encode_stream(pieces):
        seen.append((len(piece), events.count("launch") - events.count("finish")))
        assert result.table.equals(alone[len(seen) - 1])
        assert result.stats.batches > 1 and result.stats.documents == 10
    # When pieces 1 and 2 come out, the next piece's first batch is on the device.
    assert seen == [(10, 1), (10, 1), (10, 0)]


def test_a_streams_pieces_in_flight_take_no_fresh_memory_after_the_first(tiny, monkeypatch):
    """As many ColBERT arrays as a worker holds at once (one piece filling, the one before
    it finishing, and with the part writer: one being written, two queued, one handed over
    and waiting for room): once the pool has made its buffers, every later piece is placed
    in memory used before."""
    import collections
    import mmap

    from pipeline.engine import embedder, host_memory
    from pipeline.testing.corpora import documents
    from schemas.options import EncodeOptions

    made = []
    real_mmap = mmap.mmap

    def counted(*args, **kwargs):
        made.append(args[1])
        return real_mmap(*args, **kwargs)

    monkeypatch.setattr(host_memory.mmap, "mmap", counted)  # where the pool maps its buffers
    texts = [f"piece text {i} " * (5 + i % 3) for i in range(60)]
    pieces = [documents(texts[start : start + 5]) for start in range(0, 60, 5)]
    engine = embedder.EmbedEngine(tiny, EncodeOptions(max_length=64, batch_tokens=128))
    with_the_writer = collections.deque(maxlen=4)
    for _, result in engine.encode_stream(pieces):
        with_the_writer.append(result.table)
    assert 0 < len(made) <= engine.buffers.keep


def test_a_stream_closed_early_lets_go_of_the_device_gate(tiny, tmp_path):
    """A worker slot holds the gate from its shard's first launch to its last finish; a
    stream its consumer stops (an error while writing) lets go of it when closed, as the
    worker closes it, so neither this slot's next shard nor the other slot waits for ever."""
    import fcntl
    import os

    from pipeline.engine.embedder import EmbedEngine
    from pipeline.runtime.device_gate import DeviceGate
    from pipeline.tasks import task_kind
    from pipeline.testing.corpora import documents
    from schemas.job import Task
    from schemas.options import EncodeOptions

    def held(path) -> bool:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # (and with it a lock just taken)
        return False

    gate = DeviceGate(str(tmp_path / "gate"))
    engine = EmbedEngine(tiny, EncodeOptions(max_length=64))
    engine.device_gate = gate
    pieces = [documents([f"text {i} {j}" for j in range(4)]) for i in range(3)]
    stream = task_kind(Task.EMBED).compute_stream(engine, pieces)
    next(stream)
    assert held(gate.path)  # the next piece's first batch is on the device
    stream.close()
    assert not held(gate.path)
    gate.close()
