"""`m3pipe_gpu_utilization_ratio`: how busy the worker's GPU is, read through NVML
(nvidia-ml-py) each time Prometheus scrapes. Absent on a machine without NVML or a GPU.

NVML numbers GPUs by PCI bus and ignores CUDA_VISIBLE_DEVICES, while CUDA numbers them
fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID: on a box of mixed GPUs the two indexes
differ. So the worker's GPU (CUDA's device 0 in its process: `m3pipe worker --device N`
pins it) is found by its UUID: the one CUDA_VISIBLE_DEVICES names, else the one torch
reports for the device; by index only where CUDA_DEVICE_ORDER=PCI_BUS_ID makes the two
agree. Otherwise no gauge, said in the log, rather than another GPU's figures.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

METRIC = "m3pipe_gpu_utilization_ratio"


class GpuUtilization(Collector):
    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml, self._handle = nvml, handle

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            METRIC, "Share of the last sample period the GPU was running kernels (NVML)"
        )
        try:
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        except Exception as exc:  # a GPU fallen off the bus: no sample, not a failed scrape
            log.warning("NVML utilisation not read: %s", exc)
            return
        gauge.add_metric([], rates.gpu / 100.0)
        yield gauge


def cuda_device_uuid() -> str | None:
    """NVML's name (GPU-...) of CUDA's device 0 in this process, or None if torch cannot
    tell (no CUDA, or a build whose device properties carry no UUID)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
    except Exception:
        return None
    if uuid is None:
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def visible_gpu(nvml: Any, visible: str | None, uuid: str | None) -> Any:
    """The NVML handle of CUDA's device 0 here: the UUID CUDA_VISIBLE_DEVICES names first,
    else `uuid` (torch's), else the index where CUDA_DEVICE_ORDER=PCI_BUS_ID; LookupError
    when nothing says which NVML device it is."""
    first = (visible or "0").split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(first)
    if uuid is not None:
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    if os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
        return nvml.nvmlDeviceGetHandleByIndex(int(first))
    raise LookupError(
        f"CUDA device {first} has no UUID from torch and CUDA_DEVICE_ORDER is not "
        "PCI_BUS_ID: its NVML index may be another GPU's"
    )


def register_gpu_utilization(
    registry: CollectorRegistry,
    nvml: Any = None,
    device_uuid: Callable[[], str | None] = cuda_device_uuid,
) -> bool:
    """Add the gauge to `registry` when NVML finds the worker's GPU; False (no gauge) on a
    machine without NVML, without a GPU, with CUDA_VISIBLE_DEVICES hiding every GPU, or
    when nothing says which NVML device the worker's GPU is."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        if nvml is None:
            nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        handle = visible_gpu(nvml, visible, device_uuid())
    except LookupError as exc:
        log.warning("no GPU utilisation gauge: %s", exc)
        return False
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, no such device...
        log.debug("no GPU utilisation gauge: %s", exc)
        return False
    registry.register(GpuUtilization(nvml, handle))
    return True
