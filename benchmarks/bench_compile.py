"""torch.compile (inductor, weight freezing, one static shape) against eager, encoder only.

Runs the encoder of MODEL on random token ids of one batch shape per `--shapes` entry,
eager then compiled, in this process; reports seconds per batch, tokens/s, the compile time
(first call included), MFU against the matmul peak of the dtype measured in the same run,
and the largest difference of the hidden states. Saves JSON under benchmarks/.results/
(git-ignored) unless --out names a file.

    python -m benchmarks.bench_compile --model random:full --precision bf16 --shapes 8x512,1x4096
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.report import run_facts, save


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:full")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--shapes", default="8x512,1x4096", help="BATCHxLENGTH,...")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    import torch._inductor.config as inductor

    from benchmarks.mfu import matmul_peak, model_flops, peak_shapes
    from pipeline.engine.model import load_model
    from pipeline.settings import Settings

    model = load_model(
        args.model, device=args.device, precision=args.precision, cache_dir=Settings().cache_dir
    )
    encoder, config = model.encoder, model.encoder.config
    inductor.freezing = True  # weights become constants: prepacked for the CPU GEMMs
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def timed(run, ids, reps):
        with torch.inference_mode():
            sync()
            started = time.perf_counter()
            for _ in range(reps):
                out = run(input_ids=ids, return_dict=True).last_hidden_state
            sync()
        return (time.perf_counter() - started) / reps, out

    peak = matmul_peak(str(model.device), model.dtype, peak_shapes(config, 4096))
    results = []
    for shape in args.shapes.split(","):
        batch, length = (int(x) for x in shape.split("x"))
        ids = torch.randint(5, 1000, (batch, length), device=model.device)
        flops = model_flops(config, [length] * batch)
        timed(encoder, ids, 1)  # warm-up
        eager, reference = timed(encoder, ids, args.reps)
        started = time.perf_counter()
        compiled = torch.compile(encoder, dynamic=False)
        timed(compiled, ids, 1)
        compile_seconds = time.perf_counter() - started
        fast, out = timed(compiled, ids, args.reps)
        row = {
            "shape": shape,
            "eager_seconds": round(eager, 3),
            "eager_tokens_per_second": round(batch * length / eager, 1),
            "eager_mfu": round(flops / eager / 1e9 / peak["gflops"], 4),
            "compile_seconds": round(compile_seconds, 1),
            "compiled_seconds": round(fast, 3),
            "compiled_tokens_per_second": round(batch * length / fast, 1),
            "compiled_mfu": round(flops / fast / 1e9 / peak["gflops"], 4),
            "speedup": round(eager / fast, 3),
            "max_abs_difference": float((out.float() - reference.float()).abs().max()),
        }
        results.append(row)
        print(row, flush=True)
    report = {
        "benchmark": "bench_compile",
        "model": args.model,
        "precision": args.precision,
        "matmul_peak": peak,
        "shapes": results,
        "device": args.device,
        **run_facts(),
    }
    save(report, f"compile-{args.precision}", args.device, args.model, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
