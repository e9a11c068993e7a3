"""bench_scale's `reuse` part: re-indexing a corpus where 2% of the documents changed.

One process, the model loaded once (its load is not in any figure): `m3pipe encode` of the
corpus (the previous output), then of the edited corpus, side by side: a full encode and
--reuse-repeats with `--reuse` of the previous output (the median counts). Reported: both
wall times and their ratio, and the reuse run's parts: building the on-disk index of the
previous output (per document) and everything else (planning, reading and checking the
copied rows, encoding the changed documents, writing), and each run's peak resident memory
above what the process held before it (Linux: the peak is reset before each run). Documents:
synthetic multilingual text, lognormal lengths (median ~120 tokens, at most
--reuse-max-length). With `--model stub:full` the rows have bge-m3's sizes (~2 KB of ColBERT
a token): what copying costs where encoding is fast, as on a GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.report import peak_since_reset, reset_peak


def write_corpus(path: Path, texts: list[str]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i, text in enumerate(texts):
            out.write(json.dumps({"id": f"doc-{i:07d}", "text": text}, ensure_ascii=False) + "\n")


def reuse(args: argparse.Namespace, tmp: Path) -> dict:
    from pipeline.engine.embedder import EmbedEngine
    from pipeline.engine.model import load_model
    from pipeline.engine.synthetic_text import TextGenerator
    from pipeline.inputs.indexes.reuse_index import ReuseIndex
    from pipeline.local.process import process_file
    from pipeline.settings import Settings
    from pipeline.storage.finished_output import FinishedOutput
    from pipeline.tasks import task_kind
    from schemas.job import Task
    from schemas.options import EncodeOptions

    documents, changed_every = args.reuse_documents, round(1 / args.reuse_changed)
    rng = np.random.default_rng(0)
    generator = TextGenerator(0)
    words = np.clip(rng.lognormal(np.log(60), 0.8, documents), 3, 3000).astype(int)
    texts = [generator.document(int(n)) for n in words]
    write_corpus(tmp / "v1.jsonl", texts)
    edited = [t + " (edited)" if i % changed_every == 0 else t for i, t in enumerate(texts)]
    write_corpus(tmp / "v2.jsonl", edited)

    model = load_model(args.model, device="cpu", precision=None, cache_dir=Settings().cache_dir)
    engine = EmbedEngine(model, EncodeOptions(max_length=args.reuse_max_length))
    kind = task_kind(Task.EMBED)

    peaks: dict[str, float] = {}

    def encode(name: str, source: str, previous: Path | None = None) -> tuple[float, object]:
        before = reset_peak()
        started = time.perf_counter()
        summary = process_file(kind, tmp / source, tmp / name, engine,
                               shard_items=args.shard_docs, reuse=previous)  # fmt: skip
        seconds = time.perf_counter() - started
        peaks[name] = round((peak_since_reset() - before) / 2**20, 1)
        return seconds, summary

    first_seconds, first = encode("v1", "v1.jsonl")
    full_seconds, full = encode("full", "v2.jsonl")
    runs = [encode(f"reused-{n}", "v2.jsonl", tmp / "v1") for n in range(args.reuse_repeats)]
    reuse_seconds, reused = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median
    reuse_peaks = [peaks[f"reused-{n}"] for n in range(args.reuse_repeats)]
    started = time.perf_counter()
    with ReuseIndex(FinishedOutput.open(tmp / "v1")) as index:
        index_seconds = time.perf_counter() - started
        indexed = index.indexed
    return {
        "documents": documents,
        "changed": sum(1 for i in range(documents) if i % changed_every == 0),
        "tokens": first.stats.tokens,
        "max_length": args.reuse_max_length,
        "first_encode_seconds": round(first_seconds, 2),
        "full_encode_seconds": round(full_seconds, 2),
        "reuse_encode_seconds": round(reuse_seconds, 2),
        "reuse_encode_seconds_each": [round(seconds, 2) for seconds, _ in runs],
        "reuse_over_full": round(reuse_seconds / full_seconds, 4),
        "reused": reused.reused,
        "encoded": reused.accepted - reused.reused,
        "encoded_tokens": reused.stats.tokens,
        "full_tokens": full.stats.tokens,
        "index_build_seconds": round(index_seconds, 3),
        "index_us_per_document": round(index_seconds / indexed * 1e6, 2),
        "reuse_rest_us_per_document": round(
            (reuse_seconds - index_seconds - reused.stats.seconds) / documents * 1e6, 1
        ),
        "model": args.model,
        "shard_documents": args.shard_docs,
        # Peak resident memory during each run above the process's before it, in MiB.
        "full_encode_peak_mib_above_start": peaks["full"],
        "reuse_encode_peak_mib_above_start_each": reuse_peaks,
        "output_bytes_per_document": round(
            sum(p.stat().st_size for p in (tmp / "full").glob("part-*")) / documents, 1
        ),
    }
