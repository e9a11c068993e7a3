"""A stand-in for pynvml (NVML needs an NVIDIA driver, which no CI machine has): the calls
m3pipe makes, with the answers a GPU would give."""

from __future__ import annotations

from types import SimpleNamespace


class FakeNvml:
    def __init__(
        self, utilization: int = 73, fail_after_init: bool = False, free: int = 50 << 30
    ) -> None:
        self.utilization = utilization
        self.free = free
        self.fail_after_init = fail_after_init
        self.handles: list[object] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        if index > 7:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        self.handles.append(("index", index))
        return ("index", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> object:
        self.handles.append(("uuid", uuid))
        return ("uuid", uuid)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
        if self.fail_after_init:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return SimpleNamespace(gpu=self.utilization, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> SimpleNamespace:
        return SimpleNamespace(free=self.free, total=80 << 30, used=(80 << 30) - self.free)
