"""The traffic figures the dashboard charts over hours: extra rows of every history snapshot.

The history stores the JSON metrics, where the workload sketches are hidden, so without these rows a
chart of the last day could show request counts but no latency. Each snapshot adds, overall and for
every route and tenant value:

- ``rockstar.traffic.requests`` and ``rockstar.traffic.errors`` (5xx): lifetime counters, charted as
  rates (the difference between two points over their time apart);
- ``rockstar.traffic.p50_ms``, ``p95_ms``, ``p99_ms``: gauges, the quantiles over the snapshot's
  interval (the sliding window's samples), so each point says how fast that stretch of time was.

Per value the name is labelled: ``rockstar.traffic.requests{route="/users/{name}"}``. Names starting
``rockstar`` are reserved for our own declarations, so they meet no application's series.
"""
from __future__ import annotations

from typing import Mapping

from ..views import workload_json
from ..workload import aggregates, sketch_totals

PREFIX = "rockstar.traffic."
QUANTILE_FIELDS = ("p50_ms", "p95_ms", "p99_ms")
DIMENSIONS = ("route", "tenant")
MIN_WINDOW = 2.0  # seconds the quantiles of a snapshot cover at least


def labelled(name: str, dimension: str | None = None, value: str | None = None) -> str:
    """``rockstar.traffic.<name>``, labelled like a JSON metrics key when ``dimension`` is given."""
    if dimension is None or value is None:
        return PREFIX + name
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'{PREFIX}{name}{{{dimension}="{escaped}"}}'


def traffic_rows(state) -> Mapping[str, tuple]:
    """``{name: (kind, value)}`` to add to a history snapshot (``HistoryWriter.extra_rows``)."""
    config = state.config
    # the window's samples are a second apart: over 1 s its baseline may be the sample just taken
    window = min(max(MIN_WINDOW, float(config.history_interval or MIN_WINDOW)), float(state.window.seconds))
    snap = state.snapshot()
    lifetime = aggregates(snap, sketch_totals(snap), dims=("status",) + DIMENSIONS)
    recent = workload_json(state, window)
    errors = lifetime["status"].get("5xx", {}).get("requests", 0)
    rows: dict[str, tuple] = {
        labelled("requests"): ("counter", float(sum(v["requests"] for v in lifetime["status"].values()))),
        labelled("errors"): ("counter", float(errors)),
    }
    _quantile_rows(rows, recent, None, None)
    for dimension in DIMENSIONS:
        for value, summary in lifetime[dimension].items():
            rows[labelled("requests", dimension, value)] = ("counter", float(summary["requests"]))
        for value, summary in recent[f"by_{dimension}"].items():
            _quantile_rows(rows, summary, dimension, value)
    return rows


def _quantile_rows(rows: dict, summary: dict, dimension: str | None, value: str | None) -> None:
    for field in QUANTILE_FIELDS:
        if summary.get(field) is not None:
            rows[labelled(field, dimension, value)] = ("gauge", float(summary[field]))


