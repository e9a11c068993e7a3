"""deploy/prometheus and deploy/grafana: the alert rules parse and fire where their unit
tests say (promtool); the dashboard's queries parse; both name only metrics m3pipe exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.runtime.gpu_utilization import register_gpu_utilization
from pipeline.runtime.metrics import AutoscalerMetrics, WorkerMetrics
from tests.fake_nvml import FakeNvml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "m3pipe.json"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True)


def exported_names() -> set[str]:
    """Every series name the worker and the autoscaler expose, as Prometheus scrapes it."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    worker = WorkerMetrics()
    # what a GPU worker adds (its GPU named by the UUID torch reports on a real one)
    assert register_gpu_utilization(worker.registry, FakeNvml(), device_uuid=lambda: "GPU-0")
    for metrics in (worker, AutoscalerMetrics()):
        for family in metrics.registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def test_the_config_and_its_rules_pass_promtool_check():
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_each_alert_fires_where_its_unit_test_says():
    result = run_promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_names_exported_metrics():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert {rule["alert"] for rule in rules} == tested
    exported = exported_names()
    for rule in rules:
        for name in re.findall(r"\bm3pipe_[a-z0-9_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name} is not a metric m3pipe exports"


def test_the_name_check_would_catch_a_renamed_metric():
    exported = exported_names()
    assert "m3pipe_shards_total" in exported and "m3pipe_oom_splits_total" in exported
    assert "m3pipe_shards" not in exported  # a counter is scraped with its _total


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_queries_parse_and_name_exported_metrics(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 10
    exported = exported_names()
    for query in queries:
        for name in re.findall(r"\bm3pipe_[a-z0-9_]+", query):
            assert name in exported, f"dashboard: {name} is not a metric m3pipe exports"
    # promtool parses PromQL in rule files: each query as a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"m3pipe:dashboard_query_{n}", "expr": query} for n, query in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", "queries.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_shows_what_an_operator_needs():
    queries = " ".join(dashboard_queries())
    for metric in (
        "m3pipe_autoscaler_backlog", "m3pipe_autoscaler_desired_workers",
        "m3pipe_autoscaler_running_workers", "m3pipe_tokens_total", "m3pipe_documents_total",
        "m3pipe_padded_tokens_total", "m3pipe_shards_total", "m3pipe_tenant_shards_total",
        "m3pipe_shard_encode_seconds_bucket", "m3pipe_device_memory_bytes",
        "m3pipe_oom_splits_total", "m3pipe_model_load_failures_total",
        "m3pipe_gpu_utilization_ratio",
    ):  # fmt: skip
        assert metric in queries, f"the dashboard has no panel on {metric}"
