"""Part files written around the page cache (O_DIRECT): the same bytes as a plain write,
whatever the sizes of the writes, and the same bytes where O_DIRECT is refused."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.storage import direct_file
from pipeline.storage.direct_file import BLOCK, DirectFile


def _takes_o_direct(directory) -> bool:
    """Whether this file system opens a file with O_DIRECT at all."""
    if not getattr(os, "O_DIRECT", 0):
        return False
    probe = directory / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


def _write(path, pieces, stage_bytes, flush_every=0):
    expected = bytearray()
    with DirectFile(path, stage_bytes=stage_bytes) as handle:
        for number, piece in enumerate(pieces):
            assert handle.write(piece) == len(piece)
            expected += piece
            assert handle.tell() == len(expected)
            if flush_every and number % flush_every == 0:
                handle.flush()
                os.fdatasync(handle.fileno())
        direct = handle.direct
    return bytes(expected), direct


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5 * BLOCK + 17), max_size=12),
    stage_blocks=st.integers(1, 3),
    flush_every=st.integers(0, 3),
    kind=st.sampled_from([bytes, bytearray, memoryview]),  # what a writer may hand over
)
def test_the_file_holds_exactly_what_was_written(
    tmp_path_factory, sizes, stage_blocks, flush_every, kind
):
    path = tmp_path_factory.mktemp("direct") / "part"
    pieces = [
        kind(bytes((number + i) % 251 for i in range(size))) for number, size in enumerate(sizes)
    ]
    expected, _ = _write(path, pieces, stage_blocks * BLOCK, flush_every)
    assert path.read_bytes() == expected


def test_o_direct_is_used_where_the_file_system_takes_it(tmp_path):
    expected, direct = _write(tmp_path / "part", [b"x" * (3 * BLOCK + 5)], BLOCK)
    assert direct == _takes_o_direct(tmp_path)
    assert (tmp_path / "part").read_bytes() == expected


def test_a_refused_o_direct_writes_through_the_page_cache(tmp_path, monkeypatch):
    real_fcntl = direct_file.fcntl.fcntl

    def refusing(fd, command, arg=0):
        if command == direct_file.fcntl.F_SETFL and arg & direct_file._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fcntl(fd, command, arg)

    monkeypatch.setattr(direct_file.fcntl, "fcntl", refusing)
    expected, direct = _write(tmp_path / "part", [b"a" * 10, b"b" * (2 * BLOCK + 3)], BLOCK)
    assert not direct
    assert (tmp_path / "part").read_bytes() == expected


def test_a_write_refused_midway_goes_on_through_the_page_cache(tmp_path, monkeypatch):
    """Some file systems open with O_DIRECT and refuse the write (an odd block size)."""
    if not _takes_o_direct(tmp_path):
        pytest.skip("this file system does not open files with O_DIRECT")
    real_write, refused = os.write, []

    def write(fd, data):
        flags = direct_file.fcntl.fcntl(fd, direct_file.fcntl.F_GETFL)
        if flags & direct_file._O_DIRECT and not refused:
            refused.append(True)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_file.os, "write", write)
    expected, direct = _write(tmp_path / "part", [b"c" * (4 * BLOCK + 1)], BLOCK)
    assert refused and not direct
    assert (tmp_path / "part").read_bytes() == expected


def test_a_full_disk_is_raised_and_an_abandoned_file_writes_nothing_more(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_file.os, "write", full)
    with (
        pytest.raises(OSError, match="No space left"),
        DirectFile(tmp_path / "part", stage_bytes=BLOCK) as handle,
    ):
        handle.write(b"z" * (3 * BLOCK))
    assert handle.closed


def test_a_full_stage_is_written_while_the_caller_fills_the_other(tmp_path, monkeypatch):
    """The write behind: `write` returns while the disk still reads the last stage."""
    real_write, entered, release = os.write, threading.Event(), threading.Event()

    def slow(fd, data):
        entered.set()
        assert release.wait(10), "the caller never let the write finish"
        return real_write(fd, data)

    monkeypatch.setattr(direct_file.os, "write", slow)
    first, second = b"1" * BLOCK, b"2" * (BLOCK // 2)
    with DirectFile(tmp_path / "part", stage_bytes=BLOCK) as handle:
        handle.write(first)  # a full stage: handed to the file's thread
        assert entered.wait(10)
        handle.write(second)  # into the other stage, the first still in flight
        assert handle.tell() == len(first) + len(second)
        release.set()
    assert (tmp_path / "part").read_bytes() == first + second


def test_an_error_behind_the_caller_is_raised_by_flush(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_file.os, "write", full)
    handle = DirectFile(tmp_path / "part", stage_bytes=BLOCK)
    handle.write(b"y" * BLOCK)  # in flight: its error is not lost
    with pytest.raises(OSError, match="No space left"):
        handle.flush()
    handle.close()  # nothing staged after the failed stage: nothing more is written
    assert handle.closed


def test_direct_writes_can_be_turned_off(tmp_path):
    expected = b"d" * (BLOCK + 1)
    with DirectFile(tmp_path / "part", stage_bytes=BLOCK, direct=False) as handle:
        handle.write(expected)
        assert not handle.direct
    assert (tmp_path / "part").read_bytes() == expected


def test_the_setting_reaches_the_part_writers_file(tmp_path, monkeypatch):
    """M3PIPE_DIRECT_WRITES=0 -> Settings -> PartWriter -> DirectFile(direct=False)."""
    import pyarrow as pa

    from pipeline.settings import Settings
    from pipeline.storage.part_writer import PartWriter

    opened: list[bool] = []

    class Recording(DirectFile):
        def __init__(self, path, stage_bytes=direct_file.STAGE_BYTES, *, direct=True):
            opened.append(direct)
            super().__init__(path, stage_bytes, direct=direct)

    monkeypatch.setattr("pipeline.storage.part_writer.DirectFile", Recording)
    for value, wanted in (("0", False), ("1", True)):
        monkeypatch.setenv("M3PIPE_DIRECT_WRITES", value)
        settings = Settings()
        assert settings.direct_writes is wanted
        table = pa.table({"x": pa.array([1, 2, 3])})
        target = tmp_path / f"part-{value}.parquet"
        writer = PartWriter(target, table.schema, direct_writes=settings.direct_writes)
        writer.write(table)
        writer.close()
        assert opened[-1] is wanted
