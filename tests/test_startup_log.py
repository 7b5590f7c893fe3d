"""The master's log names every endpoint the aggregator actually serves, in gunicorn's own format, once."""
from __future__ import annotations

import re

from tests.helpers import free_port, poll


def _gunicorn_line(text: str) -> str:
    """A line of gunicorn's error log format: ``[date] [pid] [INFO] <text>``."""
    return r"^\[[^\]]+\] \[\d+\] \[INFO\] " + re.escape(text) + "$"


def test_every_endpoint_bound_is_announced_once_in_gunicorns_format(gunicorn_factory):
    pprof_port, snmp_port = free_port(), free_port()
    server = gunicorn_factory(workers=2, env={
        "ROCKSTAR_ENABLE_PPROF": "1", "ROCKSTAR_PPROF_PORT": str(pprof_port),
        "ROCKSTAR_ENABLE_SNMP": "1", "ROCKSTAR_SNMP_PORT": str(snmp_port)})
    expected = [f"rockstar-mp: metrics on http://127.0.0.1:{server.metrics_port}/metrics",
                f"rockstar-mp: pprof on http://127.0.0.1:{pprof_port}/debug/pprof/",
                f"rockstar-mp: SNMP on udp://127.0.0.1:{snmp_port}"]

    def announced() -> list[int]:
        log = server.log_text()
        return [len(re.findall(_gunicorn_line(line), log, flags=re.M)) for line in expected]

    poll(lambda: announced() == [1, 1, 1], message="metrics, pprof and SNMP announced")
