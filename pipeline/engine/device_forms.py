"""Compact forms computed where the vectors are made: int8 with a scale per vector and sign
bits, in torch, so a batch leaves the device already stored as the job asks (1/16 of the
bytes to copy for binary ColBERT) and the host only places them.

Bit for bit what pipeline/engine/compact_vectors.py (numpy) gives: the same float32
arithmetic, round-half-to-even (numpy's rint, torch's round), bits packed big-endian as
numpy.packbits, a last partial byte zero-padded (tests/pipeline/engine/test_compact_storage.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.engine import compact_vectors
from pipeline.engine.compact_vectors import INT8_LIMIT
from schemas.options import StorageDtype, VectorForm

_TORCH_FLOATS = {StorageDtype.FLOAT16: torch.float16, StorageDtype.FLOAT32: torch.float32}
_FIXED_FLOATS = {VectorForm.FLOAT16: StorageDtype.FLOAT16, VectorForm.FLOAT32: StorageDtype.FLOAT32}


@dataclass(frozen=True)
class DeviceForms:
    """How the heads' vectors leave the device: floats (`dtype`, or a width of their own),
    or quantised there."""

    dtype: StorageDtype
    dense: VectorForm = VectorForm.FLOAT
    colbert: VectorForm = VectorForm.FLOAT

    def floats_of(self, form: VectorForm) -> StorageDtype | None:
        """The float type a form stores; None for int8 and binary."""
        return self.dtype if form is VectorForm.FLOAT else _FIXED_FLOATS.get(form)

    @property
    def store(self) -> torch.dtype:
        """The float type the heads hand over: float32 if any output is kept in float32
        (so it is stored as computed), else `dtype`; apply_forms narrows the others."""
        wide = StorageDtype.FLOAT32 in (self.floats_of(self.dense), self.floats_of(self.colbert))
        return torch.float32 if wide else _TORCH_FLOATS[self.dtype]


# On a CPU, int8 codes are made a block of rows at a time: a batch's ColBERT vectors whole
# (32 x 511 x 1024, a 67 MB float32 working copy) sent each of its five steps to memory and
# back, 1.19 ms a 512-token document against 0.35 in 2 MiB blocks. A device takes it whole.
INT8_BLOCK_BYTES = 2 << 20


def int8_per_vector(
    values: torch.Tensor, block_bytes: int = INT8_BLOCK_BYTES
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [..., D], scales float32 [...]): values ~= codes * scales[..., None]."""
    rows = max(1, block_bytes // (4 * max(1, values.shape[-1])))
    if values.device.type != "cpu" or values.numel() <= rows * values.shape[-1]:
        return _int8_block(values)
    flat = values.reshape(-1, values.shape[-1])
    codes = torch.empty(flat.shape, dtype=torch.int8)
    scales = torch.empty(flat.shape[0], dtype=torch.float32)
    for start in range(0, len(flat), rows):
        codes[start : start + rows], scales[start : start + rows] = _int8_block(
            flat[start : start + rows]
        )
    return codes.view(values.shape), scales.view(values.shape[:-1])


def _int8_block(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # One float32 copy, worked in place (2.4x faster on a CPU than a new tensor a step);
    # max|v| as max(max v, -min v) reads the values without an abs() copy.
    codes = values.to(torch.float32, copy=True)
    scales = torch.maximum(codes.amax(dim=-1), codes.amin(dim=-1).neg()) / INT8_LIMIT
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes.div_(safe.unsqueeze(-1)).round_().clamp_(-INT8_LIMIT, INT8_LIMIT)
    return codes.to(torch.int8), scales


def sign_bits(values: torch.Tensor) -> torch.Tensor:
    """[..., ceil(D / 8)] uint8: bit set where the value is > 0, big-endian in each byte."""
    if values.device.type == "cpu":  # numpy, 3-6x faster than the sum below here
        return torch.from_numpy(compact_vectors.sign_bits(values.numpy()))
    return packed_by_sum(values)


def packed_by_sum(values: torch.Tensor) -> torch.Tensor:
    """sign_bits in torch ops alone, for any device: each byte a weighted sum of 8 bits."""
    bits = (values > 0).to(torch.uint8)
    pad = -values.shape[-1] % 8
    if pad:
        bits = F.pad(bits, (0, pad))
    # 128, 64, ..., 1, made on the device: a tensor made from host data is a copy that
    # waits for the device on CUDA (the engine launches a batch without waiting).
    weights = torch.arange(7, -1, -1, device=values.device).exp2().to(torch.uint8)
    return (bits.unflatten(-1, (-1, 8)) * weights).sum(dim=-1, dtype=torch.uint8)


def apply_forms(outputs: dict[str, torch.Tensor], forms: DeviceForms) -> None:
    """Replace `outputs`' dense and ColBERT floats by their forms (scales beside int8)."""
    for name, form in (("dense", forms.dense), ("colbert", forms.colbert)):
        if name not in outputs:
            continue
        floats = forms.floats_of(form)
        if floats is not None:
            outputs[name] = outputs[name].to(_TORCH_FLOATS[floats])  # a no-op when it is
        elif form is VectorForm.INT8:
            outputs[name], outputs[f"{name}_scales"] = int8_per_vector(outputs[name])
        else:
            outputs[name] = sign_bits(outputs[name])
