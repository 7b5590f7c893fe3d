"""Liveness from heartbeats: a worker whose pid runs but whose heartbeat stopped is stuck (in
``/workers``, ``rockstar-mp top`` and ``system.workers_stuck``), against a real gunicorn and real
SIGSTOP/SIGCONT."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from rockstar_mp import MonitoringConfig
from tests.helpers import Gunicorn, http_get, poll

ROCKSTAR = str(Path(sys.executable).with_name("rockstar-mp"))
STUCK_AFTER = 2.0


def workers(server: Gunicorn) -> dict[int, dict[str, Any]]:
    status, _, body = http_get(f"http://127.0.0.1:{server.metrics_port}/workers")
    assert status == 200, body
    return {w["pid"]: w for w in json.loads(body)["workers"]}


def top_once(server: Gunicorn) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("ROCKSTAR_URL", "ROCKSTAR_AUTH_TOKEN")}
    done = subprocess.run([ROCKSTAR, "top", "--url", f"http://127.0.0.1:{server.metrics_port}", "--iterations", "1"],
                          capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def worker_line(screen: str, pid: int) -> str:
    return next(line for line in screen.splitlines() if line.split()[:1] == [str(pid)])


def test_a_stopped_worker_is_stuck_until_it_runs_again(gunicorn_factory: Callable[..., Gunicorn]) -> None:
    # --timeout: gunicorn's own watchdog would kill the stopped worker (it stops notifying) after 30 s
    server = gunicorn_factory(workers=2, args=("--timeout", "300"), env={"ROCKSTAR_STUCK_AFTER": str(STUCK_AFTER)})
    victim, other = sorted(server.worker_pids())
    assert not any(w["stuck"] for w in workers(server).values())
    assert server.metrics()["system"]["workers_stuck"] == 0
    os.kill(victim, signal.SIGSTOP)
    try:
        poll(lambda: workers(server)[victim]["stuck"], timeout=STUCK_AFTER + 10, message="the stopped worker stuck")
        seen = workers(server)
        assert seen[victim]["heartbeat_age"] > STUCK_AFTER
        assert not seen[other]["stuck"]
        system = server.metrics()["system"]
        assert (system["workers_stuck"], system["workers_stuck_episodes"]) == (1, 1)
        assert "STUCK" in worker_line(top_once(server), victim)
        assert "STUCK" not in worker_line(top_once(server), other)
    finally:
        os.kill(victim, signal.SIGCONT)
    poll(lambda: not workers(server)[victim]["stuck"], timeout=10, message="the worker running again")
    system = server.metrics()["system"]
    assert (system["workers_stuck"], system["workers_stuck_episodes"]) == (0, 1)  # the episode stays counted
    assert "STUCK" not in top_once(server)


@pytest.mark.parametrize("value", [0.5, 1.0, float("nan"), float("inf")])
def test_stuck_after_must_exceed_the_heartbeat_period(value: float) -> None:
    with pytest.raises(ValueError, match="stuck_after"):
        MonitoringConfig(stuck_after=value)
