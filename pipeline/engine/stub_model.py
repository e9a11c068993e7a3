"""`stub:SIZE`: a stand-in for the encoder, for measuring everything around it.

A capacity test, never a model: its vectors mean nothing. The tokenizer is the random
model's of that size (so `n_tokens`, batching and truncation are real), and the outputs have
bge-m3's exact shapes (`stub:full`: 1024-dim dense, sparse weights over the vocabulary,
1024-dim ColBERT vectors per token), deterministic per text. The "encoder" costs almost
nothing (a row of a fixed table per token id), so a run measures the host's ceiling:
reading, tokenizing, assembling, writing and the queue's bookkeeping.
`M3PIPE_STUB_TOKENS_PER_SECOND` makes each forward pass take as long as a device of that
rate would (an H200 does ~730k tokens/s at 512-token documents, docs/engine.md), to see
whether the host keeps up with it. The emulated device runs beside the host, as a GPU
does: a batch's outputs are waited for when the engine takes them, and the host places
the previous batch meanwhile.

An operator runs it before adding GPUs: `m3pipe encode corpus.jsonl --model stub:full`.
Every output says `stub: true` in its metadata and manifest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch
import torch.nn.functional as F

from pipeline.engine.random_model import SHAPES, built_once, train_tokenizer
from pipeline.engine.recycled import RecycledBuffers
from pipeline.errors import ModelLoadError

STUB_PREFIX = "stub:"
STUB_BUILD_VERSION = 2  # 2: hidden states from a table (its vectors changed)
RATE_ENV = "M3PIPE_STUB_TOKENS_PER_SECOND"
TABLE_ROWS = 4096  # distinct hidden states: token ids share them modulo this


def parse_stub_spec(spec: str) -> str | None:
    """'stub:full' -> 'full'; None when the spec is not a stub."""
    if not spec.startswith(STUB_PREFIX):
        return None
    size = spec[len(STUB_PREFIX) :]
    if size not in SHAPES:
        raise ModelLoadError(f"unknown stub size {size!r}: choose one of {', '.join(SHAPES)}")
    return size


def cached_stub_dir(size: str, cache_dir: Path) -> Path:
    """A directory with the stub's tokenizer and a description of its shape, built once."""
    shape = SHAPES[size]

    def build(directory: Path) -> None:
        train_tokenizer(shape.tokenizer_vocab).save_pretrained(directory)
        info = {
            "stub": True,
            "size": size,
            "hidden": shape.hidden,
            "vocab_size": shape.vocab_size,
            "build_version": STUB_BUILD_VERSION,
            "note": "a stand-in encoder for capacity tests: its vectors mean nothing",
        }
        (directory / "m3pipe_stub_model.json").write_text(json.dumps(info, indent=2))

    target = Path(cache_dir) / "models" / f"stub-{size}-v{STUB_BUILD_VERSION}"
    return built_once(target, "m3pipe_stub_model.json", build)


