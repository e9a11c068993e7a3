"""Where bf16's sparse error comes from, and what each way of reducing it buys.

bf16's dense and ColBERT outputs agree with fp32's to >= 0.9999 cosine on `random:full`,
but its sparse weights do not reach the 0.95 weighted Jaccard bar (docs/engine.md,
"Precision"). This study encodes a corpus once in fp32 (the reference) and then in bf16
variants that keep more of the model in fp32, one text at a time, and reports for each:
the agreement figures bench_engine reports, the hidden states' relative error, the sparse
logits' error in units of their spread, and the seconds it took (one text per call, after
an untimed pass: a comparison between variants, not the engine's speed). It also reports
what makes the reference sensitive: how much of each token's hidden state is the direction
all tokens share, and where the sparse logits sit against relu's threshold.

    python -m benchmarks.study_sparse_precision --model random:full --docs 24
    python -m benchmarks.study_sparse_precision --model random:full --attention sdpa

Variants (each a bf16 model as m3pipe loads it, then changed):
  bf16                    as the engine runs it
  bf16+fp32-head          the sparse and ColBERT heads in fp32, on bf16 hidden states
  bf16+fp32-residual      + embeddings, layer norms and the residual stream in fp32; the
                          matmuls stay bf16 (torch.autocast)
  bf16+fp32-residual+ffn  + both feed-forward matmuls in fp32 (2/3 of the matmul FLOPs)
  fp32-on-bf16-weights    all arithmetic in fp32, on the weights bf16 rounded: what the
                          rounding of the weights alone costs
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import run_facts, save

VARIANTS = (
    "bf16",
    "bf16+fp32-head",
    "bf16+fp32-residual",
    "bf16+fp32-residual+ffn",
    "fp32-on-bf16-weights",
)


def _in_fp32(module: Any, exact: Any, autocast_off: bool = False) -> None:
    """Give `module` the fp32 weights of `exact` (the same module of the fp32 model: a bf16
    weight cast back up stays rounded); with `autocast_off`, it also computes in fp32
    whatever autocast says."""
    import torch

    module.float().load_state_dict(exact.state_dict())
    if not autocast_off:
        return
    forward = module.forward

    @functools.wraps(forward)
    def fp32_forward(*args: Any, **kwargs: Any) -> Any:
        def up(x: Any) -> Any:
            return x.float() if torch.is_tensor(x) and x.is_floating_point() else x

        with torch.autocast("cpu", enabled=False):
            return forward(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})

    module.forward = fp32_forward


def prepare(model: Any, variant: str, exact: Any) -> Callable[[], AbstractContextManager[Any]]:
    """Change a bf16 model into `variant`, taking fp32 weights from `exact` (the same model
    loaded in fp32); returns the context each forward runs in."""
    import torch

    model.encoder.pooler = None  # unused by m3pipe; its bf16 matmul would meet fp32 states
    if variant == "bf16":
        return nullcontext
    if variant == "fp32-on-bf16-weights":
        model.encoder.float()
        model.sparse_linear.float()
        model.colbert_linear.float()
        return nullcontext
    _in_fp32(model.sparse_linear, exact.sparse_linear)
    _in_fp32(model.colbert_linear, exact.colbert_linear)
    if variant == "bf16+fp32-head":
        return nullcontext
    exact_modules = dict(exact.encoder.named_modules())
    for name, module in model.encoder.named_modules():
        if name == "embeddings" or isinstance(module, torch.nn.LayerNorm):
            _in_fp32(module, exact_modules[name])
    if variant == "bf16+fp32-residual+ffn":
        for i, layer in enumerate(model.encoder.encoder.layer):
            _in_fp32(layer.intermediate, exact_modules[f"encoder.layer.{i}.intermediate"], True)
            _in_fp32(layer.output.dense, exact_modules[f"encoder.layer.{i}.output.dense"], True)
    return functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)


def encode(
    model: Any, texts: list[list[int]], context: Callable[[], AbstractContextManager[Any]]
) -> Iterator[dict[str, Any]]:
    """Per text: last hidden states, sparse logits, and the three outputs (m3pipe's rules:
    dense = normalised CLS, ColBERT = normalised projections of the tokens after CLS,
    sparse = max relu weight per token id, special tokens dropped)."""
    import torch
    import torch.nn.functional as F

    unused = set(model.unused_token_ids)
    for ids in texts:
        with torch.inference_mode(), context():
            hidden = model.encoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
            head = model.sparse_linear.weight.dtype
            logits = model.sparse_linear(hidden.to(head)).squeeze(-1).float()
            colbert = F.normalize(model.colbert_linear(hidden[1:].to(head)).float(), dim=-1)
        sparse: dict[int, float] = {}
        for token, weight in zip(ids, torch.relu(logits).tolist(), strict=True):
            if weight > 0 and token not in unused:
                sparse[token] = max(sparse.get(token, 0.0), weight)
        yield {
            "hidden": hidden.float(),
            "logits": logits,
            "dense": F.normalize(hidden[0].float(), dim=-1).numpy(),
            "colbert": colbert.numpy(),
            "sparse": sparse,
        }


def sensitivity(reference: list[dict[str, Any]]) -> dict[str, float]:
    """How close to relu's threshold the reference's sparse weights are made."""
    import torch

    hidden = torch.cat([r["hidden"] for r in reference])
    logits = torch.cat([r["logits"] for r in reference])
    token_norm = float(hidden.norm(dim=-1).mean())
    return {
        "hidden_norm_per_token": round(token_norm, 4),
        "shared_direction_share": round(float(hidden.mean(0).norm()) / token_norm, 4),
        "sparse_logit_mean": round(float(logits.mean()), 5),
        "sparse_logit_std": round(float(logits.std()), 5),
        "sparse_kept_share": round(float((logits > 0).float().mean()), 4),
    }


def compare(reference: list[dict[str, Any]], side: list[dict[str, Any]]) -> dict[str, float]:
    from pipeline.engine.agreement import agreement

    figures = agreement(
        (np.stack([r["dense"] for r in reference]), np.stack([s["dense"] for s in side])),
        ([r["colbert"] for r in reference], [s["colbert"] for s in side]),
        ([r["sparse"] for r in reference], [s["sparse"] for s in side]),
    ).as_dict()
    hidden = [
        float((s["hidden"] - r["hidden"]).norm() / r["hidden"].norm())
        for r, s in zip(reference, side, strict=True)
    ]
    spread = float(np.std(np.concatenate([r["logits"].numpy() for r in reference])))
    logit = [
        float((s["logits"] - r["logits"]).abs().mean()) / spread
        for r, s in zip(reference, side, strict=True)
    ]
    figures.update(
        hidden_relative_error_mean=round(float(np.mean(hidden)), 5),
        sparse_logit_error_over_std=round(float(np.mean(logit)), 5),
    )
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:full")
    parser.add_argument("--docs", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--attention", choices=("fused", "sdpa"), default="fused",
        help="bf16 attention on CPU: m3pipe's fused kernel, or PyTorch's SDPA",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")

    from pipeline.engine import cpu_attention

    if args.attention == "sdpa":
        os.environ[cpu_attention.ENV] = "sdpa"
    from pipeline.engine.model import load_model
    from pipeline.settings import Settings
    from pipeline.testing.corpora import lognormal_texts

    def load(precision: str) -> Any:
        return load_model(
            args.model, device="cpu", precision=precision, cache_dir=Settings().cache_dir
        )

    fp32 = load("fp32")
    fp32.encoder.pooler = None
    texts = lognormal_texts(fp32.tokenizer, args.docs, 0, args.seed)
    ids = [
        fp32.tokenizer(t, truncation=True, max_length=args.max_length)["input_ids"] for t in texts
    ]
    reference = list(encode(fp32, ids, nullcontext))
    report: dict[str, Any] = {
        **run_facts(),
        "model": args.model,
        "attention": args.attention,
        "corpus": {
            "docs": len(ids),
            "tokens": sum(map(len, ids)),
            "max_tokens": max(map(len, ids)),
        },
        "reference": sensitivity(reference),
        "variants": {},
    }
    print(f"{report['corpus']}\nfp32 reference: {report['reference']}")
    for variant in variants:
        model = load("bf16")
        context = prepare(model, variant, fp32)
        # Untimed first pass: the fused attention compiles per shape, and a shape's first
        # call runs unfused (other rounding), so every variant is measured on its second.
        for _ in encode(model, ids, context):
            pass
        start = time.perf_counter()
        side = list(encode(model, ids, context))
        figures = {"seconds": round(time.perf_counter() - start, 4), **compare(reference, side)}
        report["variants"][variant] = figures
        print(
            f"{variant:24s} {figures['seconds']:7.2f} s  sparse Jaccard mean "
            f"{figures['sparse_jaccard_mean']:.4f} min {figures['sparse_jaccard_min']:.4f}  "
            f"hidden error {figures['hidden_relative_error_mean']:.4f}  logit error/std "
            f"{figures['sparse_logit_error_over_std']:.4f}  dense cosine min "
            f"{figures['dense_cosine_min']:.5f}"
        )
    suffix = "" if args.attention == "fused" else "-sdpa"
    save(report, "sparse-precision" + suffix, "cpu", args.model, args.out)
    return report


if __name__ == "__main__":
    main()
