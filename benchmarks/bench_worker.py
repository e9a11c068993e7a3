"""The host's ceiling around a GPU: how many documents a worker path turns into Parquet per
second when the encoder costs nothing (`stub:full`: bge-m3's output shapes, 1024-dim dense
and ColBERT; pipeline/engine/stub_model.py), so what is measured is everything else.

Whole process, from outside: `m3pipe encode` and `m3pipe run --workers 1 --slots N` (Redis,
a worker, job state, acks; start-up included) on --documents documents of --doc-tokens tokens each
(truncated there), for each storage dtype, for each way of writing parts (--sinks: around
the page cache, the default, and/or through it), and for each way torch's idle OpenMP
threads wait (--openmp: asleep, m3pipe's choice here, and/or spinning as GNU OpenMP does by
default). Then, in this process, one shard's CPU time by stage: tokenize, the engine (stub
forward, heads' post-processing, table assembly) and the Parquet write through the worker's
part writer, per document.

Every part goes to disk (~1 MB a 512-token document at float16), so the disk bounds the
paths too: its bandwidth is measured in the same run, before and after the timed commands,
written as the part writer writes (pipeline/storage/direct_file.py: O_DIRECT stages, an
fdatasync every 128 MiB; --disk-bytes of them, 0 for none), and each run reports how long that
disk alone needs for the bytes it wrote (`disk_floor_seconds`) against its wall time and its
compute span.

    python -m benchmarks.bench_worker --documents 4000 --doc-tokens 512
    python -m benchmarks.bench_worker --dtypes float16 --paths encode,run --sinks direct,cached
    python -m benchmarks.bench_worker --dtypes float16 --storages exact --openmp sleep,spin
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import run_facts, save


def write_corpus(path: Path, documents: int, doc_tokens: int) -> None:
    """Documents long enough to be truncated at `doc_tokens` (about 3.5 tokens a word)."""
    from pipeline.engine.synthetic_text import TextGenerator

    generator = TextGenerator(7)
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(documents):
            text = generator.document(doc_tokens // 2)
            handle.write(json.dumps({"id": f"d{number:07d}", "text": text}) + "\n")


def adopt_orphans() -> None:
    """Become the reaper of this process's orphaned descendants (Linux): `m3pipe run` kills
    its workers outright once the job has ended, and a killed worker's pool process is
    reaped by whoever adopts it; its CPU time counts in RUSAGE_CHILDREN only if that is us."""
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def reap_orphans(patience: float = 10.0) -> None:
    """Reap every adopted descendant (they were killed with their group: gone at once)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.01)


