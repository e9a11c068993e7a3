"""benchmarks/scale_reuse.py (bench_scale's `reuse` part) on a few documents: the figures
docs/scale.md quotes are made, and they add up."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.scale_reuse import reuse


@pytest.mark.slow
def test_the_reuse_figures_are_made_and_add_up(tmp_path, model_cache):
    args = argparse.Namespace(
        reuse_documents=60, reuse_changed=0.1, reuse_max_length=128, reuse_repeats=3,
        shard_docs=25, model="random:tiny",
    )  # fmt: skip
    figures = reuse(args, tmp_path)
    assert figures["documents"] == 60 and figures["changed"] == 6
    assert figures["reused"] == 54 and figures["reused"] + figures["encoded"] == 60
    assert 0 < figures["encoded_tokens"] < figures["full_tokens"]
    assert figures["reuse_encode_seconds"] in figures["reuse_encode_seconds_each"]
    peaks = [figures["full_encode_peak_mib_above_start"],
             *figures["reuse_encode_peak_mib_above_start_each"]]  # fmt: skip
    assert len(peaks) == 4 and all(peak >= 0 for peak in peaks)
    assert figures["output_bytes_per_document"] > 0 and figures["index_us_per_document"] > 0
