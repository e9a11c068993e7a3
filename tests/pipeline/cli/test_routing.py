"""Queue names of routing by model (issue 28, item 4), and which queues each command uses."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.broker.routing import model_queue, model_route, routed_queues
from pipeline.cli.main import build_parser
from pipeline.cli.submit import submit_request
from pipeline.cli.tenants import consumer_queues
from pipeline.settings import Settings
from schemas.job import QUEUE_NAME_PATTERN


def test_a_route_is_readable_and_tells_spellings_apart():
    assert re.fullmatch(r"m-bge-m3-[0-9a-f]{8}", model_route("BAAI/bge-m3"))
    assert model_route("BAAI/bge-m3") == model_route("BAAI/bge-m3")
    assert model_route("BAAI/bge-m3") != model_route("/models/bge-m3")
    assert model_queue("m3pipe.team", "random:tiny").startswith("m3pipe.team.m-random-tiny-")
    with pytest.raises(ValueError, match="too long to route by model"):
        model_queue("q" * 50, "BAAI/bge-m3")


@given(
    st.text(min_size=1, max_size=300).filter(str.strip),
    st.from_regex(r"[a-z][a-z0-9.]{0,20}", fullmatch=True),
)
def test_any_model_spec_gives_a_valid_queue_name(spec, queue):
    assert re.fullmatch(QUEUE_NAME_PATTERN, model_queue(queue, spec))


def settings(**changes) -> Settings:
    return Settings(model="m/embed", rerank_model="m/rerank", **changes)


def test_consumers_route_the_base_and_tenant_queues_and_keep_named_ones():
    embed, rerank = model_route("m/embed"), model_route("m/rerank")
    assert consumer_queues(None, None, settings()) == ["m3pipe"]
    assert consumer_queues(None, None, settings(), route_by_model=True) == [
        f"m3pipe.{embed}",
        f"m3pipe.{rerank}",
    ]
    assert consumer_queues(None, "a", settings(route_by_model=True)) == [
        f"m3pipe.a.{embed}",
        f"m3pipe.a.{rerank}",
    ]
    # The autoscaler hands its workers routed queues by name: never routed twice.
    named = f"m3pipe.{embed}"
    assert consumer_queues(named, None, settings(route_by_model=True)) == [named]
    assert routed_queues(["a", "a"], ["m", "m"]) == [f"a.{model_route('m')}"]


def test_submit_sends_to_its_models_route_only_when_asked(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "x"}\n')
    argv = ["submit", str(corpus), "--out", str(tmp_path / "o"), "--model", "m/x"]
    plain = submit_request(build_parser().parse_args(argv), settings())
    assert plain.queue == "m3pipe"
    routed = submit_request(build_parser().parse_args([*argv, "--route-by-model"]), settings())
    assert routed.queue == f"m3pipe.{model_route('m/x')}"
    tenant = submit_request(
        build_parser().parse_args([*argv, "--tenant", "t"]), settings(route_by_model=True)
    )
    assert tenant.queue == f"m3pipe.t.{model_route('m/x')}"
