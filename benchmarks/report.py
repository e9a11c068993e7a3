"""What every benchmark does the same way: run one side in a fresh process, and save JSON.

Benchmarks are modules of the `benchmarks` package, run from the repository root as
`python -m benchmarks.NAME`: they import the checkout's code (no install needed, as on the
GPU machine) and each other as `benchmarks.*`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"  # committed runs: given with --out
# Where a run saves without --out: git-ignored, so a benchmark never changes the tree. A
# result worth keeping is committed on purpose, `--out benchmarks/results/NAME.json`.
LOCAL_RESULTS = Path(__file__).resolve().parent / ".results"


def running_benchmark() -> str:
    """The module run as `python -m benchmarks.NAME` (its file name if run otherwise)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).name


def rerun_command(*args: str) -> list[str]:
    """The running benchmark again, as a command (run it with `cwd=ROOT`)."""
    return [sys.executable, "-m", running_benchmark(), *args]


def spawn_side(side_args: list[str]) -> dict | None:
    """Run this benchmark again with the parent's arguments plus `side_args` in a fresh
    process (clean peak-memory figures); its last stdout line is its JSON result."""
    proc = subprocess.run(
        rerun_command(*sys.argv[1:], *side_args),
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=ROOT,
    )
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def kernels_for(precision: str) -> str:
    """A side's precision as the model loader takes it. A suffix turns one of m3pipe's CPU
    kernels off for this process: "-sdpa" PyTorch's SDPA attention instead of the fused
    kernel on a CPU (pipeline/engine/cpu_attention.py) or the variable-length one on CUDA
    (pipeline/engine/cuda_attention.py); "-mkl" PyTorch's own fp32 GEMM (MKL) instead
    of oneDNN's, and with it SDPA (pipeline/engine/cpu_linear.py)."""
    from pipeline.engine import cpu_attention, cpu_linear, cuda_attention

    if precision.endswith("-sdpa"):
        os.environ[cpu_attention.ENV] = os.environ[cuda_attention.ENV] = "sdpa"
        return precision.removesuffix("-sdpa")
    if precision.endswith("-mkl"):
        os.environ[cpu_linear.ENV] = "mkl"
        return precision.removesuffix("-mkl")
    return precision


def cpu_facts() -> dict:
    """The CPU's model name and the matmul-related instruction sets it reports."""
    from pipeline.engine.precision import cpu_flags

    wanted = {"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx_vnni"}
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            name = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                name,
            )
    except OSError:
        pass
    return {"cpu": name, "cpu_flags": sorted(cpu_flags() & wanted)}


def run_facts() -> dict:
    """Host, command line and date, for the report."""
    import torch

    return {
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            **cpu_facts(),
        },
        "command": " ".join(["python -m", running_benchmark(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(report: dict, prefix: str, device: str, model: str, out: Path | None) -> Path:
    """Write the report to `out`, or to .results/PREFIX-DEVICE-MODEL.json (git-ignored)."""
    name = f"{prefix}-{device}-{model.replace(':', '-').replace('/', '_')}.json"
    path = out or LOCAL_RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {path}")
    return path


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_tree(root: int) -> dict[int, list[str]]:
    """`root` and its live descendants: pid -> the fields of /proc/PID/stat after the name."""
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                stats[int(entry)] = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
    members = {root}
    grew = True
    while grew:
        grew = False
        for pid, fields in stats.items():
            if int(fields[1]) in members and pid not in members:
                members.add(pid)
                grew = True
    return {pid: stats[pid] for pid in members if pid in stats}


def tree_rss_bytes(root: int) -> int | None:
    """RSS of `root` and its live descendants together (a producer and its reader)."""
    sizes = [rss_bytes(pid) for pid in process_tree(root)]
    known = [size for size in sizes if size is not None]
    return sum(known) if known else None


def reset_peak() -> int:
    """Reset this process's RSS high-water mark (Linux: clear_refs 5); its RSS now."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return rss_bytes(os.getpid()) or 0


def peak_since_reset() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
