"""The control plane in the segment, shared by the master and the aggregator: runtime overrides of the
config, and optimization requests and results.

Runtime control: which endpoints and features are on, changed while everything runs.

The overrides are JSON in the segment header (``Header.control_json``), so they survive an aggregator
restart and both the master (``MonitoringManager.enable_pprof()``...) and the aggregator (``POST
/control``) can set them. The aggregator applies them on its tick (every 0.25 s), so a disabled
endpoint answers 404 within a second.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass

from .config import MonitoringConfig
from .segment import LIVE, Segment
from .segment.layout import CONTROL_BYTES, Body, Header

CONTROLLABLE = ("enable_metrics", "metrics_path", "enable_pprof", "pprof_path", "enable_snmp", "snmp_port",
                "snmp_community", "enable_optimization", "optimization_interval", "optimization_spread",
                "optimization_defer_rate", "optimization_max_deferral")


def read_overrides(segment: Segment) -> dict:
    """The overrides in force ({} before any, or while a writer is mid-write)."""
    length = Header.control_length.get(segment.buf)
    if not 0 < length <= CONTROL_BYTES:
        return {}
    try:
        data = json.loads(Header.control_json.get(segment.buf)[:length])
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if k in CONTROLLABLE} if isinstance(data, dict) else {}


# what a JSON value of each controllable setting's type may be
_ACCEPTED: dict[type, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
_TYPES = {name: kind for name, kind in typing.get_type_hints(MonitoringConfig).items() if name in CONTROLLABLE}


def apply_overrides(config: MonitoringConfig, overrides: dict) -> MonitoringConfig:
    """``config`` with ``overrides``; raises ValueError (saying which) for unknown or invalid values."""
    unknown = sorted(set(overrides) - set(CONTROLLABLE))
    if unknown:
        raise ValueError(f"cannot change {unknown} at runtime; the controllable settings are {list(CONTROLLABLE)}")
    for name, value in overrides.items():
        kind = _TYPES[name]
        if not isinstance(value, _ACCEPTED[kind]) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{name} must be {kind.__name__}, got {value!r}")
    return dataclasses.replace(config, **overrides)  # __post_init__ validates the result


def write_overrides(segment: Segment, base: MonitoringConfig, changes: dict) -> MonitoringConfig:
    """Merge ``changes`` into the stored overrides (validated against ``base``); returns the result."""
    with segment.locked():
        merged = {**read_overrides(segment), **changes}
        config = apply_overrides(base, merged)
        raw = json.dumps(merged, separators=(",", ":")).encode()
        if len(raw) > CONTROL_BYTES:
            raise ValueError("runtime control settings too long")
        Header.control_length.set(segment.buf, 0)  # invalid while the text changes
        Header.control_json.set(segment.buf, raw)
        Header.control_length.set(segment.buf, len(raw))
    return config


# -- optimization ---------------------------------------------------------------------------------
def request_optimization(segment: Segment, pids: set[int] | None = None) -> list[int]:
    """Ask live workers (all, or those in ``pids``) to optimize now; returns the pids asked."""
    asked = []
    with segment.locked():  # the master and the aggregator both raise these counters
        for slot in segment.slots():
            if slot.state != LIVE or not slot.pid or (pids is not None and slot.pid not in pids):
                continue
            base = segment.geometry.slab_offset(slot.slab)
            Body.optimize_requested.set(segment.buf, Body.optimize_requested.get(segment.buf, base) + 1, base)
            asked.append(slot.pid)
    return asked


@dataclass(frozen=True)
class WorkerOptimization:
    """The spec's OptimizationStats for one worker (memory figures in bytes: ``memory_*`` are RSS, then USS
    and PSS, the fair share of a forked worker's memory)."""

    pid: int
    optimization_count: int
    last_optimization: float
    memory_before: int
    memory_after: int
    uss_before: int
    uss_after: int
    seconds: float
    collected: tuple
    pss_before: int = 0
    pss_after: int = 0
    trimmed: int = 0
    skipped: int = 0

    @property
    def memory_freed(self) -> int:
        return max(0, self.memory_before - self.memory_after)

    def to_json(self) -> dict:
        return {"pid": self.pid, "optimization_count": self.optimization_count,
                "last_optimization": self.last_optimization or None, "memory_before": self.memory_before,
                "memory_after": self.memory_after, "memory_freed": self.memory_freed,
                "rss_before": self.memory_before, "rss_after": self.memory_after,
                "uss_before": self.uss_before, "uss_after": self.uss_after,
                "uss_freed": max(0, self.uss_before - self.uss_after),
                "pss_before": self.pss_before, "pss_after": self.pss_after,
                "pss_freed": max(0, self.pss_before - self.pss_after),
                "trimmed": self.trimmed, "skipped": self.skipped,
                "last_pause_ms": round(self.seconds * 1000, 3), "collected": list(self.collected)}


def read_worker(segment: Segment, slab: int, pid: int) -> WorkerOptimization:
    buf, base = segment.buf, segment.geometry.slab_offset(slab)
    return WorkerOptimization(
        pid, Body.optimize_count.get(buf, base), Body.optimize_last.get(buf, base),
        Body.optimize_rss_before.get(buf, base), Body.optimize_rss_after.get(buf, base),
        Body.optimize_uss_before.get(buf, base), Body.optimize_uss_after.get(buf, base),
        Body.optimize_seconds.get(buf, base), tuple(f.get(buf, base) for f in Body.optimize_collected),
        Body.optimize_pss_before.get(buf, base), Body.optimize_pss_after.get(buf, base),
        Body.optimize_trimmed.get(buf, base), Body.optimize_skipped.get(buf, base))


@dataclass(frozen=True)
class OptimizationStats:
    """The spec's OptimizationStats, summed over workers; bytes. ``memory_*`` are RSS (the spec's figure);
    USS and PSS before and after beside them (PSS is the fair figure for forked workers).

    >>> manager.get_optimization_stats().pss_before
    """

    last_optimization: float | None
    optimization_count: int
    memory_before: int
    memory_after: int
    memory_freed: int
    uss_before: int = 0
    uss_after: int = 0
    pss_before: int = 0
    pss_after: int = 0


def totals(workers: list[WorkerOptimization]) -> dict:
    return {"optimization_count": sum(w.optimization_count for w in workers),
            "last_optimization": max((w.last_optimization for w in workers), default=0.0) or None,
            "memory_before": sum(w.memory_before for w in workers),
            "memory_after": sum(w.memory_after for w in workers),
            "memory_freed": sum(w.memory_freed for w in workers),
            **{name: sum(getattr(w, name) for w in workers)
               for name in ("uss_before", "uss_after", "pss_before", "pss_after", "trimmed", "skipped")}}
