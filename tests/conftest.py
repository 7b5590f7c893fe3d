"""Fixtures: real gunicorn servers, stopped (and their aggregators gone) after each test."""
from __future__ import annotations

import pytest

from tests.helpers import Gunicorn


@pytest.fixture
def gunicorn_factory(tmp_path):
    servers: list[Gunicorn] = []

    def make(**kwargs) -> Gunicorn:
        path = tmp_path / f"g{len(servers)}"
        path.mkdir()
        server = Gunicorn(path, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
    for server in servers:  # no test may leave an exception in a master, worker or aggregator
        log = server.log_text()
        assert "Traceback" not in log, log[log.find("Traceback") - 300:][:4000]
