"""`m3pipe_gpu_utilization_ratio`: how busy the worker's GPU is, read through NVML
(nvidia-ml-py) each time Prometheus scrapes. Absent on a machine without NVML or a GPU.

NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES: the worker's GPU is the
first entry of CUDA_VISIBLE_DEVICES (an index or a GPU-... UUID; `m3pipe worker --device N`
sets it), else device 0 (a container given one GPU sees it as 0).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
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


def visible_gpu(nvml: Any, visible: str | None) -> Any:
    """The NVML handle of the first GPU CUDA_VISIBLE_DEVICES names (device 0 if unset)."""
    first = (visible or "0").split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(first)
    return nvml.nvmlDeviceGetHandleByIndex(int(first))


def register_gpu_utilization(registry: CollectorRegistry, nvml: Any = None) -> bool:
    """Add the gauge to `registry` when NVML finds the worker's GPU; False (no gauge) on a
    machine without NVML, without a GPU, or with CUDA_VISIBLE_DEVICES hiding every GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    try:
        if nvml is None:
            nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        handle = visible_gpu(nvml, visible)
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, no such device...
        log.debug("no GPU utilisation gauge: %s", exc)
        return False
    registry.register(GpuUtilization(nvml, handle))
    return True
