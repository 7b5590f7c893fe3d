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
import re
import urllib.parse
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional, get_args, get_origin, get_type_hints

# Re-exported: these were defined here, and ``from rockstar_mp.config import parse_users`` keeps working.
from .snmp_settings import AUTH_PROTOCOLS as AUTH_PROTOCOLS
from .snmp_settings import PRIV_PROTOCOLS as PRIV_PROTOCOLS
from .snmp_settings import SnmpUser as SnmpUser
from .snmp_settings import TrapTarget as TrapTarget
from .snmp_settings import parse_base_oid as parse_base_oid
from .snmp_settings import parse_engine_id as parse_engine_id
from .snmp_settings import parse_trap_targets as parse_trap_targets
from .snmp_settings import parse_users as parse_users

ENV_PREFIX = "ROCKSTAR_"
HEARTBEAT_SECONDS = 1.0  # how often a worker beats (rockstar_mp/worker/attach.py)
MIN_SECONDS = 0.001  # the shortest interval or timeout accepted (5e-324 s overflowed the schedule)
REMOTE_WRITE_MIN_INTERVAL = 0.1  # seconds: each batch is one rendering of /metrics, and timestamps are in ms
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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
    admin_token: Optional[str] = None  # for /control and POST /optimize; auth_token if unset
    admin_open: bool = False  # let the admin endpoints work without any token (not recommended)
    # Protection of every endpoint.
    rate_limit: float = 100.0  # requests a second per client address (0 = no limit)
    rate_limit_burst: int = 200
    max_request_bytes: int = 65536
    request_timeout: float = 5.0  # seconds for a request body to arrive
    # Connections to every HTTP port (metrics, pprof); see rockstar_mp/aggregator/net.py.
    max_connections: int = 1024  # open at once per port; beyond: the longest idle one closes, or 503
    header_timeout: float = 10.0  # seconds for a request's line and headers to arrive (from connect)
    keepalive_timeout: float = 5.0  # seconds an idle keep-alive connection is kept
    max_header_count: int = 100  # request headers; more: 431
    max_header_bytes: int = 16384  # the request line and headers together; more: 431
    # Go-style profiling (off unless enabled).
    enable_pprof: bool = False
    pprof_path: str = "/debug/pprof"
    pprof_port: int = 6060
    pprof_max_seconds: float = 300.0  # ?seconds=N above this is refused (400)
    pprof_hz: int = 100  # sampling rate of the CPU, wall, block/mutex and trace samplers (1..1000)
    # auto (thread in sync and gthread workers, signal in gevent ones) | signal (SIGPROF in Python, the main
    # thread) | thread (every thread sampling itself in a C SIGPROF handler where it can, else the sampler
    # thread) | sampler (the sampler thread)
    pprof_cpu_mode: str = "auto"
    heap_tracemalloc_at_boot: bool = False  # tracemalloc on in every worker from the start (8-20x slower)
    pprof_heap_frames: int = 16  # frames tracemalloc keeps per allocation when started at boot
    # The SNMP agent.
    enable_snmp: bool = False
    snmp_port: int = 1161
    snmp_community: str = "public"
    # SNMPv3 USM users (see rockstar_mp.snmp_settings): a list of dicts
    # {"user", "auth_protocol", "auth_key", "priv_protocol", "priv_key"}, or the compact string
    # "user:SHA:authpass:AES:privpass,user2:..." ($ROCKSTAR_SNMP_USERS; a value starting with "[" is JSON).
    snmp_users: "str | list[str | dict[str, Any]]" = ""
    snmp_base_oid: str = "1.3.6.1.4.1.8072.9999.9999"  # the root of ROCKSTAR-MP-MIB (net-snmp's playpen)
    # Notification targets: "v2c:community@host:port" or "v3:user@host:port" (a user of snmp_users),
    # a "/inform" suffix for informs; comma-separated, or a list of such strings.
    snmp_trap_targets: "str | list[str]" = ""
    snmp_error_rate_threshold: float = 0.0  # 5xx share of requests over snmp_threshold_window; 0 = off
    snmp_p95_threshold_ms: float = 0.0  # p95 latency over snmp_threshold_window; 0 = off
    snmp_threshold_window: float = 30.0  # seconds (at most window_seconds)
    # The SNMPv3 engine ID, in hex (5..32 octets, "0x" allowed); empty: derived from /etc/machine-id,
    # host and snmp_port, so that no two agents share one.
    snmp_engine_id: str = ""
    snmp_contact: str = ""  # sysContact.0
    snmp_location: str = ""  # sysLocation.0
    # Scheduled garbage collection in the workers.
    enable_optimization: bool = False
    optimization_interval: float = 300.0
    optimization_spread: float = 1.0  # 0..1: the share of the interval the workers' turns spread over
    # gc.freeze() in the master before each fork: a worker's collections then never walk (and copy) the
    # pages it inherited. On by default: it costs the master nothing measurable (benchmarks figure 9).
    gc_freeze_before_fork: bool = True
    optimization_trim: bool = True  # malloc_trim(0) after a collection, when glibc's heap has pages to give back
    # A scheduled optimization waits while the server serves more than this many requests a second
    # (0: never waits), for at most optimization_max_deferral seconds.
    optimization_defer_rate: float = 0.0
    optimization_max_deferral: float = 60.0
    # A worker whose memory (MiB of max_worker_memory_kind: "uss" or "pss") goes over this finishes its
    # requests in progress and exits, and the master starts another (0: off).
    max_worker_memory: float = 0.0
    max_worker_memory_kind: str = "uss"
    # Leak hints: a worker whose memory grows faster than this (MiB an hour, over the history) is
    # notified once (rsmpWorkerMemoryGrowing); 0: off.
    leak_slope_threshold: float = 0.0
    # Where things live.
    host: str = "127.0.0.1"
    segment_dir: str = "/dev/shm"
    run_dir: Optional[str] = None  # control sockets, pid and history files; private per master if None
    # Started as root, the aggregator binds its ports, then runs as this user and group (names or ids;
    # default: gunicorn's --user/--group when the master runs as root). See rockstar_mp/privileges.py.
    aggregator_user: Optional[str] = None
    aggregator_group: Optional[str] = None
    # A failing aggregator is restarted after 0.2 s, then twice as long after each failure in a row, up to this.
    aggregator_restart_max_delay: float = 30.0
    # Sizes of the segment (fixed when the master creates it).
    max_workers: int = 64
    slab_max_series: int = 8192  # the workload sketches take a few series per route, status class, tenant
    slab_max_values: int = 32768
    retired_max_series: int = 8192
    retired_max_values: int = 65536
    record_slots: int = 1024  # workload records a worker's ring holds until the aggregator drains it
    log_slots: int = 256  # log records likewise
    # The workload sketches' dimensions in a worker (rockstar_mp/worker/workload.py): values beyond
    # these go under "other", counted in system.dimension_overflow.
    max_routes: int = 200  # distinct routes a worker keeps
    max_tenants: int = 200  # distinct tenants a worker keeps
    workload_max_cells: int = 16384  # slab cells the sketches may take (at most half of slab_max_values)
    # What workers record.
    capture_logs: bool = True  # a SlabLogHandler on the root logger and gunicorn's error logger
    log_level: str = "INFO"  # the lowest level the handler keeps
    # The aggregator's memory of recent things.
    recent_records: int = 1000  # workload records kept, newest first in /snmp and SNMP
    recent_logs: int = 1000
    window_seconds: float = 60.0  # the sliding window of /workload?window=1
    # The aggregator.
    snapshot_max_age: float = 0.1  # a scrape re-merges when the last merge is older than this (s)
    tick_interval: float = 0.25  # ticks (drain, fold, beat) this often while busy; idle: once a second (s)
    # A live worker whose heartbeat (every second, from its monitor thread) is older than this is stuck:
    # stopped (SIGSTOP, a debugger) or holding the GIL; a long request alone does not stop the beat (s).
    stuck_after: float = 10.0
    # The metrics history (SQLite, in the aggregator; served at {metrics_path}/history).
    history_interval: float = 10.0  # seconds between snapshots into the history; 0 turns history off
    history_retention: float = 86400.0  # points older than this many seconds are deleted
    history_path: Optional[str] = None  # the SQLite file; None: <run_dir>/history.sqlite3
    # Fleet push (rockstar_mp/aggregator/remote_write.py; needs `pip install 'rockstar-mp[remote-write]'`):
    # the merged series sent to a Prometheus remote-write endpoint, e.g. http://prom:9090/api/v1/write.
    remote_write_url: Optional[str] = None  # None: off
    remote_write_interval: float = 15.0  # seconds between batches (each is one rendering of /metrics)
    remote_write_timeout: float = 10.0  # seconds a POST may take before it is retried
    remote_write_bearer_token: Optional[str] = None  # sent as Authorization: Bearer (never logged)
    remote_write_username: Optional[str] = None  # basic auth, with remote_write_password (never logged)
    remote_write_password: Optional[str] = None
    remote_write_queue: int = 120  # batches kept while the receiver is unreachable; beyond: the oldest dropped
    remote_write_min_backoff: float = 0.5  # seconds before the first retry; doubles on each failure ...
    remote_write_max_backoff: float = 30.0  # ... up to this
    # Labels added to every series sent, "name=value,name2=value2"; job="rockstar-mp" and
    # instance="<hostname>:<metrics_port>" unless given here. A series' own label of the same name wins.
    remote_write_labels: str = ""

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
        self._check_memory_settings()
        if not 0 <= self.optimization_spread <= 1:
            raise ValueError(f"optimization_spread must be 0..1, got {self.optimization_spread!r}")
        if self.rate_limit < 0 or self.rate_limit_burst < 1 or self.max_request_bytes < 1:
            raise ValueError("rate_limit must be >= 0, rate_limit_burst and max_request_bytes >= 1")
        for name in ("max_connections", "max_header_count", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("optimization_interval", "snapshot_max_age", "tick_interval", "request_timeout",
                     "header_timeout", "keepalive_timeout"):
            value = getattr(self, name)
            if not MIN_SECONDS <= value < float("inf"):  # also refuses NaN and denormal intervals
                raise ValueError(f"{name} must be a number of seconds >= {MIN_SECONDS}, got {value!r}")
        if not HEARTBEAT_SECONDS < self.stuck_after < float("inf"):
            raise ValueError(f"stuck_after must be a number of seconds > {HEARTBEAT_SECONDS:g} (a worker beats "
                             f"once a second), got {self.stuck_after!r}")
        if not 0 <= self.history_interval < float("inf"):  # 0 means no history; also refuses NaN
            raise ValueError("history_interval must be a number of seconds >= 0 (0: history off), "
                             f"got {self.history_interval!r}")
        if not 0 < self.history_retention < float("inf"):
            raise ValueError("history_retention must be a positive number of seconds, "
                             f"got {self.history_retention!r}")
        self._check_snmp()
        if not 0 < self.pprof_max_seconds < float("inf"):
            raise ValueError(f"pprof_max_seconds must be a positive number of seconds, got {self.pprof_max_seconds!r}")
        if not 1 <= self.pprof_hz <= 1000:
            raise ValueError(f"pprof_hz must be 1..1000, got {self.pprof_hz}")
        if self.pprof_cpu_mode not in ("auto", "signal", "thread", "sampler"):
            raise ValueError(f"pprof_cpu_mode must be auto, signal, thread or sampler, got {self.pprof_cpu_mode!r}")
        if not 1.0 <= self.aggregator_restart_max_delay <= 3600.0:
            raise ValueError(f"aggregator_restart_max_delay must be 1..3600 s, got {self.aggregator_restart_max_delay}")
        if not 1 <= self.pprof_heap_frames <= 256:
            raise ValueError(f"pprof_heap_frames must be 1..256, got {self.pprof_heap_frames}")
        if not 1 <= self.max_workers <= 4096:
            raise ValueError("max_workers must be 1..4096 (it sizes the segment)")
        self._check_remote_write()

    def _check_remote_write(self) -> None:
        if self.remote_write_url is not None:
            check_remote_write_url(self.remote_write_url)
        if not REMOTE_WRITE_MIN_INTERVAL <= self.remote_write_interval < float("inf"):
            raise ValueError(f"remote_write_interval must be a number of seconds >= {REMOTE_WRITE_MIN_INTERVAL}, "
                             f"got {self.remote_write_interval!r}")
        for name in ("remote_write_timeout", "remote_write_min_backoff", "remote_write_max_backoff"):
            value = getattr(self, name)
            if not MIN_SECONDS <= value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds >= {MIN_SECONDS}, got {value!r}")
        if self.remote_write_max_backoff < self.remote_write_min_backoff:
            raise ValueError("remote_write_max_backoff must be >= remote_write_min_backoff")
        if self.remote_write_queue < 1:
            raise ValueError(f"remote_write_queue must be >= 1 (batches), got {self.remote_write_queue!r}")
        if self.remote_write_bearer_token and self.remote_write_username is not None:
            raise ValueError("set either remote_write_bearer_token or remote_write_username/password, not both")
        if (self.remote_write_username is None) != (self.remote_write_password is None):
            raise ValueError("remote_write_username and remote_write_password go together (basic auth)")
        parse_remote_write_labels(self.remote_write_labels)

    def _check_memory_settings(self) -> None:
        for name in ("optimization_defer_rate", "max_worker_memory", "leak_slope_threshold"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a number >= 0 (0: off), got {value!r}")
        if not MIN_SECONDS <= self.optimization_max_deferral < float("inf"):
            raise ValueError(f"optimization_max_deferral must be a number of seconds >= {MIN_SECONDS}, "
                             f"got {self.optimization_max_deferral!r}")
        if self.max_worker_memory_kind not in ("uss", "pss"):
            raise ValueError(f"max_worker_memory_kind must be 'uss' or 'pss', got {self.max_worker_memory_kind!r}")

    def _check_snmp(self) -> None:
        if not self.snmp_community:
            raise ValueError("snmp_community must not be empty")
        parse_base_oid(self.snmp_base_oid)
        if self.snmp_engine_id:
            parse_engine_id(self.snmp_engine_id)
        for name in ("snmp_contact", "snmp_location"):
            if len(getattr(self, name).encode("utf-8", "replace")) > 255:
                raise ValueError(f"{name} has at most 255 octets (a DisplayString)")
        users = parse_users(self.snmp_users)
        parse_trap_targets(self.snmp_trap_targets, {u.name for u in users})
        for name in ("snmp_error_rate_threshold", "snmp_p95_threshold_ms"):
            value = getattr(self, name)
            if not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a number >= 0 (0: off), got {value!r}")
        if self.snmp_error_rate_threshold > 1:
            raise ValueError("snmp_error_rate_threshold is a fraction of requests (0..1), "
                             f"got {self.snmp_error_rate_threshold!r}")
        if not 1 <= self.snmp_threshold_window <= self.window_seconds:
            raise ValueError(f"snmp_threshold_window must be 1..window_seconds ({self.window_seconds}), "
                             f"got {self.snmp_threshold_window!r}")

    def with_env(self, environ: Mapping[str, str] | None = None) -> "MonitoringConfig":
        """A copy with every ``ROCKSTAR_<FIELD>`` present in ``environ`` (default ``os.environ``) applied."""
        environ = os.environ if environ is None else environ
        changes: dict[str, Any] = {}  # by field name, each parsed to its field's annotation (not expressible)
        for field in fields(self):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                changes[field.name] = _parse(type(self), field.name, raw)
        return dataclasses.replace(self, **changes) if changes else self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "MonitoringConfig":
        return cls(**json.loads(text))

    def __repr__(self) -> str:  # never print the token
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for secret in ("auth_token", "admin_token", "remote_write_bearer_token", "remote_write_password"):
            if shown[secret]:
                shown[secret] = "***"
        if shown["snmp_users"]:
            shown["snmp_users"] = [f"{u.name}:***" for u in parse_users(self.snmp_users)]
        return "MonitoringConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def check_remote_write_url(url: str) -> None:
    """An http(s) URL with a host, and no credentials in it (they would be logged with it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"remote_write_url must be an http:// or https:// URL with a host, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("remote_write_url must not hold credentials: use remote_write_username and "
                         "remote_write_password (or remote_write_bearer_token)")


def parse_remote_write_labels(text: str) -> dict[str, str]:
    """``"region=eu,team=web"`` -> ``{"region": "eu", "team": "web"}`` (``remote_write_labels``).

    >>> parse_remote_write_labels("job=web,instance=host-1")
    {'job': 'web', 'instance': 'host-1'}
    """
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise ValueError(f"remote_write_labels: expected name=value pairs separated by commas (names "
                             f"[A-Za-z_][A-Za-z0-9_]*, not starting with __), got {item!r}")
        labels[name] = value.strip()
    return labels


EnvValue = bool | int | float | str | None  # what a ROCKSTAR_<FIELD> string parses to


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected 1/0/true/false/yes/no/on/off")


def _parse_optional_str(raw: str) -> str | None:
    return raw or None  # an empty variable unsets the field


def _parse_str(raw: str) -> str:
    return raw


def _is_str_or_list_union(kind: object) -> bool:
    """``str | list[...]``: settings whose string form validation parses (``snmp_users``, trap targets)."""
    args = get_args(kind)
    return str in args and all(arg is str or get_origin(arg) is list for arg in args)


def _env_parser(name: str, kind: object) -> Callable[[str], EnvValue]:
    """How a ``ROCKSTAR_<FIELD>`` string becomes a value of the field's type ``kind``."""
    if kind is bool:
        return _parse_bool
    if kind is int:
        return int
    if kind is float:
        return float
    if kind is str or _is_str_or_list_union(kind):
        return _parse_str
    if kind == Optional[str]:
        return _parse_optional_str
    raise TypeError(f"the setting {name} has the type {kind!r}, which ${ENV_PREFIX}{name.upper()} cannot be parsed to")


_ENV_PARSERS: dict[type[MonitoringConfig], dict[str, Callable[[str], EnvValue]]] = {}


def _env_parsers(cls: type[MonitoringConfig]) -> dict[str, Callable[[str], EnvValue]]:
    """``{field name: its parser}``, from the fields' real types, resolved once per class (a subclass may
    add fields)."""
    parsers = _ENV_PARSERS.get(cls)
    if parsers is None:  # two threads racing here compute the same table
        hints = get_type_hints(cls)
        parsers = _ENV_PARSERS[cls] = {field.name: _env_parser(field.name, hints[field.name])
                                       for field in fields(cls)}
    return parsers


_env_parsers(MonitoringConfig)  # at import: a field of a type without a parser fails here, not on an override


def _parse(cls: type[MonitoringConfig], name: str, raw: str) -> EnvValue:
    """``raw``, the value of ``$ROCKSTAR_<NAME>``, parsed to the type of the field ``name`` of ``cls``."""
    try:
        return _env_parsers(cls)[name](raw)
    except ValueError as exc:
        raise ValueError(f"${ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from None
