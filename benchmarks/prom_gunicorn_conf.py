"""gunicorn config of figure 13's prometheus_client servers (prometheus-fastapi-instrumentator and
starlette-exporter): prometheus_client's documented multiprocess setup for gunicorn ("Multiprocess mode
(E.g. Gunicorn)" in its README, which starlette-exporter's README points to). ``PROMETHEUS_MULTIPROC_DIR``
is set, to a fresh empty directory, in the server's environment before gunicorn starts; this file adds
the ``child_exit`` hook that marks a dead worker's live gauges dead. Bind, workers and worker class come
from the command line."""
from prometheus_client import multiprocess


def child_exit(server, worker):  # noqa: ARG001  (gunicorn's hook signature)
    multiprocess.mark_process_dead(worker.pid)
