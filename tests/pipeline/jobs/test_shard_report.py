"""A finished shard's report (pipeline/jobs/shard_report.py): its counts, its shard-log
line, and its fixed record, read back as written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.jobs.shard_report import RECORD, ShardReport

reports = st.builds(
    ShardReport,
    documents=st.integers(0, 2**32 - 1),
    rows=st.integers(0, 2**32 - 1),
    tokens=st.integers(0, 2**63 - 1),
    part_bytes=st.integers(0, 2**63 - 1),
    reused=st.none() | st.integers(0, 2**32 - 2),
)


@given(reports)
def test_a_report_reads_back_from_its_record_and_its_counts(report):
    # The record's bytes as BITFIELD writes them: (type, offset, value) triples, big-endian.
    values = report.record_args()[2::3]
    record = RECORD.pack(*values)
    assert ShardReport.from_record(record) == report
    assert ShardReport.from_counts(report.counts()) == report


def test_the_log_line_names_the_items_and_says_reused_only_for_a_reuse_job():
    plain = ShardReport(documents=3, rows=4, tokens=50, part_bytes=900)
    assert plain.log_entry(7, "part-00007.parquet", "pairs") == {
        "shard": 7, "state": "done", "name": "part-00007.parquet", "pairs": 3, "rows": 4,
        "tokens": 50, "bytes": 900,
    }  # fmt: skip
    reused = ShardReport(documents=3, rows=3, tokens=50, part_bytes=900, reused=0)
    assert reused.log_entry(7, "p", "documents")["reused"] == 0


def test_a_short_record_reads_as_zeros():
    """A shard past the end of the job's counts string reads zeros: no counts, no reuse."""
    assert ShardReport.from_record(b"") == ShardReport(0, 0, 0, 0)


@pytest.mark.parametrize("field", ["documents", "rows"])
def test_a_count_past_its_field_is_refused(field):
    with pytest.raises(ValueError, match="does not fit"):
        ShardReport.from_counts({field: 2**32}).record_args()
