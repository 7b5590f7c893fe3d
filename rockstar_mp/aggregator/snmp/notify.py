"""Notifications (traps or informs, SNMPv2c or SNMPv3) to ``snmp_trap_targets``.

* ``rsmpWorkerDied``: any worker death. A worker that leaves the live set (crash, ``kill -9``,
  ``max_requests`` recycling, a graceful stop or scale-down), whether the master retired its slab or the
  aggregator found its process gone. Checked every ``WATCH_INTERVAL`` (0.25 s) against the merged
  snapshot, so it goes out well within 2 s of the death.
* ``rsmpAggregatorStarted``: sent when the agent starts; ``rsmpNotifyStarts`` > 1 means the aggregator
  was restarted on an existing segment.
* ``rsmpErrorRateHigh`` / ``rsmpLatencyHigh``: the 5xx share / p95 latency over
  ``snmp_threshold_window`` rose above ``snmp_error_rate_threshold`` / ``snmp_p95_threshold_ms``
  (checked once a second; sent again only after the value fell back below the threshold).
* ``rsmpWorkerRecycled``: a worker went over ``max_worker_memory``. The worker writes an entry in the
  segment header's ``recycles`` before it raises ``memory_recycles``, so each one is sent (checked every
  ``WATCH_INTERVAL``), however soon the worker exits; up to ``RECYCLE_SLOTS`` per check.
* ``rsmpWorkerMemoryGrowing``: a worker's memory slope over the history rose above
  ``leak_slope_threshold`` MiB an hour (checked once a second; once per worker).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

from ...segment.layout import RECYCLE_SLOTS, Header
from ..views import workload_json
from . import mibdef

log = logging.getLogger("rockstar_mp.aggregator")

WATCH_INTERVAL = 0.25
THRESHOLD_INTERVAL = 1.0
MIN_REQUESTS = 10  # no error-rate verdict on fewer requests than this in the window
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)


class Notifier:
    def __init__(self, agent) -> None:
        self.agent = agent
        self.oids = mibdef.oid_of(agent.base)
        self.sent: dict[str, int] = {}  # notification name -> sent (per target)
        self.errors = 0
        self.acknowledged = 0
        self._task: asyncio.Task | None = None
        self._names: list[str] = []
        self._originator = None
        self.engine = None  # pysnmp's engine, for notifications only
        self._v3_users: set[str] = set()
        self._high = {"rsmpErrorRateHigh": False, "rsmpLatencyHigh": False}
        self._recycles_seen = 0  # memory_recycles already notified (those before the agent started too)
        self._growing: set[int] = set()  # pids notified as growing

    async def start(self) -> None:
        if not self.agent.targets:
            return
        await self._configure()
        starts = self.agent.state.system_json(self.agent.state.snapshot())["aggregator_starts"]
        self.send("rsmpAggregatorStarted", rsmpNotifyStarts=("u", starts))
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.engine is not None:
            try:
                self.engine.close_dispatcher()
            except Exception:
                log.exception("rockstar-mp: closing the SNMP notification engine")
            self.engine = None

    async def _configure(self) -> None:
        """pysnmp's engine, with the agent's engine ID and boots, on a UDP socket of its own that takes
        datagrams (inform acknowledgements, discovery reports) from the targets only."""
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import ntforg
        from pysnmp.proto.api import v2c

        from .usm import AUTH_SERVICE, PRIV_SERVICE

        agent = self.agent
        self.engine = snmp_engine = engine.SnmpEngine(snmpEngineID=v2c.OctetString(agent.engine_id))
        (boots,) = snmp_engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
        boots.syntax = boots.syntax.clone(agent.v3.boots)
        senders = {address for t in agent.targets for address in _addresses(t.host, t.port)}

        class Transport(udp.UdpTransport):
            def datagram_received(self, datagram, address):
                if (address[0], address[1]) in senders:
                    super().datagram_received(datagram, address)

        # from the agent's own address, as snmpd's clientaddr: a receiver sees which agent sent it
        transport = Transport(loop=asyncio.get_running_loop()).open_client_mode((agent.config.host, 0))
        await transport._lport
        config.add_transport(snmp_engine, udp.DOMAIN_NAME, transport)
        levels = {u.name: u.level for u in agent.users}
        users = {u.name: u for u in agent.users}
        for i, target in enumerate(agent.targets):
            if target.version == "v2c":
                name, level, model = f"rockstar-notify-{i}", "noAuthNoPriv", 1
                # tied to the target's tag: pysnmp takes the acknowledgement of an inform only from a
                # community row whose tag the target's address carries
                config.add_v1_system(snmp_engine, name, target.secret, transportTag=f"rockstar-t{i}")
                config.add_vacm_user(snmp_engine, 2, name, level, notifySubTree=(1, 3, 6))
            else:
                user = users[target.secret]
                name, level, model = user.name, levels[user.name], 3
                if name not in self._v3_users:
                    self._v3_users.add(name)
                    config.add_v3_user(snmp_engine, name, getattr(config, AUTH_SERVICE.get(user.auth_protocol,
                                                                                         "USM_AUTH_NONE")),
                                       user.auth_key or None,
                                       getattr(config, PRIV_SERVICE.get(user.priv_protocol, "USM_PRIV_NONE")),
                                       user.priv_key or None)
                    config.add_vacm_user(snmp_engine, 3, name, level, notifySubTree=(1, 3, 6))
            config.add_target_parameters(snmp_engine, f"rockstar-p{i}", name, level, model)
            config.add_target_address(snmp_engine, f"rockstar-a{i}", udp.DOMAIN_NAME, (target.host, target.port),
                                      f"rockstar-p{i}", tagList=f"rockstar-t{i}", timeout=100, retryCount=2)
            config.add_notification_target(snmp_engine, f"rockstar-n{i}", f"rockstar-p{i}", f"rockstar-t{i}",
                                           "inform" if target.inform else "trap")
            self._names.append(f"rockstar-n{i}")
        self._originator = ntforg.NotificationOriginator()

    def send(self, notification: str, **objects) -> None:
        """Send ``notification`` with ``objects`` ({name: (kind "i"|"u", value)}) to every target."""
        if self._originator is None or self.engine is None:
            return
        from pysnmp.proto import rfc1902

        var_binds = [(SYS_UPTIME, rfc1902.TimeTicks(self.agent.builder.uptime_ticks())),
                     (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(self.oids[notification]))]
        for name, (kind, value) in objects.items():
            value = max(0, min(2 ** 32 - 1, int(value))) if kind == "u" else max(-2 ** 31, min(2 ** 31 - 1, int(value)))
            var_binds.append((self.oids[name] + (0,),
                              rfc1902.Unsigned32(value) if kind == "u" else rfc1902.Integer32(value)))
        for target in self._names:
            try:
                self._originator.send_varbinds(self.engine, target, None, b"", var_binds, self._done)
                self.sent[notification] = self.sent.get(notification, 0) + 1
            except Exception:
                self.errors += 1
                log.exception("rockstar-mp: sending SNMP notification %s failed", notification)

    def _done(self, engine, handle, error_indication, error_status, error_index, var_binds, ctx) -> None:
        """Called when a notification is done: sent (traps), acknowledged or timed out (informs)."""
        if error_indication:
            self.errors += 1
            log.warning("rockstar-mp: SNMP inform not acknowledged: %s", error_indication)
        else:
            self.acknowledged += 1

    async def _watch(self) -> None:
        state, config = self.agent.state, self.agent.config
        live: dict[int, int] | None = None
        next_threshold = 0.0
        self._recycles_seen = Header.memory_recycles.get(state.segment.buf)
        while True:
            try:
                now = {w.slot.pid: w.slot.age for w in state.snapshot().workers}
                self._recycles()
                if live is not None:
                    for pid in sorted(set(live) - set(now)):
                        self.send("rsmpWorkerDied", rsmpNotifyPid=("i", pid), rsmpNotifyAge=("u", live[pid]))
                live = now
                if time.monotonic() >= next_threshold:
                    next_threshold = time.monotonic() + THRESHOLD_INTERVAL
                    if config.snmp_error_rate_threshold or config.snmp_p95_threshold_ms:
                        self._thresholds()
                    if state.config.leak_slope_threshold:
                        self._growth(state.trends.slopes(), state.config.leak_slope_threshold, set(now))
            except Exception:
                log.exception("rockstar-mp: SNMP notification check failed")
            await asyncio.sleep(WATCH_INTERVAL)

    def _recycles(self) -> None:
        """One rsmpWorkerRecycled per recycle counted since the last look (the header keeps the last
        ``RECYCLE_SLOTS``)."""
        buf = self.agent.state.segment.buf
        count = Header.memory_recycles.get(buf)
        for index in range(max(self._recycles_seen, count - RECYCLE_SLOTS), count):
            i = index % RECYCLE_SLOTS
            self.send("rsmpWorkerRecycled", rsmpNotifyPid=("i", Header.recycle_pid[i].get(buf)),
                      rsmpNotifyValue=("u", Header.recycle_memory[i].get(buf) // 1024),
                      rsmpNotifyThreshold=("u", Header.recycle_limit[i].get(buf) // 1024))
        self._recycles_seen = count

    def _growth(self, slopes: dict[int, float], threshold: float, live: set[int]) -> None:
        """rsmpWorkerMemoryGrowing, once per worker whose slope (MiB an hour) is above ``threshold``."""
        self._growing &= live
        for pid, slope in sorted(slopes.items()):
            if slope > threshold and pid not in self._growing:
                self._growing.add(pid)
                self.send("rsmpWorkerMemoryGrowing", rsmpNotifyPid=("i", pid),
                          rsmpNotifyValue=("u", round(slope * 1024)),
                          rsmpNotifyThreshold=("u", round(threshold * 1024)))

    def _thresholds(self) -> None:
        config = self.agent.config
        workload = workload_json(self.agent.state, window=config.snmp_threshold_window)
        total = workload["total_requests"] or 0
        checks = []
        if config.snmp_error_rate_threshold and total >= MIN_REQUESTS:
            errors = workload["by_status"].get("5xx", {}).get("requests", 0)
            checks.append(("rsmpErrorRateHigh", errors / total, config.snmp_error_rate_threshold, 1e6))
        if config.snmp_p95_threshold_ms and workload["p95_ms"] is not None:
            checks.append(("rsmpLatencyHigh", workload["p95_ms"], config.snmp_p95_threshold_ms, 1e3))
        for name, value, threshold, scale in checks:
            if value > threshold and not self._high[name]:
                self._high[name] = True
                self.send(name, rsmpNotifyValue=("u", round(value * scale)),
                          rsmpNotifyThreshold=("u", round(threshold * scale)))
            elif value <= threshold:
                self._high[name] = False


def _addresses(host: str, port: int) -> set:
    """``(address, port)`` pairs ``host`` resolves to (the source of its acknowledgements)."""
    try:
        return {(info[4][0], port) for info in socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)}
    except OSError:
        return {(host, port)}
