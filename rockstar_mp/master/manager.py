"""``MonitoringManager``: what the master (the pre-fork parent) runs.

It creates the segment (or re-attaches the one a previous master exported, as after gunicorn's USR2),
hands out slabs before each fork, retires them when a worker exits, and supervises the aggregator.
The calls made from the arbiter's per-worker hooks (``assign_slab``, ``retire_slab``) take
microseconds; ``start``, ``reload`` and ``stop`` wait for the aggregator (up to a few seconds).

Example, any pre-fork server::

    manager = MonitoringManager(MonitoringConfig(metrics_port=9090))
    manager.start()
    for _ in range(4):
        slab = manager.assign_slab()
        if os.fork() == 0:
            rockstar_mp.attach_worker(manager.segment, *slab)
            serve_forever()
    ...
    manager.stop()
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

from .. import safefs
from ..config import MonitoringConfig
from ..control import (
    OptimizationStats,
    apply_overrides,
    read_overrides,
    read_worker,
    request_optimization,
    totals,
    write_overrides,
)
from ..environment import RUN_DIR_ENV, SEGMENT_ENV, SEGMENT_FD_ENV
from ..privileges import resolve
from ..segment import LIVE, Geometry, RockstarError, Segment, stale_segments
from ..segment.layout import heap_bytes_for
from .supervisor import AggregatorSupervisor

log = logging.getLogger("rockstar_mp.master")


def geometry_for(config: MonitoringConfig) -> Geometry:
    return Geometry(n_slabs=config.max_workers, slab_max_series=config.slab_max_series,
                    slab_heap_bytes=heap_bytes_for(config.slab_max_series), slab_max_values=config.slab_max_values,
                    retired_max_series=config.retired_max_series,
                    retired_heap_bytes=heap_bytes_for(config.retired_max_series),
                    retired_max_values=config.retired_max_values, record_slots=config.record_slots,
                    log_slots=config.log_slots)


def _inheritable(inherited: str, configured: str | None) -> bool:
    """May a re-executed master (USR2) keep its parent's run dir? If it is private, and still where the
    configured ``run_dir`` says (the directory itself or one made inside it)."""
    if not safefs.is_private_dir(inherited):
        return False
    if configured is None:
        return safefs.is_temp_run_dir(inherited)
    return inherited == configured or os.path.dirname(inherited) == configured


class MonitoringManager:
    """Owns the segment and the aggregator for one pre-fork master."""

    def __init__(self, config: MonitoringConfig | None = None) -> None:
        self.config = (config or MonitoringConfig()).with_env()
        self.segment: Segment | None = None
        self.run_dir: str | None = None
        self._own_run_dir = False
        self._supervisor: AggregatorSupervisor | None = None
        self._pid = 0
        self.run_as = _aggregator_identity(self.config)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "MonitoringManager":
        """Create or re-attach the segment and start the aggregator. Call once, before forking."""
        if self.segment is not None:
            return self
        self._pid = os.getpid()
        self.segment = self._open_segment()
        reattached = bool(self.segment.masters())
        self.segment.register_master(self._pid)
        os.environ[SEGMENT_ENV] = self.segment.path
        self._open_run_dir(inherit=reattached)
        self._grant_run_dir()
        self._write_aggregator_config()
        self._supervisor = AggregatorSupervisor(self.segment.path, self._config_path(), self.segment.fileno(),
                                                self.run_as, self.config.aggregator_restart_max_delay)
        self._supervisor.start()
        return self

    def _open_segment(self) -> Segment:
        inherited = os.environ.get(SEGMENT_ENV)
        fd = _inherited_fd(os.environ.pop(SEGMENT_FD_ENV, ""))
        if inherited and (fd is not None or os.path.exists(inherited)):
            try:
                segment = Segment.attach(inherited, fd=fd)  # a re-executed master (USR2) carries the totals on
                if os.getpid() not in segment.masters():
                    return segment
                segment.close()  # another manager of this very process owns it: make our own
            except (OSError, RockstarError) as exc:
                log.warning("rockstar-mp: not re-attaching %s (%s); creating a new segment", inherited, exc)
        for path in stale_segments(self.config.segment_dir):
            log.info("rockstar-mp: removing %s, left by a master that died", path)
            _remove_segment_files(path)
        return Segment.create(self.config.segment_dir, geometry_for(self.config))

    def _open_run_dir(self, inherit: bool) -> None:
        """Pick the run dir (private: see ``safefs.effective_run_dir``), export it for the workers and a
        re-executed master, and remove what dead masters left in it (their configs hold the tokens)."""
        configured = os.path.abspath(self.config.run_dir) if self.config.run_dir else None
        inherited = os.environ.get(RUN_DIR_ENV) if inherit else None
        if inherited and _inheritable(inherited, configured):
            self.run_dir, self._own_run_dir = inherited, safefs.is_temp_run_dir(inherited)
        elif configured:
            self.run_dir, self._own_run_dir = safefs.effective_run_dir(configured)
        else:
            self.run_dir, self._own_run_dir = safefs.new_temp_run_dir(tempfile.gettempdir()), True
        os.environ[RUN_DIR_ENV] = self.run_dir  # workers find their control socket directory here
        parents = [tempfile.gettempdir()] + ([configured] if configured else [])
        safefs.remove_dead_masters_leftovers(self.run_dir, parents)

    def _grant_run_dir(self) -> None:
        """The aggregator (and gunicorn's workers) run as ``run_as``: they keep history and control
        sockets in the run dir, so it is theirs (root, the master, can use it anyway)."""
        if self.run_as is None or self.run_dir is None or not self._own_run_dir:
            return
        os.chown(self.run_dir, *self.run_as)

    def _config_path(self) -> str:
        assert self.run_dir is not None
        name = os.path.basename(self.segment.path) if self.segment else str(self._pid)
        return os.path.join(self.run_dir, f"aggregator-{self._pid}-{name}.json")

    def _write_aggregator_config(self) -> None:
        """The config goes to the aggregator in a 0600 file, never on its command line (ps shows argv)."""
        safefs.write_atomic(self._config_path(), self.config.to_json().encode())

    def reload(self, config: MonitoringConfig) -> None:
        """Apply a new config (gunicorn HUP): the aggregator restarts with it; the segment stays."""
        self.config = config.with_env()
        self.run_as = _aggregator_identity(self.config)
        if self._supervisor is None or self.segment is None:
            return  # not started (the two are set together)
        self._write_aggregator_config()
        self._supervisor.stop()
        self._supervisor = AggregatorSupervisor(self.segment.path, self._config_path(), self.segment.fileno(),
                                                self.run_as, self.config.aggregator_restart_max_delay)
        self._supervisor.start()

    def stop(self) -> None:
        """Stop the aggregator; remove the segment unless another master still uses it."""
        if self.segment is None or os.getpid() != self._pid:
            return
        if self._supervisor is not None:
            self._supervisor.stop()
        others = self.segment.unregister_master(self._pid)
        path = self.segment.path
        with contextlib.suppress(OSError):
            os.unlink(self._config_path())
        self.segment.close()
        self.segment = None
        if not others:
            _remove_segment_files(path)
            if self._own_run_dir and self.run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            for name in (SEGMENT_ENV, RUN_DIR_ENV):
                os.environ.pop(name, None)

    # -- slabs ----------------------------------------------------------------------------------
    def assign_slab(self, age: int | None = None) -> tuple[int, int]:
        """Reserve a slab for the worker about to be forked: ``(slab, generation)``."""
        assert self.segment is not None, "start() the manager first"
        return self.segment.claim_slab(age=age, master_pid=os.getpid())

    def retire_slab(self, slab: int, generation: int) -> bool:
        """The worker of that tenancy exited: its counts will be folded into the retired totals."""
        return self.segment is not None and self.segment.retire_slab(slab, generation)

    @property
    def aggregator_pid(self) -> int:
        return self._supervisor.pid if self._supervisor else 0

    # -- runtime control (kept in the segment; the aggregator applies it within a tick) -------------
    def _control(self, **changes) -> MonitoringConfig:
        assert self.segment is not None, "start() the manager first"
        return write_overrides(self.segment, self.config, {k: v for k, v in changes.items() if v is not None})

    def enable_metrics_endpoint(self, path: str | None = None) -> None:
        """Serve the metrics (and the views beside them) again, optionally at a new path."""
        self._control(enable_metrics=True, metrics_path=path)

    def disable_metrics_endpoint(self) -> None:
        """The metrics path and the views answer 404 (within a second)."""
        self._control(enable_metrics=False)

    def enable_pprof(self, path: str | None = None) -> None:
        self._control(enable_pprof=True, pprof_path=path)

    def disable_pprof(self) -> None:
        self._control(enable_pprof=False)

    def enable_snmp(self, port: int | None = None, community: str | None = None) -> None:
        self._control(enable_snmp=True, snmp_port=port, snmp_community=community)

    def disable_snmp(self) -> None:
        self._control(enable_snmp=False)

    def enable_optimization(self, interval: float | None = None) -> None:
        self._control(enable_optimization=True, optimization_interval=interval)

    def disable_optimization(self) -> None:
        self._control(enable_optimization=False)

    def runtime_config(self) -> MonitoringConfig:
        """The config with the runtime changes applied (what the aggregator serves by)."""
        assert self.segment is not None, "start() the manager first"
        return apply_overrides(self.config, read_overrides(self.segment))

    # -- optimization -------------------------------------------------------------------------------
    def optimize_now(self, pid: int | None = None) -> list[int]:
        """Ask every live worker (or one) to collect garbage now; returns the pids asked. Like
        ``kill -USR1`` but without gunicorn's log reopen."""
        assert self.segment is not None, "start() the manager first"
        return request_optimization(self.segment, {pid} if pid is not None else None)

    def get_optimization_stats(self, per_worker: bool = False):
        """The spec's ``OptimizationStats`` summed over live workers (or a list, one per worker)."""
        assert self.segment is not None, "start() the manager first"
        workers = [read_worker(self.segment, s.slab, s.pid) for s in self.segment.slots()
                   if s.state == LIVE and s.pid]
        if per_worker:
            return workers
        total = totals(workers)
        return OptimizationStats(total["last_optimization"], total["optimization_count"],
                                 total["memory_before"], total["memory_after"], total["memory_freed"],
                                 total["uss_before"], total["uss_after"], total["pss_before"], total["pss_after"])


def _aggregator_identity(config: MonitoringConfig) -> tuple[int, int] | None:
    """Whom a root master's aggregator runs as (None: as the master)."""
    if os.geteuid() != 0:
        return None
    return resolve(config.aggregator_user, config.aggregator_group)


def _inherited_fd(spec: str) -> int | None:
    """The segment descriptor a re-executing master left open for us ("fd:dev:inode"), if it is
    still that file (so a segment whose path was deleted is carried on too)."""
    try:
        fd, dev, ino = (int(part) for part in spec.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return None
    if (st.st_dev, st.st_ino) != (dev, ino):
        return None
    os.set_inheritable(fd, False)
    return fd


def _remove_segment_files(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
