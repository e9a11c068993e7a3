"""Output bytes for every storage choice, at bge-m3's shapes, and what they mean at 10^9
documents (issue 31, item 5; docs/scale.md, "Output bytes").

Encodes documents of 200 and of 500 tokens with the stand-in engine `stub:full` (bge-m3's
output shapes: 1024-dim dense and ColBERT, sparse of realistic term counts; no model, a
capacity test), stores them as each storage choice says, writes each as m3pipe writes a part
file (pipeline/storage/sink.py: the same columns, compression and row groups) and reports:

- bytes a document and a token, and the ratio to today's default (exact float16);
- TB at 10^9 documents;
- the write rate one GPU needs at the H200's measured forward rate (docs/engine.md, "On a
  GPU": 732k tokens/s, bge-m3 fp16, the encoder alone);
- CPU ms a document to encode and store here (quantising, pooling; the stub's forward is
  nearly free, so this is the storage's own host cost), and to write the file.

The bytes of a vector column are set by the layout, not by the values, so the stand-in's
vectors give the real figure; only zstd on dense/sparse could differ a little on trained
vectors (benchmarks/study_storage.py gives the bytes on the trained proxy).

    python -m benchmarks.bench_output_bytes --documents 300
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.report import run_facts, save

H200_FORWARD_TOKENS_PER_S = 732_000  # docs/engine.md, "On a GPU" (encoder alone, fp16)
CORPUS_DOCUMENTS = 10**9

STORAGES: dict[str, dict[str, object]] = {
    "exact float16 (default)": {},
    "exact float32": {"dtype": "float32"},
    "int8 dense + int8 colbert": {"dense_storage": "int8", "colbert_storage": "int8"},
    "compact (int8 dense + binary colbert)": {
        "dense_storage": "int8",
        "colbert_storage": "binary",
    },
    "int8 dense + pool2 int8 colbert": {
        "dense_storage": "int8",
        "colbert_storage": "int8",
        "colbert_pool": 2,
    },
    "compact + pool2": {"dense_storage": "int8", "colbert_storage": "binary", "colbert_pool": 2},
    "binary dense + binary colbert": {"dense_storage": "binary", "colbert_storage": "binary"},
    "compact + sparse top 64": {
        "dense_storage": "int8",
        "colbert_storage": "binary",
        "sparse_top_k": 64,
    },
}


def documents(count: int, tokens: int) -> list:
    from pipeline.engine.synthetic_text import TextGenerator
    from schemas.document import Document

    generator = TextGenerator(7)  # long enough to be truncated at `tokens` (~3.5 a word)
    return [Document(id=f"d{n:07d}", text=generator.document(tokens // 2)) for n in range(count)]


def measure(model, docs: list, tokens: int, storage: dict[str, object], scratch: Path) -> dict:
    from pipeline.engine.embedder import EmbedEngine
    from pipeline.storage.sink import write_shard
    from schemas.options import EncodeOptions

    options = EncodeOptions.model_validate({"max_length": tokens, **storage})
    engine = EmbedEngine(model, options)
    started = time.process_time()
    table = engine.encode(docs).table
    encoded = time.process_time()
    path = write_shard(table, scratch / "part-00000.parquet")
    written = time.process_time()
    size = Path(path.path).stat().st_size
    path_tokens = int(table.column("n_tokens").to_numpy().sum())
    per_doc = size / len(docs)
    docs_per_second = H200_FORWARD_TOKENS_PER_S / (path_tokens / len(docs))
    return {
        "bytes_per_document": round(per_doc),
        "bytes_per_token": round(size / path_tokens, 1),
        "tb_at_1e9_documents": round(per_doc * CORPUS_DOCUMENTS / 1e12, 2),
        "write_mb_per_s_per_h200": round(per_doc * docs_per_second / 1e6, 1),
        "encode_and_store_cpu_ms_per_document": round((encoded - started) * 1e3 / len(docs), 3),
        "write_cpu_ms_per_document": round((written - encoded) * 1e3 / len(docs), 3),
        "tokens_per_document": round(path_tokens / len(docs), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--lengths", default="200,500", help="document tokens, comma-separated")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from pipeline.engine.model import load_model

    cache = Path(os.environ.get("M3PIPE_CACHE_DIR", "~/.cache/m3pipe")).expanduser()
    model = load_model("stub:full", device="cpu", precision="fp32", cache_dir=cache)
    report: dict[str, object] = {**run_facts(), "model": "stub:full (bge-m3's output shapes)"}
    for tokens in (int(part) for part in args.lengths.split(",")):
        docs = documents(args.documents, tokens)
        figures: dict[str, dict] = {}
        for name, storage in STORAGES.items():
            with tempfile.TemporaryDirectory() as scratch:
                figures[name] = measure(model, docs, tokens, storage, Path(scratch))
            base = figures["exact float16 (default)"]["bytes_per_document"]
            figures[name]["ratio_to_default"] = round(figures[name]["bytes_per_document"] / base, 4)
            print(f"{tokens:>4} tokens  {name:<40} {figures[name]}", flush=True)
        report[f"{tokens}_tokens"] = figures
    save(report, "output-bytes", "cpu", "stub-full", args.out)


if __name__ == "__main__":
    main()
