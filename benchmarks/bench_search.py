"""`m3pipe search` scoring speed: query-document pairs per second, per mode and hybrid.

The index is synthetic, of bge-m3's shape (dense 1024, ColBERT 1024 per token, float16;
--doc-tokens tokens per document on average, lognormal; ~--doc-tokens/3 sparse terms from a
250,002-token vocabulary), written as m3pipe part files with a manifest: scoring cost
depends on shapes, not on what the vectors mean. Queries are random too (16 tokens each).
Each mode is timed alone, then the three together as the hybrid (one pass, as `search`
does), through the real streaming path (pipeline/retrieval: part files read back, scored,
top-100 kept). Peak RSS is reported: it must not grow with the index. Each storage asked
for (--storages: exact float16, and compact: int8 dense, binary ColBERT) is the same
vectors written that way and timed in the same run, side by side.

    python -m benchmarks.bench_search --documents 4000 --queries 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.report import peak_since_reset, reset_peak, run_facts, save

DIM = 1024
VOCAB = 250_002


def unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.standard_normal((rows, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_index(
    path: Path, documents: int, doc_tokens: int, shard: int, seed: int, storage: str
) -> dict:
    from pipeline.engine.compact_vectors import int8_per_vector, sign_bits
    from pipeline.storage.sink import part_name, write_shard
    from schemas.options import STORAGE_PRESETS, EncodeOptions, Mode, StorageDtype, VectorForm
    from schemas.output import output_schema
    from schemas.vector_layout import colbert_array

    rng = np.random.default_rng(seed)
    path.mkdir()
    identity = {"model": "synthetic", "model_fingerprint": "synthetic", "model_revision": None,
                "dense_dim": DIM, "colbert_dim": DIM}  # fmt: skip
    options = EncodeOptions.model_validate(STORAGE_PRESETS[storage])  # type: ignore[index]
    compact = options.colbert_storage is VectorForm.BINARY
    schema = output_schema(tuple(Mode), StorageDtype.FLOAT16, DIM, DIM, metadata=identity,
                           dense_form=options.dense_storage,
                           colbert_form=options.colbert_storage)  # fmt: skip
    tokens = 0
    for number, start in enumerate(range(0, documents, shard)):
        n = min(shard, documents - start)
        lengths = np.clip(rng.lognormal(np.log(doc_tokens), 0.6, n), 4, 8192).astype(int)
        tokens += int(lengths.sum())
        terms = [np.unique(rng.integers(4, VOCAB, max(1, t // 3))) for t in lengths]
        colbert = unit(rng, int(lengths.sum())).astype(np.float16)
        dense = unit(rng, n).astype(np.float16)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        columns = {
            "id": [f"doc-{start + i}" for i in range(n)],
            "dense": pa.FixedSizeListArray.from_arrays(dense.ravel(), DIM),
            "sparse_indices": pa.array([t.astype(np.int32) for t in terms]),
            "sparse_values": pa.array([rng.random(len(t), dtype=np.float32) for t in terms]),
            "colbert": colbert_array(offsets, colbert),
            "n_tokens": lengths.astype(np.int32) + 1,
            "truncated": np.zeros(n, bool),
        }
        if compact:  # the same vectors, stored as --storage compact stores them
            codes, scales = int8_per_vector(dense)
            columns["dense"] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(DIM), n, [None, pa.py_buffer(codes.view(np.uint8))]
            )
            columns["dense_scale"] = pa.array(scales)
            columns["colbert"] = colbert_array(offsets, sign_bits(colbert))
        write_shard(pa.table(columns, schema=schema), path / part_name(number))
    job_options = {"modes": [m.value for m in Mode], "max_length": 8192, **options.storage()}
    manifest = {"job": {"task": "embed", "options": job_options},
                "model": identity, "counts": {"documents": documents}}  # fmt: skip
    (path / "_manifest.json").write_text(json.dumps(manifest))
    return {"documents": documents, "tokens": tokens}


def queries(count: int, seed: int):
    from pipeline.retrieval.scores import Vectors

    rng = np.random.default_rng(seed + 1)
    per = 16
    terms = [np.unique(rng.integers(4, VOCAB, 8)) for _ in range(count)]
    return Vectors(
        ids=[f"q{i}" for i in range(count)],
        dense=unit(rng, count),
        sparse_indices=np.concatenate(terms),
        sparse_values=rng.random(sum(len(t) for t in terms), dtype=np.float32),
        sparse_offsets=np.concatenate([[0], np.cumsum([len(t) for t in terms])]),
        colbert=unit(rng, count * per),
        colbert_offsets=np.arange(0, count * per + 1, per),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--doc-tokens", type=int, default=120)
    parser.add_argument("--shard-docs", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--storages", default="exact,compact", help="exact and/or compact")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="each side timed this many times, the storages alternating (medians reported)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run_facts()
    report["queries"] = args.queries
    storages = args.storages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for storage in storages:
            report[storage] = {"index": build(args, storage, Path(tmp) / storage)}
        seconds: dict[tuple[str, str], list[float]] = {}
        for round_number in range(args.rounds):  # side by side: the load falls on both
            for storage in storages:
                before = reset_peak()  # the indexes were built here: the search alone
                for name, (taken, documents) in time_sides(args, Path(tmp) / storage).items():
                    seconds.setdefault((storage, name), []).append(taken)
                    report[storage]["documents"] = documents
                if round_number == 0:
                    report[storage]["rss_before_mb"] = round(before / 2**20)
                    report[storage]["peak_rss_mb"] = round(peak_since_reset() / 2**20)
    for (storage, name), taken in seconds.items():
        median = statistics.median(taken)
        documents = report[storage]["documents"]
        report[storage][name] = {
            "seconds": round(median, 3),
            "seconds_each_round": [round(t, 3) for t in taken],
            "pairs_per_second": round(documents * args.queries / median),
            "documents_per_second": round(documents / median, 1),
        }
        pairs = documents * args.queries / median
        print(f"{storage:8} {name:8} {median:8.2f}s  {pairs:14,.0f} query-document pairs/s")
    if {"exact", "compact"} <= set(storages):
        report["compact_vs_exact_pairs_per_second"] = {
            name: round(report["compact"][name]["pairs_per_second"]
                        / report["exact"][name]["pairs_per_second"], 3)
            for name, side in report["exact"].items()
            if isinstance(side, dict) and "pairs_per_second" in side
        }  # fmt: skip
        print("compact / exact, pairs/s:", report["compact_vs_exact_pairs_per_second"])
    save(report, "search", "cpu", "synthetic-bge-m3-shape", args.out)
    return 0


def build(args: argparse.Namespace, storage: str, index_dir: Path) -> dict:
    started = time.perf_counter()
    index = write_index(index_dir, args.documents, args.doc_tokens, args.shard_docs, 0, storage)
    index["bytes"] = sum(p.stat().st_size for p in index_dir.glob("part-*"))
    index["seconds_to_write"] = round(time.perf_counter() - started, 1)
    return index


def time_sides(args: argparse.Namespace, index_dir: Path) -> dict[str, tuple[float, int]]:
    """(seconds, documents scored) of each mode alone and of the hybrid over one index."""
    from pipeline.retrieval.exact_search import HYBRID, SearchRequest, score_index
    from pipeline.storage.finished_output import FinishedOutput
    from schemas.options import Mode

    index = FinishedOutput.open(index_dir)
    vectors = queries(args.queries, 0)
    sides = {mode.value: ((mode,), {m: float(m is mode) for m in Mode}, (mode.value,))
             for mode in Mode}  # fmt: skip
    weights = {Mode.DENSE: 0.4, Mode.SPARSE: 0.2, Mode.COLBERT: 0.4}
    sides[HYBRID] = (tuple(Mode), weights, (HYBRID,))
    timed = {}
    for name, (modes, side_weights, runs) in sides.items():
        request = SearchRequest(index=index_dir, queries="", out="", top_k=args.top_k,
                                weights=side_weights, runs=runs)  # fmt: skip
        started = time.perf_counter()
        _, documents = score_index(index, vectors, modes, request)
        timed[name] = (time.perf_counter() - started, documents)
    return timed


if __name__ == "__main__":
    raise SystemExit(main())
