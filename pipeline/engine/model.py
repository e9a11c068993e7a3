"""Loading bge-m3 the way FlagEmbedding loads it, from a path, a hub name or random:SIZE."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.engine import cpu_attention, cpu_linear, cuda_attention
from pipeline.engine.model_source import locate_model
from pipeline.engine.stub_model import STUB_PREFIX, parse_stub_spec, stub_parts
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LoadedModel:
    """What every loaded model (embedder or cross-encoder) has: tokenizer, place, identity."""

    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    spec: str
    path: Path
    revision: str | None
    fingerprint: str

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def describe(self) -> dict[str, object]:
        """Identity written into Parquet metadata and manifests."""
        return {
            "model": self.spec,
            "model_revision": self.revision,
            "model_fingerprint": self.fingerprint,
            "random_weights": self.spec.startswith("random:"),
            **({"stub": True} if self.spec.startswith(STUB_PREFIX) else {}),
            "compute_dtype": str(self.dtype).removeprefix("torch."),
        }


@dataclass(kw_only=True)
class M3Model(LoadedModel):
    """Everything the engine needs from a loaded bge-m3: modules, tokenizer and identity."""

    encoder: torch.nn.Module
    colbert_linear: torch.nn.Linear | None
    sparse_linear: torch.nn.Linear | None
    dense_dim: int
    colbert_dim: int
    vocab_size: int
    # cls, eos, pad and unk: dropped from sparse output, as FlagEmbedding does.
    unused_token_ids: tuple[int, ...] = field(default=())
    # `stub:SIZE` only: its outputs read from tables (pipeline/engine/stub_model.py).
    stub_heads: Any = None

    @property
    def cls_id(self) -> int:
        return int(self.tokenizer.cls_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "dense_dim": self.dense_dim, "colbert_dim": self.colbert_dim}

    @functools.cached_property
    def unused_ids_on_device(self) -> torch.Tensor:
        """`unused_token_ids` on the device, copied there once (not once a batch: a copy
        from pageable memory waits for the device)."""
        return torch.tensor(self.unused_token_ids, device=self.device)


def _check_tokenizer_template(tokenizer: Any) -> None:
    """The engine adds <s> ... </s> itself; make sure that is what this tokenizer does."""
    plain = tokenizer("m3pipe template check", add_special_tokens=False)["input_ids"]
    full = tokenizer("m3pipe template check")["input_ids"]
    expected = [tokenizer.cls_token_id, *plain, tokenizer.eos_token_id]
    if full != expected:
        raise ModelLoadError(
            "unsupported tokenizer: single texts are not encoded as <s> text </s> "
            "(bge-m3 / XLM-RoBERTa layout expected)"
        )


def m3_parts(path: Path, dtype: torch.dtype) -> dict[str, Any]:
    """FlagEmbedding's M3 loading (`EncoderOnlyEmbedderM3Runner.get_model`), step for step,
    without importing FlagEmbedding: its package import pulls every model family it has and
    breaks with some transformers releases. The parity tests compare against FlagEmbedding.
    """
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), dtype=dtype)
    hidden = int(model.config.hidden_size)
    colbert_file, sparse_file = path / "colbert_linear.pt", path / "sparse_linear.pt"
    colbert_state = sparse_state = None
    if colbert_file.is_file() and sparse_file.is_file():
        colbert_state = torch.load(colbert_file, map_location="cpu", weights_only=True)
        sparse_state = torch.load(sparse_file, map_location="cpu", weights_only=True)
    colbert_dim = int(colbert_state["weight"].shape[0]) if colbert_state else hidden
    colbert = torch.nn.Linear(hidden, colbert_dim, dtype=dtype)
    sparse = torch.nn.Linear(hidden, 1, dtype=dtype)
    if colbert_state is not None and sparse_state is not None:
        colbert.load_state_dict(colbert_state)
        sparse.load_state_dict(sparse_state)
    # else: freshly initialised heads, as FlagEmbedding does (dense-only use of an encoder)
    return {"model": model, "colbert_linear": colbert, "sparse_linear": sparse}


def install_cpu_linear(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """fp32 Linear layers through oneDNN where MKL's GEMM is slow (pipeline/engine/cpu_linear)."""
    if cpu_linear.wanted(device, dtype):
        cpu_linear.install(model)


