"""Loading bge-m3 the way FlagEmbedding loads it, from a path, a hub name or random:SIZE."""

from __future__ import annotations

import functools
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.engine import cpu_attention, cpu_linear, cuda_attention
from pipeline.engine.fingerprint import fingerprint_model_dir
from pipeline.engine.random_model import cached_random_model, parse_random_spec
from pipeline.engine.stub_model import STUB_PREFIX, cached_stub_dir, parse_stub_spec, stub_parts
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


# CPU instruction sets that multiply bf16 natively: oneDNN then runs bf16 matmuls at several
# times the fp32 rate. Without one, bf16 is emulated and slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags this CPU reports (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(
    device: torch.device, precision: str | None, reranker: bool = False
) -> torch.dtype:
    """auto: fp16 on CUDA (FlagEmbedding's own default there); on a CPU that multiplies bf16
    natively (AMX, AVX512-BF16) bf16 for embedding, which kept dense and ColBERT within a
    cosine of 2e-4 of fp32 and sparse weights at a weighted Jaccard of 0.99 on the trained
    proxy (docs/engine.md, "Precision"); fp32 elsewhere, and for the reranker, whose bf16
    accuracy is not measured on trained weights. fp32 is the FlagEmbedding-exact mode."""
    if precision in (None, "auto"):
        if device.type == "cuda":
            return torch.float16
        native = bool(cpu_flags() & NATIVE_BF16_FLAGS)
        return torch.bfloat16 if native and not reranker else torch.float32
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if device.type == "cpu" and precision == "fp16":
        raise ModelLoadError("fp16 is not supported on CPU: use fp32 (default) or bf16")
    return PRECISIONS[precision]


def precision_advice(device: torch.device, dtype: torch.dtype) -> str | None:
    """What to tell a user about this CPU and precision, or None."""
    if device.type != "cpu":
        return None
    native = bool(cpu_flags() & NATIVE_BF16_FLAGS)
    if dtype == torch.bfloat16 and not native:
        return (
            "this CPU has no native bf16 matmul (AMX or AVX512-BF16): bf16 is emulated and "
            "slower than fp32 here"
        )
    if dtype == torch.float32 and native:
        return (
            "this CPU multiplies bf16 natively: --precision bf16 runs faster (1.8x fp32 on "
            "an AMD EPYC with AVX512-BF16; auto's choice for embedding here; fp32 is the "
            "FlagEmbedding-exact mode: docs/engine.md)"
        )
    return None


def _download_with_deadline(repo_id: str, timeout: float) -> Path:
    """snapshot_download, giving up after `timeout` seconds with advice on what to do."""
    from huggingface_hub import snapshot_download

    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["path"] = snapshot_download(
                repo_id=repo_id,
                ignore_patterns=["flax_model.msgpack", "rust_model.ot", "tf_model.h5", "onnx/*"],
            )
        except Exception as exc:
            result["error"] = exc

    # A daemon thread: a hung connection must not keep the process alive at exit.
    thread = threading.Thread(target=target, name="hub-download", daemon=True)
    thread.start()
    thread.join(timeout)
    advice = (
        f"model {repo_id!r} is not in the local Hugging Face cache and the hub could not be "
        f"reached. Download it on a machine with access (`hf download {repo_id} "
        f"--local-dir DIR`), copy DIR here and pass --model DIR (or set M3PIPE_MODEL=DIR); "
        f"for tests and speed work use --model random:small."
    )
    if thread.is_alive():
        raise ModelLoadError(f"timed out after {timeout:.0f}s: {advice}")
    if "error" in result:
        raise ModelLoadError(f"{type(result['error']).__name__}: {advice}") from result["error"]
    return Path(result["path"])


def resolve_model_path(
    spec: str, cache_dir: Path, hub_timeout: float, reranker: bool = False
) -> tuple[Path, str | None]:
    """The local directory of a model spec, and the hub revision when it came from the hub.

    `random:SIZE` names a random embedder, or a random cross-encoder when `reranker`.
    """
    size = parse_random_spec(spec)
    if size is not None:
        return cached_random_model(size, cache_dir, reranker=reranker), None
    stub = parse_stub_spec(spec)
    if stub is not None:
        if reranker:
            raise ModelLoadError(f"{spec} is a stand-in embedder: there is no stub reranker")
        return cached_stub_dir(stub, cache_dir), None
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is not a model directory (no config.json)")
        return local, None
    if spec.count("/") != 1 or spec.startswith(("/", ".")):
        raise ModelLoadError(f"model {spec!r}: no such directory, and not a hub name (org/name)")
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id=spec, local_files_only=True))
    except Exception:
        path = _download_with_deadline(spec, hub_timeout)
    # Hub snapshots live under .../snapshots/<commit hash>.
    return path, path.name


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and where it runs: what every loader resolves first."""

    spec: str
    path: Path
    revision: str | None
    device: torch.device
    dtype: torch.dtype
    cache_dir: Path | None = None  # where file digests are kept between runs

    def identity(self) -> dict[str, Any]:
        """The LoadedModel fields besides the tokenizer."""
        return {
            "spec": self.spec,
            "path": self.path,
            "revision": self.revision,
            "fingerprint": fingerprint_model_dir(self.path, self.cache_dir),
            "device": self.device,
            "dtype": self.dtype,
        }


def locate_model(
    spec: str,
    *,
    device: str | None,
    precision: str | None,
    cache_dir: Path,
    hub_timeout: float,
    reranker: bool = False,
) -> ModelSource:
    """The model's files (downloaded if need be), device and compute dtype."""
    path, revision = resolve_model_path(spec, cache_dir, hub_timeout, reranker=reranker)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(torch_device, precision, reranker=reranker)
    advice = precision_advice(torch_device, dtype)
    if advice is not None:
        # A slow choice is a warning; a faster option is information.
        level = logging.WARNING if dtype == torch.bfloat16 else logging.INFO
        log.log(level, advice)
    return ModelSource(spec, path, revision, torch_device, dtype, cache_dir)


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
