"""Where a model's files come from: `random:SIZE` and `stub:SIZE` built in a cache, a local
directory, or the Hugging Face hub (its local cache first, then a download with a deadline);
with the device and compute dtype it will run on."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.engine.fingerprint import fingerprint_model_dir
from pipeline.engine.precision import precision_advice, resolve_device, resolve_dtype
from pipeline.engine.random_model import cached_random_model, parse_random_spec
from pipeline.engine.stub_model import cached_stub_dir, parse_stub_spec
from pipeline.errors import ModelLoadError

log = logging.getLogger(__name__)


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
