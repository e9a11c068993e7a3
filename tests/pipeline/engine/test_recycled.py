"""Recycled output buffers: memory is lent again only when nothing holds it any more, so a
table that anyone still keeps is never overwritten."""

from __future__ import annotations

import gc

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.recycled import RecycledBuffers
from schemas.vector_layout import colbert_array


def address(array: np.ndarray) -> int:
    """Where an array's memory starts (holding no reference to its buffer)."""
    return int(array.__array_interface__["data"][0])


def test_a_free_buffer_is_lent_again_and_a_held_one_is_not():
    buffers = RecycledBuffers(keep=3)
    first = buffers.empty((100, 8), np.float16)
    base = address(first)
    second = buffers.empty((100, 8), np.float16)
    assert address(second) != base  # `first` still holds its buffer
    del first
    third = buffers.empty((90, 8), np.float16)  # smaller fits
    assert address(third) == base and third.shape == (90, 8) and third.dtype == np.float16


def test_an_arrow_table_over_the_array_keeps_its_buffer_until_it_is_gone():
    buffers = RecycledBuffers(keep=2)
    vectors = buffers.empty((6, 4), np.float16)
    vectors[:] = np.arange(24).reshape(6, 4)
    column = colbert_array(np.array([0, 2, 6]), vectors)
    table = pa.table({"colbert": column})
    base = address(vectors)
    del vectors, column
    gc.collect()
    other = buffers.empty((6, 4), np.float16)  # the table still holds the first buffer
    assert address(other) != base
    other[:] = -1
    values = table.column("colbert").chunk(0).values  # the vectors' bytes, as written
    kept = np.frombuffer(values.buffers()[1], np.float16).reshape(6, 4)
    assert kept.tolist() == np.arange(24).reshape(6, 4).tolist()  # untouched
    del table, values, kept
    gc.collect()
    del other
    assert address(buffers.empty((6, 4), np.float16)) == base


def test_pieces_of_mixed_sizes_meet_no_fresh_memory_once_every_buffer_is_made():
    """A shard's pieces: a quarter, three whole ones, a remainder, a quarter, ... with up to
    four in flight (filling, two queued for the writer, writing). After the first few, every
    piece comes from a kept buffer: new ones are made as large as the largest."""
    buffers = RecycledBuffers(keep=4)
    sizes = [64, 256, 256, 256, 104] * 6
    in_flight: list[np.ndarray] = []
    made: set[int] = set()
    fresh_late = 0
    for number, size in enumerate(sizes):
        if len(in_flight) == 4:
            in_flight.pop(0)  # the writer is done with the oldest
        array = buffers.empty((size, 1024), np.uint8)
        if address(array) not in made:
            made.add(address(array))
            fresh_late += number >= 10
        in_flight.append(array)
    assert fresh_late == 0
    assert len(made) <= 5 and len(buffers._buffers) == 4


def test_a_small_request_takes_a_free_buffer_however_large():
    buffers = RecycledBuffers(keep=3)
    large = buffers.empty((4 << 20,), np.uint8)
    small = buffers.empty((1 << 20,), np.uint8)  # as large as the largest: 4 MiB or more
    large_base, small_base = address(large), address(small)
    del large, small
    first = buffers.empty((16,), np.uint8)
    second = buffers.empty((16,), np.uint8)
    assert {address(first), address(second)} == {large_base, small_base}


def test_no_more_than_keep_buffers_are_held():
    buffers = RecycledBuffers(keep=2)
    held = [buffers.empty((1 << 20,), np.uint8) for _ in range(5)]  # all lent at once
    assert buffers.held_bytes() <= 2 * 2 * (2 << 20)
    del held
    for size in (1 << 20, 3 << 20, 9 << 20):  # kept buffers make room for new sizes
        buffers.empty((size,), np.uint8)
    assert len(buffers._buffers) <= 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.booleans()), min_size=1, max_size=30))
def test_arrays_lent_at_the_same_time_never_share_memory(requests):
    buffers = RecycledBuffers(keep=3)
    alive: list[tuple[int, np.ndarray]] = []
    for number, (size, keep_it) in enumerate(requests):
        array = buffers.empty((size, 2), np.float32)
        array[:] = number
        for _, other in alive:
            assert not np.shares_memory(array, other)
        if keep_it:
            alive.append((number, array))
    for number, array in alive:  # every kept array still holds what was written into it
        assert (array == number).all()
