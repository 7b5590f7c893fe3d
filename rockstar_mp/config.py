"""``MonitoringConfig``: every setting, its default, and its ``ROCKSTAR_<FIELD>`` environment override.

Precedence: environment variable > value given in code > default. So one ``gunicorn_conf.py`` serves
many deployments::

    ROCKSTAR_METRICS_PORT=9191 ROCKSTAR_REQUIRE_AUTH=1 ROCKSTAR_AUTH_TOKEN=s3cret \\
        gunicorn -c gunicorn_conf.py app:app
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, fields
from typing import Mapping, Optional

ENV_PREFIX = "ROCKSTAR_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class MonitoringConfig:
    """Settings of the monitoring, shared by the master, the workers and the aggregator.

    >>> MonitoringConfig(metrics_port=9191, require_auth=True, auth_token="s3cret")
    """

    # The metrics endpoint (the aggregator's HTTP server).
    enable_metrics: bool = True
    metrics_path: str = "/metrics"
    metrics_port: int = 9090
    require_auth: bool = False
    auth_token: Optional[str] = None
    # Go-style profiling (off unless enabled).
    enable_pprof: bool = False
    pprof_path: str = "/debug/pprof"
    pprof_port: int = 6060
    # The SNMP agent.
    enable_snmp: bool = False
    snmp_port: int = 1161
    snmp_community: str = "public"
    # Scheduled garbage collection in the workers.
    enable_optimization: bool = False
    optimization_interval: float = 300.0
    # Where things live.
    host: str = "127.0.0.1"
    segment_dir: str = "/dev/shm"
    run_dir: Optional[str] = None  # control sockets, pid and history files; private per master if None
    # Sizes of the segment (fixed when the master creates it).
    max_workers: int = 64
    slab_max_series: int = 2048
    slab_max_values: int = 16384
    retired_max_series: int = 8192
    retired_max_values: int = 65536
    record_slots: int = 1024  # workload records a worker's ring holds until the aggregator drains it
    log_slots: int = 256  # log records likewise
    # What workers record.
    capture_logs: bool = True  # a SlabLogHandler on the root logger and gunicorn's error logger
    log_level: str = "INFO"  # the lowest level the handler keeps
    # The aggregator's memory of recent things.
    recent_records: int = 1000  # workload records kept, newest first in /snmp and SNMP
    recent_logs: int = 1000
    window_seconds: float = 60.0  # the sliding window of /workload?window=1
    # The aggregator.
    snapshot_max_age: float = 0.1  # a scrape re-merges when the last merge is older than this (s)
    tick_interval: float = 0.25  # folding of dead workers, heartbeat, liveness (s)
    # The metrics history (SQLite, in the aggregator; served at {metrics_path}/history).
    history_interval: float = 10.0  # seconds between snapshots into the history; 0 turns history off
    history_retention: float = 86400.0  # points older than this many seconds are deleted
    history_path: Optional[str] = None  # the SQLite file; None: <run_dir>/history.sqlite3

    def __post_init__(self) -> None:
        for name in ("metrics_path", "pprof_path"):
            value = getattr(self, name)
            if not value.startswith("/") or value != value.rstrip("/") and value != "/":
                raise ValueError(f"{name} must start with '/' and not end with one, got {value!r}")
        for name in ("metrics_port", "pprof_port", "snmp_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be 0..65535, got {getattr(self, name)}")
        if self.require_auth and not self.auth_token:
            raise ValueError("require_auth needs auth_token (or $ROCKSTAR_AUTH_TOKEN)")
        for name in ("optimization_interval", "snapshot_max_age", "tick_interval"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):  # also refuses NaN
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if not 0 <= self.history_interval < float("inf"):  # 0 means no history; also refuses NaN
            raise ValueError("history_interval must be a number of seconds >= 0 (0: history off), "
                             f"got {self.history_interval!r}")
        if not 0 < self.history_retention < float("inf"):
            raise ValueError("history_retention must be a positive number of seconds, "
                             f"got {self.history_retention!r}")
        if not 1 <= self.max_workers <= 4096:
            raise ValueError("max_workers must be 1..4096 (it sizes the segment)")

    def with_env(self, environ: Mapping[str, str] | None = None) -> "MonitoringConfig":
        """A copy with every ``ROCKSTAR_<FIELD>`` present in ``environ`` (default ``os.environ``) applied."""
        environ = os.environ if environ is None else environ
        changes = {}
        for field in fields(self):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                changes[field.name] = _parse(field.name, field.type, raw)
        return dataclasses.replace(self, **changes) if changes else self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "MonitoringConfig":
        return cls(**json.loads(text))

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        if shown["auth_token"]:
            shown["auth_token"] = "***"
        return "MonitoringConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def _parse(name: str, kind, raw: str):
    kind = str(kind)
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected 1/0/true/false/yes/no/on/off")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Optional[str]":
            return raw or None
        return raw
    except ValueError as exc:
        raise ValueError(f"${ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
