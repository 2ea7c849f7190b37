"""Dashboard, alert rules and docs against the metrics the code exports (one source of truth).

The names come from the registries themselves (`WorkerMetrics`, Faust's sensor on it, and
`TrainerMetrics`); every PromQL query in the Grafana dashboard and the alert rules must use
only those, docs/operations.md's metrics table must list them all, and `promtool` checks and
unit-tests the rules (`make test` installs it: Debian package `prometheus`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streamrec.consumers.trainer.sidecar import TrainerMetrics
from streamrec.consumers.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrec.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"  # the metrics table and the alert runbook

# What the issue asks of the alerts; more may exist.
REQUIRED_ALERTS = {
    "StreamrecConsumerLagGrowing",  # lag growing
    "StreamrecLatencyP99OverSLO",  # p99 over SLO
    "StreamrecDeadLetterRate",  # DLQ rate
    "StreamrecNoRecommendations",  # no recommendations produced
    "StreamrecModelStale",  # model stale
    "StreamrecModelSwapRefused",  # swap refused
    "StreamrecWorkerDown",  # worker down
}
# ... and of the dashboard: throughput, lag, latency quantiles, DLQ, model version timeline,
# online hit-rate by version, trainer loss
REQUIRED_ON_DASHBOARD = {
    "streamrec_events_total",
    "streamrec_recommendations_total",
    "streamrec_consumer_lag",
    "streamrec_end_to_end_latency_seconds_bucket",
    "streamrec_stage_latency_seconds_bucket",
    "streamrec_dead_letters_total",
    "streamrec_model_info",
    "streamrec_online_hits_total",
    "streamrec_online_events_total",
    "streamrec_trainer_loss",
}
PROMETHEUS_BUILTIN = {"up"}  # written by Prometheus for every target
METRIC_IN_PROMQL = re.compile(r"\b(?:streamrec|faust)_[a-zA-Z0-9_]+\b|\bup\b(?=\s*[{\[)=!<>])")

# the suffixes each metric type's samples carry on /metrics
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def registries() -> dict[str, CollectorRegistry]:
    return {"worker": WorkerMetrics().registry, "trainer": TrainerMetrics().registry}


def families() -> dict[str, str]:
    """Every metric family exported: name -> type (labelled ones included, before any sample)."""
    out = {}
    for registry in registries().values():
        for family in registry.collect():
            out[family.name] = family.type
    return out


def exported_series_names() -> set[str]:
    return {name + suffix for name, kind in families().items() for suffix in SAMPLE_SUFFIXES[kind]}


def dashboard_queries() -> dict[str, list[str]]:
    """Panel title -> its PromQL expressions (rows included, templating too)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries: dict[str, list[str]] = {}

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs = [target["expr"] for target in panel.get("targets", [])]
            if exprs:
                queries[panel["title"]] = exprs
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query:
            queries[f"variable {variable['name']}"] = [query]
    return queries


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metrics_in(expr: str) -> set[str]:
    return set(METRIC_IN_PROMQL.findall(expr))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus: `make promtool` installs it where apt and root are)")
    return path


def test_metric_names_follow_prometheus_conventions() -> None:
    for name, kind in families().items():
        if name.startswith("faust_"):
            continue  # Faust's sensor: its names and millisecond units are Faust's
        assert re.fullmatch(r"streamrec_[a-z0-9_]+", name), name
        assert not name.endswith("_total"), f"{name}: only a counter's samples end in _total"
        if kind == "histogram" and name != "streamrec_batch_size":
            assert name.endswith("_seconds"), f"{name}: durations are in seconds"
        if "timestamp" in name:
            assert name.endswith("_timestamp_seconds"), name
    worker_faust = {n for n in families() if n.startswith("faust_")}
    assert "faust_messages_received" in worker_faust, "Faust's sensor is not on the worker's registry"


def test_every_dashboard_query_uses_exported_metrics() -> None:
    known = exported_series_names() | PROMETHEUS_BUILTIN
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = set()
    for title, exprs in queries.items():
        for expr in exprs:
            names = metrics_in(expr)
            assert names, f"{title!r}: {expr!r} reads no metric"
            assert names <= known, f"{title!r} reads metrics nobody exports: {sorted(names - known)}"
            used |= names
    assert REQUIRED_ON_DASHBOARD <= used, sorted(REQUIRED_ON_DASHBOARD - used)


def test_dashboard_panels_are_placed_and_use_the_provisioned_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    ids, cells = set(), set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for dx in range(grid["w"]):  # no two panels on one grid cell
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"{panel['title']!r} overlaps another panel"
                cells.add(cell)
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert all(target["datasource"]["uid"] == uid for target in panel["targets"])


def test_every_alert_uses_exported_metrics_and_says_what_to_do() -> None:
    known = exported_series_names() | PROMETHEUS_BUILTIN
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names), sorted(REQUIRED_ALERTS - set(names))
    for rule in rules:
        used = metrics_in(rule["expr"])
        assert used and used <= known, f"{rule['alert']}: unknown metrics {sorted(used - known)}"
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        assert rule["alert"] in rule["annotations"]["runbook"]


def test_every_alert_has_a_promtool_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in alert_rules()} <= tested


def test_the_docs_document_every_metric_and_alert() -> None:
    readme = OPERATIONS.read_text()
    metrics_section = readme.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    runbook = readme.split("### Alert runbook", 1)[1].split("\n## ", 1)[0]
    for name, kind in families().items():
        if name.startswith("faust_"):
            continue  # listed as a family (faust_*)
        shown = name + "_total" if kind == "counter" else name
        assert f"`{shown}" in metrics_section, f"{shown} is missing from docs/operations.md's metrics table"
    assert "`faust_" in metrics_section
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in runbook, f"{rule['alert']} is missing from the alert runbook"


def test_promtool_checks_the_prometheus_config_and_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query as a recording rule: promtool rejects any that is not valid PromQL."""
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr.replace("$__rate_interval", "5m")}
        for n, expr in enumerate(e for exprs in dashboard_queries().values() for e in exprs)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