def whole_process(command: list[str], out: Path, env: dict[str, str]) -> dict:
    """Wall and CPU seconds of one m3pipe command (every descendant included), its rows and
    the bytes of its parts."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr[-2000:]}")
    counts = json.loads((out / "_manifest.json").read_text())["counts"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    documents = int(counts["documents"])
    span = compute_span(out)
    return {
        "documents": documents,
        "tokens": int(counts["tokens"]),
        "wall_seconds": round(wall, 3),
        "documents_per_second": round(documents / wall, 1),
        "tokens_per_second": round(int(counts["tokens"]) / wall, 1),
        "cpu_ms_per_document": round(cpu / documents * 1e3, 3),
        # From the first shard's start to the last one's end (the parts' footers): the
        # job's own time, start-up and shut-down left out.
        "compute_span_seconds": round(span, 3) if span else None,  # encode: no footers
        "span_tokens_per_second": round(int(counts["tokens"]) / span, 1) if span else None,
        "part_bytes": part_bytes(out),
    }


def disk_floor(figures: dict, disk_bytes_per_second: float) -> dict:
    """The seconds the disk alone needs for a run's parts, and their share of its wall time
    and compute span (1.0 of the span: the disk never rested while shards ran)."""
    floor = figures["part_bytes"] / disk_bytes_per_second
    span = figures["compute_span_seconds"]
    return {
        "disk_floor_seconds": round(floor, 3),
        "disk_floor_share_of_wall": round(floor / figures["wall_seconds"], 3),
        "disk_floor_share_of_span": round(floor / span, 3) if span else None,
    }


def disk_bandwidth(folder: Path, total_bytes: int = 1 << 30, sync_bytes: int = 128 << 20) -> float:
    """Bytes/s of the disk under `folder` written as a part is: through `DirectFile` (O_DIRECT
    where taken) from memory, an fdatasync every `sync_bytes` (a piece's ~134 MB) and at the
    end; the file removed after."""
    from pipeline.storage.direct_file import STAGE_BYTES, DirectFile

    block = memoryview(bytes(range(256)) * (STAGE_BYTES // 256))
    path = folder / "disk-bandwidth.bin"
    started = time.perf_counter()
    with DirectFile(path) as handle:
        written = 0
        while written < total_bytes:
            handle.write(block)
            written += len(block)
            if written % sync_bytes == 0 or written >= total_bytes:
                handle.flush()
                os.fdatasync(handle.fileno())
    seconds = time.perf_counter() - started
    path.unlink()
    return written / seconds


def part_bytes(out: Path) -> int:
    return sum(part.stat().st_size for part in out.glob("part-*.parquet"))


def compute_span(out: Path) -> float:
    """Seconds from the earliest shard start to the latest shard end, from the parts."""
    from pipeline.jobs.resume import read_shard_file

    starts, ends = [], []
    for part in sorted(out.glob("part-*.parquet")):
        found = read_shard_file(part)
        if found is None or "encoded_at" not in found.facts:
            continue
        ends.append(float(found.facts["encoded_at"]))
        starts.append(ends[-1] - float(found.facts["encode_seconds"]))
    return max(ends) - min(starts) if ends else 0.0


def stages(
    corpus: Path,
    doc_tokens: int,
    dtype: str,
    cache: Path,
    shard: int,
    model_spec: str = "stub:full",
    device: str = "cpu",
    precision: str = "fp32",
) -> dict:
    """One shard's CPU time per document in each stage of the encode path."""
    from pipeline.engine.model import load_model
    from pipeline.storage.part_writer import PartWriter
    from pipeline.tasks import task_kind
    from schemas.document import Document
    from schemas.job import Task
    from schemas.options import EncodeOptions

    model = load_model(model_spec, device=device, precision=precision, cache_dir=cache)
    options = EncodeOptions(max_length=doc_tokens, dtype=dtype)
    engine = task_kind(Task.EMBED).engine(model, options)
    with open(corpus, encoding="utf-8") as handle:
        docs = [Document(**json.loads(next(handle))) for _ in range(shard)]
    timings = {}
    started = time.process_time()
    tokenized = engine.tokenize(docs)
    timings["tokenize"] = time.process_time() - started
    started = time.process_time()
    result = engine.encode_tokenized(docs, tokenized)
    timings["engine (forward, heads, placing vectors, table)"] = time.process_time() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.process_time()  # the worker's writer: its thread, its sink
        writer = PartWriter(Path(tmp) / "part-00000.parquet", result.table.schema)
        writer.write(result.table)
        written = writer.close()
        timings["parquet write"] = time.process_time() - started
        part_bytes = written.size()
    return {
        "documents": shard,
        "cpu_ms_per_document": {k: round(v / shard * 1e3, 3) for k, v in timings.items()},
        "part_bytes_per_document": round(part_bytes / shard),
    }


# GNU OpenMP's own wait when OMP_WAIT_POLICY is unset (spin ~300,000 rounds, then sleep); an
# explicit GOMP_SPINCOUNT outranks the PASSIVE that m3pipe sets (pipeline/runtime/openmp.py).
SPIN_ENV = {"GOMP_SPINCOUNT": "300000"}


def sides(
    paths: str, storages: str, slots: str, sinks: str, openmp: str = "sleep"
) -> list[tuple[str, str, str, str, str]]:
    """(path, storage, slots, sink, openmp) of each whole-process run; slots apply to `run`
    only."""
    out = []
    for path, storage, sink, wait in itertools.product(
        paths.split(","), storages.split(","), sinks.split(","), openmp.split(",")
    ):
        for count in slots.split(",") if path == "run" else ["1"]:
            out.append((path, storage, count, sink, wait))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=4000)
    parser.add_argument("--doc-tokens", type=int, default=512)
    parser.add_argument("--dtypes", default="float16,float32")
    parser.add_argument("--model", default="stub:full", help="stub:full, or a real model")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (the worker: GPU 0)")
    parser.add_argument("--precision", default="auto", help="compute precision (auto, fp16...)")
    parser.add_argument("--paths", default="encode,run", help="whole-process commands to time")
    parser.add_argument(
        "--storages", default="exact", help="--storage presets to time: exact and/or compact"
    )
    parser.add_argument(
        "--slots", default="1", help="`run`'s worker slots to time (comma-separated: 1,2)"
    )
    parser.add_argument(
        "--sinks", default="direct",
        help="how parts are written: direct (O_DIRECT where taken, the default) and/or "
        "cached (through the page cache: M3PIPE_DIRECT_WRITES=0)",
    )  # fmt: skip
    parser.add_argument(
        "--openmp", default="sleep",
        help="how torch's idle OpenMP threads wait: sleep (m3pipe's choice where no forward "
        "runs on this CPU, the stand-in's case) and/or spin (GNU OpenMP's default, as before)",
    )  # fmt: skip
    parser.add_argument(
        "--device-rate", type=float, default=0.0,
        help="the stub's forward at this many tokens/s, sleeping as a device would compute "
        "(0: instant, the host's ceiling)",
    )  # fmt: skip
    parser.add_argument(
        "--shard-docs", type=int, help="documents a shard (default: the producer's, 1,000)"
    )
    parser.add_argument("--stage-documents", type=int, default=200, help="documents a shard")
    parser.add_argument(
        "--disk-bytes", type=int, default=1 << 30,
        help="bytes written to measure the disk, before and after the timed commands (0: "
        "not measured, no disk floors)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="save the JSON here (default: .results/)")
    args = parser.parse_args()

    adopt_orphans()
    with tempfile.TemporaryDirectory(prefix="m3pipe-bench-worker-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        corpus = work / "corpus.jsonl"
        write_corpus(corpus, args.documents, args.doc_tokens)
        env = {**os.environ, "M3PIPE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
        env.pop("M3PIPE_BROKER_URL", None)  # `run` starts its own Redis
        env["M3PIPE_STUB_TOKENS_PER_SECOND"] = str(args.device_rate)
        subprocess.run(  # the stub's tokenizer built once, outside the timings
            [sys.executable, "-m", "pipeline.cli", "encode", str(corpus), "--out",
             str(work / "warm"), "--model", args.model, "-q", "--max-length", "8",
             "--device", args.device],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        report: dict = {"model": args.model, "device": args.device, "precision": args.precision,
                        "doc_tokens": args.doc_tokens, "stub_device_rate": args.device_rate,
                        "paths": {}}  # fmt: skip
        disk: list[float] = []  # at the start and again at the end: this machine's disk varies
        if args.disk_bytes > 0:
            disk.append(disk_bandwidth(work, args.disk_bytes))
            print(f"disk: {disk[0] / 1e6:.0f} MB/s written as a part is")
        for dtype in args.dtypes.split(","):
            for path, storage, slots, sink, wait in sides(
                args.paths, args.storages, args.slots, args.sinks, args.openmp
            ):
                out = work / f"{path}-{dtype}-{storage}"
                command = [sys.executable, "-m", "pipeline.cli", path, str(corpus), "--out",
                           str(out), "--model", args.model, "--max-length",
                           str(args.doc_tokens), "--dtype", dtype, "-q",
                           "--precision", args.precision, "--storage", storage]  # fmt: skip
                if path == "run":  # its worker takes GPU 0 unless told cpu
                    command += ["--workers", "1", "--slots", slots, "--device",
                                "cpu" if args.device == "cpu" else "auto"]  # fmt: skip
                else:
                    command += ["--device", args.device]
                if args.shard_docs is not None:
                    command += ["--shard-docs", str(args.shard_docs)]
                side_env = {**env, "M3PIPE_DIRECT_WRITES": "0" if sink == "cached" else "1",
                            **(SPIN_ENV if wait == "spin" else {})}  # fmt: skip
                figures = whole_process(command, out, side_env)
                if disk:
                    figures.update(disk_floor(figures, disk[0]))
                shutil.rmtree(out)  # ~1 MB a document: the disk holds one output at a time
                key = f"{path}:{dtype}" + ("" if storage == "exact" else f":{storage}")
                key += "" if slots == "1" else f":slots{slots}"
                key += "" if sink == "direct" else f":{sink}"
                key += "" if wait == "sleep" else f":{wait}"
                report["paths"][key] = figures
                busy = ""
                if args.device_rate > 0 and figures["span_tokens_per_second"]:
                    figures["device_busy_share"] = round(
                        figures["span_tokens_per_second"] / args.device_rate, 3)  # fmt: skip
                    busy = f", emulated device busy {figures['device_busy_share']:.0%}"
                print(f"{key:<22} {figures['documents_per_second']:>8} documents/s, "
                      f"{figures['tokens_per_second']:>10} tokens/s, "
                      f"{figures['cpu_ms_per_document']} ms CPU a document{busy}"
                      + (f"; the disk alone {figures['disk_floor_seconds']} s of "
                         f"{figures['wall_seconds']} s" if disk else ""))  # fmt: skip
            precision = (
                "fp32" if args.precision == "auto" and args.device == "cpu" else args.precision
            )
            shard = min(args.stage_documents, args.documents)
            split = stages(corpus, args.doc_tokens, dtype, cache, shard,
                           args.model, args.device, precision)  # fmt: skip
            report.setdefault("stages", {})[dtype] = split
            print(f"stages {dtype}: {split['cpu_ms_per_document']} ms a document, "
                  f"{split['part_bytes_per_document']} bytes a document on disk")  # fmt: skip
        if disk:
            disk.append(disk_bandwidth(work, args.disk_bytes))
            print(f"disk: {disk[1] / 1e6:.0f} MB/s at the end; the floors above use the start's")
            report["disk_bytes_per_second"] = {"start": round(disk[0]), "end": round(disk[1])}
    report.update(run_facts())
    save(report, "worker", args.device, args.model, args.out)


if __name__ == "__main__":
    main()
