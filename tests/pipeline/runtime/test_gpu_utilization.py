"""The GPU utilisation gauge: sampled through NVML at each scrape, absent without a GPU."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from pipeline.runtime.gpu_utilization import METRIC, register_gpu_utilization
from tests.fake_nvml import FakeNvml


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_no_gpu_no_gauge(monkeypatch):
    """The real pynvml on this machine: no NVML library, so no gauge and no error."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    registry = CollectorRegistry()
    assert register_gpu_utilization(registry) is False
    assert METRIC not in scrape(registry)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # every GPU hidden
    assert register_gpu_utilization(registry, FakeNvml()) is False


def no_uuid() -> None:
    return None


def test_the_gauge_reads_the_workers_own_gpu_at_each_scrape(monkeypatch):
    nvml = FakeNvml(utilization=73)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # `m3pipe worker --device 3`
    torch_says = "GPU-aaaa0000-0000-1111-2222-333344445555"
    registry = CollectorRegistry()
    assert register_gpu_utilization(registry, nvml, device_uuid=lambda: torch_says)
    assert f"{METRIC} 0.73" in scrape(registry)
    nvml.utilization = 5
    assert f"{METRIC} 0.05" in scrape(registry)  # read when scraped, not when registered
    # By the UUID torch gives for the pinned device, never NVML's index 3: on a box of
    # mixed GPUs CUDA's order (fastest first) is not NVML's (PCI bus) (issue 29, item 4).
    assert nvml.handles == [("uuid", torch_says)]
    uuid = "GPU-5b8c0c1e-0000-1111-2222-333344445555"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{uuid},GPU-other")
    assert register_gpu_utilization(CollectorRegistry(), nvml, device_uuid=no_uuid)
    assert nvml.handles[-1] == ("uuid", uuid)


def test_by_index_only_where_cuda_numbers_gpus_as_nvml_does(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert register_gpu_utilization(CollectorRegistry(), nvml, device_uuid=no_uuid) is False
    assert nvml.handles == []  # no gauge rather than another GPU's figures
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert register_gpu_utilization(CollectorRegistry(), nvml, device_uuid=no_uuid)
    assert nvml.handles == [("index", 3)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "9")  # no such GPU
    assert register_gpu_utilization(CollectorRegistry(), nvml, device_uuid=no_uuid) is False


def test_a_lost_gpu_drops_the_sample_not_the_scrape(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    registry = CollectorRegistry()
    assert register_gpu_utilization(
        registry, FakeNvml(fail_after_init=True), device_uuid=lambda: "GPU-x"
    )
    text = scrape(registry)  # no exception
    assert f"{METRIC} " not in text
