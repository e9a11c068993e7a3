"""Host buffers: private maps in 4 KiB pages that a forked child does not inherit."""

from __future__ import annotations

import os

import numpy as np

from pipeline.engine.host_memory import anonymous_pages
from pipeline.engine.recycled import RecycledBuffers


def _mapping_at(start: int, smaps: str) -> dict[str, str] | None:
    """The /proc/PID/smaps fields of the mapping that begins at `start`, or None."""
    found: dict[str, str] | None = None
    for line in smaps.splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            found = {"perms": line.split()[1]} if int(head.split("-")[0], 16) == start else None
        elif found is not None and ":" in line:
            key, _, value = line.partition(":")
            found[key.strip()] = value.strip()
            if key.strip() == "VmFlags":
                return found
    return found


def _own_mapping(array: np.ndarray) -> dict[str, str]:
    with open("/proc/self/smaps") as smaps:
        found = _mapping_at(int(array.__array_interface__["data"][0]), smaps.read())
    assert found is not None
    return found


def test_host_buffers_are_private_small_pages_not_copied_on_fork():
    array = np.frombuffer(anonymous_pages(8 << 20), np.uint8)
    array[:] = 1
    mapping = _own_mapping(array)
    assert mapping["perms"].endswith("p")  # private, not the kernel's shared memory
    flags = mapping["VmFlags"].split()
    assert "nh" in flags  # no transparent huge pages
    assert "dc" in flags  # "do not copy on fork"


def test_a_pool_buffer_is_not_inherited_by_a_forked_child():
    buffers = RecycledBuffers(keep=1)
    array = buffers.empty((4 << 20,), np.uint8)
    array[:] = 1
    start = int(array.__array_interface__["data"][0])
    child = os.fork()
    if child == 0:  # the child looks for the mapping in its own address space
        with open("/proc/self/smaps") as smaps:
            os._exit(0 if _mapping_at(start, smaps.read()) is None else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