def load_tokenizer(path: Path) -> Any:
    """AutoTokenizer's tokenizer for `path`. Where its config names the generic Rust backend
    (transformers 5's `TokenizersBackend`: the stand-in's and random models' tokenizers),
    that class is loaded directly, as AutoTokenizer would: resolving a name through
    AutoTokenizer first imports transformers' registry of every model (a stand-in's load
    took 0.43 s with it, 0.12 s without, on the 2-core VM: every worker's and `encode`'s
    start)."""
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        named = config.get("tokenizer_class") if isinstance(config, dict) else None
    except (OSError, ValueError):
        named = None  # AutoTokenizer says what is wrong, if anything is
    if named == "TokenizersBackend":
        try:
            from transformers import TokenizersBackend
        except ImportError:  # transformers 4 reading a tokenizer that 5 saved
            pass
        else:
            return TokenizersBackend.from_pretrained(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_model(
    spec: str,
    *,
    device: str | None = None,
    precision: str | None = None,
    cache_dir: Path,
    hub_timeout: float = 10.0,
    need_heads: bool = True,
) -> M3Model:
    """Load bge-m3 (or a random model of its architecture) as FlagEmbedding's loader does."""
    source = locate_model(
        spec, device=device, precision=precision, cache_dir=cache_dir, hub_timeout=hub_timeout
    )
    path = source.path
    stub = parse_stub_spec(spec)
    if (
        need_heads
        and stub is None
        and not ((path / "colbert_linear.pt").is_file() and (path / "sparse_linear.pt").is_file())
    ):
        raise ModelLoadError(
            f"{path} has no colbert_linear.pt / sparse_linear.pt: it is not a bge-m3 model "
            "(sparse and colbert outputs need them; use --modes dense for a plain encoder)"
        )
    try:
        tokenizer: Any = load_tokenizer(path)
        parts = stub_parts(stub, source.dtype) if stub else m3_parts(path, source.dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {path}: {exc}") from exc
    _check_tokenizer_template(tokenizer)

    encoder = parts["model"].to(source.device).eval()
    attn = getattr(encoder.config, "_attn_implementation", None)
    if stub is not None:
        pass  # no attention to speak of: the stand-in's cost is a gather per output
    elif attn != "sdpa":
        log.warning("encoder attention is %r, not sdpa: expect lower speed", attn)
    elif cpu_attention.wanted(source.device, source.dtype):
        cpu_attention.install(encoder)
    elif cuda_attention.wanted(source.device):
        cuda_attention.install(encoder)
    colbert = parts["colbert_linear"].to(source.device).eval()
    stub_heads = parts.get("stub_heads")
    if stub_heads is not None:
        stub_heads = stub_heads.to(source.device)
    sparse = parts["sparse_linear"].to(source.device).eval()
    for part in (encoder, colbert, sparse):
        install_cpu_linear(part, source.device, source.dtype)
    special = tokenizer.special_tokens_map
    unused = tuple(
        sorted(
            {
                int(tokenizer.convert_tokens_to_ids(special[name]))
                for name in ("cls_token", "eos_token", "pad_token", "unk_token")
                if name in special
            }
        )
    )
    return M3Model(
        encoder=encoder,
        colbert_linear=colbert,
        sparse_linear=sparse,
        tokenizer=tokenizer,
        **source.identity(),
        dense_dim=int(encoder.config.hidden_size),
        colbert_dim=int(getattr(colbert, "out_features", encoder.config.hidden_size)),
        vocab_size=int(encoder.config.vocab_size),
        unused_token_ids=unused,
        stub_heads=stub_heads,
    )
