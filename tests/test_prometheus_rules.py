"""The alert and recording rules in contrib/prometheus, the Grafana dashboard in contrib/grafana
and the metric list in docs/metrics.md: promtool accepts and unit-tests the rules, every
alert the issue names exists and is exercised, and every metric they use is one /metrics serves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from dashboard.metric_figures import FIGURES
from tests.prometheus_helpers import promtool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "contrib" / "prometheus" / "twisted-rules.yml"
RULE_TESTS = sorted((ROOT / "contrib" / "prometheus" / "tests").glob("*.yml"))
GRAFANA = ROOT / "contrib" / "grafana" / "twisted-reactors.json"

#: What the issue asks the rules to catch, by alert name.
REQUIRED_ALERTS = {
    "TwistedReactorBlocked",
    "TwistedReactorLagHigh",
    "TwistedDeferredLeak",
    "TwistedPoolSaturated",
    "TwistedTimeoutRateHigh",
}

# A metric name not glued to a recording-rule name (``level:metric:ops``).
METRIC_NAME = re.compile(r"(?<![\w:])twisted_[a-z0-9_]+(?![\w:])")


def served_names() -> set[str]:
    """Every sample name /metrics can serve."""
    names = {f.prometheus_name for f in FIGURES}
    names |= {f"twisted_reactor_lag_seconds_{s}" for s in ("bucket", "count", "sum")}
    names |= {"twisted_reactor_lag_seconds", "twisted_reactor_info"}
    return names


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_promtool_checks_the_rules() -> None:
    result = run("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 14 rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert [p.name for p in RULE_TESTS] == ["alerts_test.yml", "recording_test.yml"]
    result = run("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_a_broken_expectation_fails_promtool(tmp_path: Path) -> None:
    """The unit tests can fail: the same file with one wrong threshold in the rules does."""
    broken = tmp_path / "twisted-rules.yml"
    text = RULES.read_text()
    assert text.count("(rate(twisted_timeouts_total[5m])) > 1\n") == 1
    broken.write_text(text.replace("(rate(twisted_timeouts_total[5m])) > 1\n", ") > 9\n", 1))
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    copy = tests_dir / "alerts_test.yml"
    copy.write_text((RULES.parent / "tests" / "alerts_test.yml").read_text())
    result = run("test", "rules", str(copy))
    assert result.returncode != 0
    assert "TwistedTimeoutRateHigh" in result.stdout + result.stderr


def test_every_required_alert_exists_and_is_exercised() -> None:
    rules = RULES.read_text()
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", rules, re.M))
    assert alerts >= REQUIRED_ALERTS
    tested = set(re.findall(r"^\s*alertname: (\w+)$", (RULES.parent / "tests" / "alerts_test.yml")
                            .read_text(), re.M))  # fmt: skip
    assert tested == alerts
    records = set(re.findall(r"^\s*- record: (\S+)$", rules, re.M))
    recording_tests = (RULES.parent / "tests" / "recording_test.yml").read_text()
    assert records == set(re.findall(r"^\s*- expr: (\S+)$", recording_tests, re.M))


def test_rules_and_dashboard_use_only_served_metrics() -> None:
    served = served_names()
    in_rules = set(METRIC_NAME.findall(RULES.read_text()))
    assert in_rules - served == set()
    assert {"twisted_reactor_blocks_total", "twisted_deferreds_pending"} <= in_rules
    dashboard = json.loads(GRAFANA.read_text())
    exprs = grafana_exprs(dashboard)
    assert len(exprs) >= 15
    in_dashboard = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert in_dashboard - served == set()
    assert len(in_dashboard) >= 20


def test_grafana_dashboard_is_importable_json() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["uid"] == "twisted-reactors"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert set(variables) == {"datasource", "job", "instance"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def grafana_exprs(dashboard: dict[str, object]) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    panels = dashboard["panels"]
    assert isinstance(panels, list)
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_the_docs_list_every_metric_and_only_those() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"^\| `(twisted_[a-z0-9_]+)` \|", text, re.M))
    families = {f.prometheus_name for f in FIGURES} | {
        "twisted_reactor_lag_seconds",
        "twisted_reactor_handler_duration_seconds",
        "twisted_reactor_info",
    }
    assert listed == families
