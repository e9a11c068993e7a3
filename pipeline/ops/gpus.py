"""How many GPUs this process may use, found without initialising CUDA (an autoscaler or a
worker's main process must not hold a CUDA context): the NVIDIA driver's GPUs, narrowed by
CUDA_VISIBLE_DEVICES as CUDA narrows them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver sees


def visible_gpu_count(environ: Mapping[str, str] = os.environ, driver: Path = NVIDIA_GPUS) -> int:
    """The GPUs CUDA would number 0..n-1 here: the driver's, or the entries of
    CUDA_VISIBLE_DEVICES up to the first that is not a device (CUDA stops there)."""
    present = sum(1 for _ in driver.iterdir()) if driver.is_dir() else 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    count = 0
    for entry in (part.strip() for part in visible.split(",")):
        if entry.startswith(("GPU-", "MIG-")) or (entry.isdigit() and int(entry) < present):
            count += 1
        else:
            break
    return min(count, present)
