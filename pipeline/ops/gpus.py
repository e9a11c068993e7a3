"""How many GPUs this process may use, found without initialising CUDA (an autoscaler or a
worker's main process must not hold a CUDA context): the NVIDIA driver's GPUs, narrowed by
CUDA_VISIBLE_DEVICES as CUDA narrows them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


def gpu_free_bytes(
    device: str, environ: Mapping[str, str] = os.environ, nvml: Any = None
) -> int | None:
    """Free memory of CUDA device `device` (an index in this process's view) from NVML, or
    None where it cannot be known (no driver, no NVML). The index goes through
    CUDA_VISIBLE_DEVICES as `m3pipe worker` pins it; a UUID entry is looked up by UUID, an
    index by NVML's index (CUDA's order where CUDA_DEVICE_ORDER=PCI_BUS_ID, as compose and
    k8s set it)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    entries = [part.strip() for part in visible.split(",")] if visible is not None else None
    try:
        entry = entries[int(device)] if entries is not None else device
        if nvml is None:
            import pynvml as nvml  # type: ignore[no-redef]
        nvml.nvmlInit()
        if entry.startswith(("GPU-", "MIG-")):
            handle = nvml.nvmlDeviceGetHandleByUUID(entry)
        else:
            handle = nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return int(nvml.nvmlDeviceGetMemoryInfo(handle).free)
    except Exception:
        return None
