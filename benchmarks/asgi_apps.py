"""The FastAPI apps of figures 11 (ASGI) and 13: one trivial route, ``GET /``, the example's ``hello``,
served four ways. Each is a factory gunicorn calls in the worker (``benchmarks.asgi_apps:bare()``), so a
server imports only its own instrumentation: the bare server never loads prometheus_client, and the
prometheus_client ones import it only after their ``PROMETHEUS_MULTIPROC_DIR`` is in the environment.

- ``bare()``: the FastAPI app alone ("off").
- ``ours()``: wrapped in rockstar-mp's ASGI ``MetricsMiddleware`` (workload records on, its default), as
  ``examples/fastapi_app.py`` does; served under ``gunicorn_conf.py`` (hooks and aggregator).
- ``instrumentator()``: prometheus-fastapi-instrumentator's fast track from its README,
  ``Instrumentator().instrument(app).expose(app)`` (``expose`` serves ``/metrics`` through a
  ``MultiProcessCollector`` when ``PROMETHEUS_MULTIPROC_DIR`` is set).
- ``exporter()``: starlette-exporter's FastAPI usage from its README, ``app.add_middleware(
  PrometheusMiddleware)`` and ``app.add_route("/metrics", handle_metrics)`` (``handle_metrics`` reads
  the multiprocess directory when the variable is set).
"""
from __future__ import annotations

from typing import Any


def hello_app() -> Any:
    """A fresh FastAPI app with the one route every variant serves."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    async def hello() -> dict:
        return {"hello": "rockstar-mp"}

    return app


def bare() -> Any:
    """No instrumentation at all."""
    return hello_app()


def ours() -> Any:
    """rockstar-mp's ASGI middleware, workload records included."""
    from rockstar_mp.worker.asgi import MetricsMiddleware

    return MetricsMiddleware(hello_app())


def instrumentator() -> Any:
    """prometheus-fastapi-instrumentator, its README's fast track."""
    from prometheus_fastapi_instrumentator import Instrumentator

    app = hello_app()
    Instrumentator().instrument(app).expose(app)
    return app


def exporter() -> Any:
    """starlette-exporter, its README's FastAPI usage."""
    from starlette_exporter import PrometheusMiddleware, handle_metrics

    app = hello_app()
    app.add_middleware(PrometheusMiddleware)
    app.add_route("/metrics", handle_metrics)
    return app
