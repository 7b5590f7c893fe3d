"""Real gunicorn workers running different code (tests/apps/name_clash.py): each name the two sides
declare differently is exposed once, the first side's way; the rest is counted in ``name_conflicts`` and
logged once per name; every scrape passes promtool in both text formats, also after the aggregator is
killed and respawned."""
from __future__ import annotations

import json
import os
import signal

from tests.helpers import http_get, poll
from tests.test_exposition import OPENMETRICS_ACCEPT, PROMETHEUS_TEXT_ACCEPT
from tests.test_names import assert_clean_text

LOSERS = {  # side B's declarations, each meeting one of side A's
    "'clash_a' (gauge": "'clash.a' (counter",
    "'clash.dup_total' (counter": "'clash.dup' (counter",
    "'clash.types' (gauge": "'clash.types' (counter",
    "'clash.labels' (counter, labels ['b']": "'clash.labels' (counter, labels ['a']",
    "'clash.latency.seconds.count' (gauge": "'clash.latency.seconds' (histogram",
}
FAMILIES = {"clash_a", "clash_dup", "clash_types", "clash_labels", "clash_latency_seconds", "clash_shared"}


def side_a_exposed(data: dict, shared: int) -> None:
    """Side A's values, every name once, and nothing of side B's declarations."""
    assert {k: v for k, v in data["counters"].items() if k.startswith("clash")} == {
        "clash.a": 1, "clash.dup": 2, "clash.types": 3, 'clash.labels{a="x"}': 4, "clash.labels": 4,
        "clash.shared": shared}
    assert not [k for k in data["gauges"] if k.startswith("clash")]
    assert data["histograms"]["clash.latency.seconds"]["count"] == 1


def scrape(server, accept: str) -> str:
    status, headers, body = http_get(server.url, {"Accept": accept})
    assert status == 200, body
    return body.decode()


def assert_clean_scrapes(server) -> None:
    text, om = scrape(server, PROMETHEUS_TEXT_ACCEPT), scrape(server, OPENMETRICS_ACCEPT)
    assert_clean_text(text, om)
    for family in FAMILIES:
        assert text.count(f"# TYPE {family}") == 1, family  # clash_a_total, clash_dup_total, ...
        assert om.count(f"# TYPE {family} ") == 1, family


def test_workers_running_different_code_expose_each_name_once(gunicorn_factory, tmp_path):
    go = tmp_path / "go"
    server = gunicorn_factory(app="tests.apps.name_clash:app", workers=2, env={"NAME_CLASH_GO": str(go)})
    poll(lambda: server.metrics()["counters"].get("clash.shared") == 1, message="side A merged")
    assert server.metrics()["system"]["name_conflicts"] == 0
    go.touch()
    poll(lambda: server.metrics()["counters"].get("clash.shared") == 2, message="side B merged")

    data = server.metrics()
    assert data["system"]["name_conflicts"] == len(LOSERS)
    side_a_exposed(data, shared=2)
    assert_clean_scrapes(server)

    side_b = next(w["pid"] for w in data["workers"] if w["age"] % 2 == 0)
    status, _, body = http_get(f"{server.url}?format=json&pid={side_b}")
    assert status == 200, body
    own = json.loads(body)  # side B's own view: only what it shares with side A
    assert {k: v for k, v in own["counters"].items() if k.startswith("clash")} == {"clash.shared": 1}
    assert not [k for k in (*own["gauges"], *own["histograms"]) if k.startswith("clash")]

    log = server.log_text()
    warnings = [line for line in log.splitlines() if "is not exposed" in line]
    assert len(warnings) == len(LOSERS), warnings  # once per name, whatever the scrapes since
    for loser, owner in LOSERS.items():
        assert sum(f"metric {loser}" in w and f"of {owner}" in w for w in warnings) == 1, (loser, warnings)

    old = data["system"]["aggregator_pid"]
    os.kill(old, signal.SIGKILL)  # the master respawns it: the live workers' names again, oldest first
    poll(lambda: server.metrics()["system"]["aggregator_pid"] != old, timeout=20, message="a new aggregator")
    data = server.metrics()
    assert data["system"]["name_conflicts"] == len(LOSERS)
    side_a_exposed(data, shared=2)
    assert_clean_scrapes(server)
