"""Prometheus alert rules and the Grafana dashboard name only metrics attune exports.

promtool is not available where these tests run, so the rules are checked by parsing:
structure, severities, a summary, and every ``ray_attune_*`` series named is one the
code declares (Ray exports a metric ``attune_x`` as ``ray_attune_x``; histograms add
``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra/monitoring"
_SERIES = re.compile(r"\bray_(attune_[a-z0-9_]+)")


def declared_metrics() -> set[str]:
    """Metric names declared in attune's code (quoted ``attune_*`` names)."""
    names: set[str] = set()
    for path in (ROOT / "platform/attune").rglob("*.py"):
        names |= set(re.findall(r'"(attune_[a-z0-9_]+)"', path.read_text()))
    return names


def _base(series: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", series)


def _rules() -> list[dict[str, object]]:
    config = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_prometheus_loads_the_alert_rules() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    assert config["rule_files"] == ["alerts.yaml"]


def test_alert_rules_are_well_formed() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule  # type: ignore[index]
        assert rule["annotations"]["summary"], rule  # type: ignore[index]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("topic", "series"),
    [
        ("guardrail rollbacks", "ray_attune_guardrail_rollbacks_total"),
        ("error rate", "ray_attune_rank_errors_total"),
        ("p99 latency", "ray_attune_rank_latency_ms_bucket"),
        ("PSI", "ray_attune_feature_psi"),
        ("drift report age", "ray_attune_drift_report_age_seconds"),
        ("snapshot age", "ray_attune_online_snapshot_age_seconds"),
    ],
)
def test_each_operational_risk_has_an_alert(topic: str, series: str) -> None:
    assert any(series in str(rule["expr"]) for rule in _rules()), topic


def _dashboard_series() -> set[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {s for e in exprs for s in _SERIES.findall(e)}


def test_alerts_and_dashboard_query_only_declared_metrics() -> None:
    declared = declared_metrics()
    alert_series = {s for r in _rules() for s in _SERIES.findall(str(r["expr"]))}
    for series in alert_series | _dashboard_series():
        assert _base(series) in declared, series


def test_the_check_can_fail() -> None:
    assert _base("attune_no_such_metric_bucket") not in declared_metrics()
