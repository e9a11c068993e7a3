"""A shard's info as Redis keeps it: a done shard's usual facts compactly, anything else as
JSON; every info reads back as it was written (hypothesis), and compactly is smaller."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from pipeline.jobs.store import decode_info, encode_info

counts = st.integers(min_value=0, max_value=2**53)
floats = st.floats(allow_nan=False) | st.integers(0, 10**6)
done_infos = st.fixed_dictionaries(
    {
        "documents": counts, "rows": counts, "tokens": counts, "bytes": counts,
        "seconds": floats, "finished_at": floats, "padding_efficiency": floats,
        "worker": st.text(),  # any text, '|' and newlines included
    },
    optional={"reused": counts},
)  # fmt: skip
json_values = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
other_infos = st.dictionaries(st.text(), json_values)


@given(done_infos)
def test_a_done_shards_facts_read_back_equal(info):
    raw = encode_info(info)
    assert raw.startswith("d1|")
    back = decode_info(raw)
    assert back.keys() == info.keys()
    for key, value in info.items():
        assert back[key] == value and (key != "seconds" or isinstance(back[key], float))


@given(other_infos)
def test_any_other_info_is_json_and_reads_back_equal(info):
    raw = encode_info(info)
    if not raw.startswith("d1|"):
        assert json.loads(raw) == info
    assert decode_info(raw) == info


def test_anything_unusual_in_a_done_info_falls_back_to_json():
    usual = {"documents": 1000, "rows": 1000, "tokens": 60_000, "bytes": 1_500_000,
             "worker": "celery@gpu-node-017-3", "seconds": 4.213,
             "finished_at": 1796000000.123, "padding_efficiency": 0.9513}  # fmt: skip
    without_rows = {k: v for k, v in usual.items() if k != "rows"}
    unusuals = [{**usual, "resumed": True}, {**usual, "rows": True}, {**usual, "rows": 1.0},
                {**usual, "worker": None}, without_rows]  # fmt: skip
    for unusual in unusuals:
        raw = encode_info(unusual)
        assert raw.startswith("{") and decode_info(raw) == unusual
    compact = encode_info(usual)
    assert len(compact) < len(json.dumps(usual)) / 2
    assert math.isclose(decode_info(compact)["padding_efficiency"], 0.9513)
