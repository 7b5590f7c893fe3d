"""Celery (prefork pool): merged monitoring of a Celery worker and its pool processes.

Example, in the module ``celery -A`` loads::

    from celery import Celery
    from rockstar_mp import MonitoringConfig
    from rockstar_mp.integrations.celery import instrument

    app = Celery("tasks", broker="redis://127.0.0.1:6379/0")
    instrument(app, MonitoringConfig(enable_metrics=True, metrics_port=9090))

What each of Celery's signals does (the same ``MonitoringManager`` and ``attach_worker`` the gunicorn
hooks use; see ``rockstar_mp.gunicorn``):

- ``worker_init`` (the main process, before the pool starts): start the ``MonitoringManager`` (the
  segment and the aggregator), then attach the main process itself: it receives the messages, so it
  counts what never reaches a pool process (``revoked``, ``rejected``, ``unknown``), and with the
  ``solo`` and ``threads`` pools it runs the tasks too.
- ``worker_process_init`` (each pool process, the ones ``max_tasks_per_child`` recycles included):
  ``attach_worker`` (a slab claimed by the process itself, ``die_with_parent``, logs captured as the
  config says).
- ``worker_process_shutdown`` (a pool process leaving): retire its slab now, so the aggregator folds it
  within a tick (a pool process killed outright is folded all the same, once its pid is gone).
- ``worker_shutdown`` (the main process, after the pool stopped), or its exit after a cold shutdown
  (which sends none): retire the main process's slab and stop the manager (the aggregator; the segment,
  unless another master shares it).
- ``task_prerun``/``task_postrun`` (where a task runs): ``celery.tasks{task,state}``, one count per run, the
  state from Celery's (``succeeded``, ``failed``, ``retried``, ``ignored``, ``rejected``, ``revoked``);
  ``celery.task.duration.seconds{task}``; and a workload record per run with the task's name as the
  route, method ``TASK``, the task id as request id and a status of 200 (succeeded), 307 (retried) or
  500 (anything else). ``task_revoked``, ``task_rejected``, ``task_unknown`` and ``task_internal_error``
  count the runs that never reach ``task_postrun``.

Celery is imported only by ``instrument``.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from typing import Any

from ..config import MonitoringConfig
from ..master.manager import MonitoringManager
from ..metrics import Counter, Histogram
from ..worker.attach import attach_worker, current
from ..worker.workload import RECORDER

log = logging.getLogger("rockstar_mp.celery")

TASKS = Counter("celery.tasks", "Celery task runs, by task and final state", ["task", "state"])
DURATION = Histogram("celery.task.duration.seconds", "Seconds a Celery task ran", ["task"])

METHOD = "TASK"  # the workload records' method
STATES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried", "IGNORED": "ignored",
          "REJECTED": "rejected", "REVOKED": "revoked"}
STATUS = {"succeeded": 200, "retried": 307}  # a workload record's status; anything else is 500
UNKNOWN_TASK = "<unknown>"


class CeleryMonitoring:
    """What ``instrument`` connected for one Celery app: the manager (in the worker's main process)
    and the signal handlers."""

    def __init__(self, celery_app: Any, config: MonitoringConfig | None = None) -> None:
        self.app = celery_app
        self.config = config or MonitoringConfig()
        self.manager: MonitoringManager | None = None
        self._manager_pid = 0
        self._started: dict[str, tuple[float, float]] = {}  # task id -> (perf_counter, time.time)
        self._lock = threading.Lock()  # the threads pool runs tasks concurrently

    # -- the main process ----------------------------------------------------------------------------
    def worker_init(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", self.app) is not self.app:
            return
        self.manager = MonitoringManager(self.config).start()
        self._manager_pid = os.getpid()
        atexit.register(self._stop)  # a cold shutdown (SIGQUIT) sends no worker_shutdown
        self._attach(die_with_parent=False)

    def worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", self.app) is self.app:
            self._stop()

    def _stop(self) -> None:
        """Retire the main process's slab and stop the manager (once, in the process that started it)."""
        if self.manager is None or os.getpid() != self._manager_pid:
            return
        state = current()
        if state is not None:
            state.detach()
        manager, self.manager = self.manager, None
        manager.stop()

    # -- pool processes ------------------------------------------------------------------------------
    def worker_process_init(self, **_: Any) -> None:
        if self.manager is not None:
            self._attach(die_with_parent=True)

    def worker_process_shutdown(self, **_: Any) -> None:
        state = current()
        if state is not None:
            state.detach()

    def _attach(self, die_with_parent: bool) -> None:
        assert self.manager is not None
        config = self.manager.config
        try:
            attach_worker(self.manager.segment, die_with_parent=die_with_parent, config=config,
                          capture_logs=config.log_level if config.capture_logs else None)
        except Exception as exc:  # noqa: BLE001 - monitoring never stops the worker: this process goes unmonitored
            log.error("rockstar-mp: process %d is not monitored: %s", os.getpid(), exc)

    # -- tasks ---------------------------------------------------------------------------------------
    def task_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if not self._ours(task):
            return
        with self._lock:
            self._started[task_id or ""] = (time.perf_counter(), time.time())
        RECORDER.begin(METHOD, task.name)

    def task_postrun(self, task_id: str | None = None, task: Any = None, state: str | None = None,
                     **_: Any) -> None:
        if not self._ours(task):
            return
        with self._lock:
            started = self._started.pop(task_id or "", None)
        outcome = STATES.get(state or "", "failed")
        TASKS.labels(task.name, outcome).inc()
        if started is None:
            return
        seconds = time.perf_counter() - started[0]
        DURATION.labels(task.name).observe(seconds)
        RECORDER.record(METHOD, task.name, STATUS.get(outcome, 500), seconds, started[1], 0, task_id or "", "")
        RECORDER.end()

    def task_revoked(self, sender: Any = None, **_: Any) -> None:
        if self._ours(sender):
            self._count_unrun(sender.name, "revoked")

    def task_rejected(self, message: Any = None, **_: Any) -> None:
        headers = getattr(message, "headers", None) or {}
        self._count_unrun(headers.get("task"), "rejected")

    def task_unknown(self, name: str | None = None, **_: Any) -> None:
        self._count_unrun(name, "unknown")

    def task_internal_error(self, task_id: str | None = None, sender: Any = None, **_: Any) -> None:
        if not self._ours(sender):
            return
        with self._lock:
            self._started.pop(task_id or "", None)
        self._count_unrun(getattr(sender, "name", None), "internal_error")

    def _count_unrun(self, name: Any, state: str) -> None:
        TASKS.labels(name if isinstance(name, str) and name else UNKNOWN_TASK, state).inc()

    def _ours(self, task: Any) -> bool:
        return task is not None and getattr(task, "app", None) is self.app

    def connect(self) -> "CeleryMonitoring":
        # Celery is loaded by whoever instruments an app, never by the package
        from celery import signals  # type: ignore[import-untyped]

        for name in ("worker_init", "worker_shutdown", "worker_process_init", "worker_process_shutdown",
                     "task_prerun", "task_postrun", "task_revoked", "task_rejected", "task_unknown",
                     "task_internal_error"):
            getattr(signals, name).connect(getattr(self, name), weak=False)
        return self


def instrument(celery_app: Any, config: MonitoringConfig | None = None) -> CeleryMonitoring:
    """Monitor the Celery worker that runs ``celery_app`` and its pool processes (see the module's
    docstring); call it where the app is defined, so every process of the worker has it connected.
    ``config``: as for gunicorn (``ROCKSTAR_*`` environment variables override it)."""
    return CeleryMonitoring(celery_app, config).connect()
