"""A real Celery worker (prefork pool, 2 processes recycled every 50 tasks) instrumented with
``rockstar_mp.integrations.celery.instrument``, on kombu's filesystem transport (no broker server): every
task run is counted by state in the merged totals, across the recycled pool processes."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.apps.celery_broker import make_app
from tests.helpers import ROOT, Gunicorn, free_port, poll

CELERY = str(Path(sys.executable).with_name("celery"))
TASKS = 300  # square(i): fails for the 30 multiples of 10
FLAKY = 10  # flaky(i): retried once, then succeeds


def test_celery_prefork_counts_every_task_by_state_across_recycled_processes(tmp_path):
    folder, shm = tmp_path / "broker", tmp_path / "shm"
    folder.mkdir()
    metrics_port = free_port()
    env = dict(Gunicorn(tmp_path, monitored=False).env, CELERY_TEST_FOLDER=str(folder),
               ROCKSTAR_METRICS_PORT=str(metrics_port), ROCKSTAR_SEGMENT_DIR=str(shm))
    publisher = make_app(str(folder))
    for i in range(TASKS):
        publisher.send_task("square", args=(i,))
    for i in range(FLAKY):
        publisher.send_task("flaky", args=(i,))
    log_path = tmp_path / "celery.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([CELERY, "-A", "tests.apps.celery_tasks", "worker", "--pool=prefork",
                                   "--concurrency=2", "--max-tasks-per-child=50", "--loglevel=warning",
                                   "--without-heartbeat", "--without-gossip", "--without-mingle"],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Gunicorn(tmp_path, monitored=False)
    server.metrics_port = metrics_port
    try:
        expected = {'celery.tasks{task="square",state="succeeded"}': TASKS - TASKS // 10,
                    'celery.tasks{task="square",state="failed"}': TASKS // 10,
                    'celery.tasks{task="flaky",state="retried"}': FLAKY,
                    'celery.tasks{task="flaky",state="succeeded"}': FLAKY}

        def counted():
            seen = server.metrics()["counters"]
            return seen if all(seen.get(k) == v for k, v in expected.items()) else None
        try:
            seen = poll(counted, timeout=30, message="every task counted")
        except AssertionError:
            raise AssertionError(f"{server.metrics()['counters']}\n{log_path.read_text()[-3000:]}") from None
        assert seen["celery.tasks"] == TASKS + 2 * FLAKY, seen
        metrics = server.metrics()
        runs = TASKS + 2 * FLAKY
        assert metrics["histograms"]['celery.task.duration.seconds{task="square"}']["count"] == TASKS
        # each pool process runs at most 50 tasks: 7 or more of them, all but the 2 serving now folded
        lifetimes = -(-runs // 50)
        poll(lambda: server.metrics()["system"]["workers_folded"] >= lifetimes - 2,
             message=f"{lifetimes - 2} recycled pool processes folded")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        assert not list(shm.glob("rockstar-mp-*.seg")), "the manager stopped and removed the segment"
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = log_path.read_text()
    assert "rockstar_mp" not in text and "rockstar-mp:" not in text, text[-3000:]
