"""The Grafana dashboard and the alert rules of docs/: every PromQL expression of the dashboard returns data
from a real Prometheus that scraped a loaded gunicorn (every second); the rules pass ``promtool check
rules``, their unit tests pass ``promtool test rules``, every alert has a case that fires and one that does
not, and every family the rules name is one a real server exposes."""
from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import yaml

from tests.helpers import ROOT, free_port, poll, raw_get
from tests.prometheus_server import Prometheus, tool

DASHBOARD = ROOT / "docs" / "grafana" / "rockstar-mp.json"
RULES = ROOT / "docs" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "docs" / "prometheus" / "rules_test.yml"
# What Grafana puts in place of the dashboard's variables: $__rate_interval is 4 scrape intervals
GRAFANA_VARIABLES = {"$__rate_interval": "4s", "$job": "rockstar-mp", "$instance": ".*"}
ROUTES = ("/", "/users/ann", "/error", "/nope", "/work?ms=2")
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\)$")


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every PromQL expression: the panels' targets (rows' nested panels too), and the selectors of the
    variables' ``label_values(<selector>, <label>)`` queries."""
    found = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        found += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["query"]
            found.append(match.group(1))
    return found


def with_variables(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


class Load:
    """Requests over ``ROUTES`` from one thread until ``stop()``."""

    def __init__(self, port: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port,), daemon=True)
        self._thread.start()

    def _run(self, port: int) -> None:
        n = 0
        while not self._stop.is_set():
            raw_get(port, ROUTES[n % len(ROUTES)])
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def rule_families() -> set[str]:
    """The metric names the alert rules select (``name{job=...}``)."""
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    return {name for rule in rules for name in re.findall(r"([a-z_]+)\{job=", rule["expr"])}


def test_every_dashboard_expression_returns_data(gunicorn_factory, tmp_path):
    """One Prometheus scraping one loaded gunicorn with every optional part on (SNMP, scheduled GC, remote
    write, pushed to the same Prometheus under another job) answers every expression of the dashboard, and
    has every family the alert rules name."""
    expressions = [with_variables(e) for e in dashboard_expressions(json.loads(DASHBOARD.read_text()))]
    assert len(expressions) >= 20
    prometheus = Prometheus(tmp_path, receiver=True).start()
    try:
        server = gunicorn_factory(workers=2, env={
            "ROCKSTAR_ENABLE_SNMP": "1", "ROCKSTAR_SNMP_PORT": str(free_port()),
            "ROCKSTAR_ENABLE_OPTIMIZATION": "1", "ROCKSTAR_OPTIMIZATION_INTERVAL": "1",
            "ROCKSTAR_REMOTE_WRITE_URL": prometheus.write_url, "ROCKSTAR_REMOTE_WRITE_INTERVAL": "1",
            "ROCKSTAR_REMOTE_WRITE_LABELS": "job=rockstar-mp-push"})
        load = Load(server.port)
        try:
            prometheus.wait_ready()
            prometheus.scrape((f"127.0.0.1:{server.metrics_port}",))

            def empty() -> list:
                return [e for e in expressions if not prometheus.query(e)]

            poll(lambda: not empty(), timeout=30, interval=0.5, message="every dashboard expression answering")
        finally:
            load.stop()
        missing = [name for name in rule_families()
                   if not prometheus.query(f'count({name}{{job="rockstar-mp"}})')]
        assert not missing, f"families the alert rules name but the server does not expose: {missing}"
    finally:
        prometheus.stop()


def test_rules_pass_promtool():
    done = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "SUCCESS: 10 rules found" in done.stdout, done.stdout + done.stderr
    done = subprocess.run([tool("promtool"), "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    """Each alert is expected (``exp_alerts``) at one evaluation and expected absent at another (before its
    ``for`` passed, or before its series move); the firing ones also have a server that stays silent."""
    alerts = {rule["alert"] for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}
    fires: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            expected = check["exp_alerts"]
            (fires if expected else silent).add(check["alertname"])
            assert len(expected) < len(case["input_series"]), f"{case['name']}: no series left silent"
    assert fires == alerts, f"no case fires: {alerts - fires}"
    assert silent == alerts, f"no case stays silent: {alerts - silent}"


def test_dashboard_is_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        ids.append(panel["id"])
        assert panel["type"] in ("row", "timeseries", "stat")
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
    assert len(ids) == len(set(ids))
    assert Path(DASHBOARD).read_text().endswith("}\n")