class StubEncoder(torch.nn.Module):
    """`last_hidden_state[b, t] = table[id % 4096]`, with `table[i] = sin(i * f + p)`:
    deterministic per token, the shape of the real encoder's output, a gather at memory
    speed; optionally as slow as a device of a given rate."""

    def __init__(self, hidden: int, vocab_size: int, tokens_per_second: float = 0.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        freq = torch.rand(hidden, generator=generator) * 0.37 + 0.01
        phase = torch.rand(hidden, generator=generator) * 6.28
        rows = torch.arange(TABLE_ROWS, dtype=torch.float32).unsqueeze(-1)
        self.register_buffer("table", torch.sin(rows * freq + phase))
        self.tokens_per_second = tokens_per_second
        self.config = SimpleNamespace(
            hidden_size=hidden, vocab_size=vocab_size, _attn_implementation="stub"
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: Any = None, return_dict: bool = True
    ) -> SimpleNamespace:
        started = time.perf_counter()
        table = cast(torch.Tensor, self.table)
        hidden = F.embedding(input_ids % TABLE_ROWS, table)
        if self.tokens_per_second > 0:
            left = input_ids.numel() / self.tokens_per_second - (time.perf_counter() - started)
            if left > 0:
                time.sleep(left)
        return SimpleNamespace(last_hidden_state=hidden)


class StubHeads(torch.nn.Module):
    """What the stub's encoder and heads hand the host, read from tables: the same values
    (dense and ColBERT vectors are the table's rows L2-normalised, sparse weights the sparse
    head over them), at the cost of one gather per output. A capacity test measures the
    host; on a GPU the encoder and heads are the device's work."""

    def __init__(self, encoder: StubEncoder, sparse: torch.nn.Linear) -> None:
        super().__init__()
        table = cast(torch.Tensor, encoder.table)
        with torch.no_grad():
            unit = F.normalize(table, dim=-1)
            weights = torch.relu(sparse(table.to(sparse.weight.dtype))).squeeze(-1).float()
        self.register_buffer("unit", unit)
        self.register_buffer("weights", weights)
        self.tokens_per_second = encoder.tokens_per_second
        self._device_free_at = 0.0  # perf_counter time the emulated device is free again
        self.ready_at: float | None = None
        self._stored: dict[torch.dtype, torch.Tensor] = {}
        # A device hands its outputs over in pinned memory that is used again batch after
        # batch; on a CPU the stub's ColBERT vectors likewise (two batches in flight at most).
        self._host = RecycledBuffers(keep=3)

    def outputs(
        self, ids: torch.Tensor, modes: tuple[Any, ...], store: torch.dtype
    ) -> dict[str, torch.Tensor]:
        from schemas.options import Mode

        started = time.perf_counter()
        if store not in self._stored:
            self._stored[store] = cast(torch.Tensor, self.unit).to(store)
        unit, rows = self._stored[store], ids % TABLE_ROWS
        out = {}
        if Mode.DENSE in modes:
            out["dense"] = F.embedding(rows[:, 0], unit)
        if Mode.SPARSE in modes:
            out["sparse_weights"] = cast(torch.Tensor, self.weights)[rows]
        if Mode.COLBERT in modes:
            tokens = rows[:, 1:]
            if unit.device.type == "cpu":  # straight into a host buffer used again
                host = torch.from_numpy(
                    self._host.empty(
                        (tokens.numel(), unit.shape[1]), torch.empty(0, dtype=store).numpy().dtype
                    )
                )
                colbert = torch.index_select(unit, 0, tokens.reshape(-1), out=host)
                out["colbert"] = colbert.view(*tokens.shape, unit.shape[1])
            else:  # on a device: the engine copies it to pinned memory, as a model's output
                out["colbert"] = F.embedding(tokens, unit)
        self._launch(ids.numel(), started)
        return out

    def _launch(self, tokens: int, started: float) -> None:
        """The batch on the emulated device (a rate set): it starts when the device is free
        and the call began, whichever is later, and runs `tokens / rate` seconds."""
        if self.tokens_per_second > 0:
            begins = max(started, self._device_free_at)
            self._device_free_at = begins + tokens / self.tokens_per_second
            self.ready_at = self._device_free_at

    def take_ready_at(self) -> float | None:
        """When the last batch launched is done on the emulated device (perf_counter time),
        for the engine to wait on as it waits on a CUDA event; None without a rate. The
        host goes on meanwhile (placing the previous batch), as it does beside a GPU."""
        ready, self.ready_at = self.ready_at, None
        return ready


def stub_parts(size: str, dtype: torch.dtype) -> dict[str, Any]:
    """The encoder and heads of a stub: the ColBERT head passes the hidden state through
    (no GEMM: the ceiling is the host's), the sparse head is a fixed random projection that
    keeps about half of the tokens, as bge-m3's does for ordinary text; `stub_heads` reads
    what they compute from tables."""
    shape = SHAPES[size]
    rate = float(os.environ.get(RATE_ENV) or 0.0)
    encoder = StubEncoder(shape.hidden, shape.vocab_size, rate).to(dtype)
    sparse = torch.nn.Linear(shape.hidden, 1, dtype=dtype)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        weight = torch.randn(1, shape.hidden, generator=generator) / shape.hidden**0.5
        sparse.weight.copy_(weight.to(dtype))
        sparse.bias.zero_()
    return {
        "model": encoder,
        "colbert_linear": torch.nn.Identity(),
        "sparse_linear": sparse,
        "stub_heads": StubHeads(encoder, sparse),
    }
