"""The SNMP agent: a thread of its own reading the UDP socket, answering from a ``View`` (``tree.py``).

* Off the event loop: decoding, authentication and answers run in the agent's thread, so the HTTP server
  never waits for a datagram. The thread only reads immutable ``View``s; a view is built on the loop
  (which owns the aggregator's state) when the thread asks for a newer one (``view()``).
* Principal first: a v2c message's community (``fast.py``) or a v3 message's user and digest
  (``usm.py``) is checked before its var-binds are decoded, and a request holds at most
  ``respond.MAX_REQUEST_VARBINDS``; so a hostile datagram costs microseconds.
* Only the read community (v2c) and the configured USM users (v3) are answered. SNMPv1 and other
  versions are counted in snmpInBadVersions, other communities in snmpInBadCommunityNames, undecodable
  messages in snmpInASNParseErrs, the USM failures in their usmStats counters; nothing is logged for them.
* SET is answered noAccess; a response that would not fit in a datagram, tooBig.
* Notifications (``notify.py``) still use pysnmp, on a socket of their own, on the loop.

``start()`` binds the UDP socket itself (a busy port is an error here, not silence); ``stop()`` closes
everything. Both can be called again at runtime.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from ...snmp_settings import parse_base_oid, parse_engine_id, parse_trap_targets, parse_users
from .. import net
from ..state import AggregatorState
from . import ber
from .build import ViewBuilder
from .fast import V2c
from .tree import COUNTER32, View
from .usm import V3

if TYPE_CHECKING:
    from .notify import Notifier

log = logging.getLogger("rockstar_mp.aggregator")

BIND_RETRY_SECONDS = 10.0
RCVBUF = 1 << 20
POLL = 0.25  # how often the thread looks whether it should stop
VIEW_WAIT = 2.0  # seconds the thread waits for the loop to build a view (then serves the last one)
VIEW_MAX_AGE = 1.0  # seconds a view is served while nothing merged since (snapshot_max_age if larger)
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
ENGINE_ID_PREFIX = bytes.fromhex("80001f8805")  # enterprise 8072 (net-snmp), format 5: octets


def machine_id() -> bytes:
    """The machine's identity: systemd's machine-id, else the host name."""
    for path in MACHINE_ID_FILES:
        try:
            with open(path, "rb") as f:
                value = f.read().strip()
            if value:
                return value
        except OSError:
            continue
    return socket.gethostname().encode()


def engine_id(host: str, port: int, configured: str = "") -> bytes:
    """The SNMPv3 engine ID: ``snmp_engine_id`` if set, else derived from this machine, the address and
    the port (hashed: the machine-id is not to be shown), so no two agents share one."""
    if configured:
        return parse_engine_id(configured)
    digest = hashlib.sha256(b"rockstar-mp snmp engine\0" + machine_id() + f"\0{host}\0{port}".encode())
    return ENGINE_ID_PREFIX + digest.digest()[:12]


def bind_udp(host: str, port: int) -> socket.socket:
    return net.bind_udp(host, port, RCVBUF)


def preload() -> None:
    """Import now what the agent imports when it starts (pysnmp is only loaded when SNMP is on): the
    aggregator calls it before dropping root, after which the interpreter's files may be unreadable."""
    import cryptography.hazmat.primitives.ciphers  # noqa: F401
    import pyasn1.type.univ  # noqa: F401
    import pysnmp.carrier.asyncio.dgram.udp  # noqa: F401
    import pysnmp.entity.config  # noqa: F401
    import pysnmp.entity.engine  # noqa: F401
    import pysnmp.entity.rfc3413.ntforg  # noqa: F401
    import pysnmp.proto.rfc1902  # noqa: F401

    from . import notify  # noqa: F401
    pysnmp.entity.engine.SnmpEngine()  # loads its MIB modules, and the standard modules they import
    machine_id()


class Counters:
    """What the agent counted: requests answered, and messages refused by reason (as net-snmp's MIBs)."""

    def __init__(self) -> None:
        self.requests = 0
        self.gen_errors = 0
        self.busy_logged = False  # a genErr for want of a view (an overloaded loop) was logged
        self.bad_communities = 0  # snmpInBadCommunityNames
        self.bad_versions = 0  # snmpInBadVersions
        self.parse_errors = 0  # snmpInASNParseErrs
        self.unknown_security_models = 0
        self.invalid_msgs = 0
        self.refused_v3 = 0  # authenticated, but another context or below the user's level
        self.unsupported_sec_levels = 0  # the usmStats counters
        self.not_in_time_windows = 0
        self.unknown_user_names = 0
        self.unknown_engine_ids = 0
        self.wrong_digests = 0
        self.decryption_errors = 0
        self.unexpected = 0  # exceptions of our own while reading a datagram (logged once)


class SnmpAgent:
    """The agent over one ``AggregatorState``. ``await start()``, ``await stop()``; ``running``."""

    def __init__(self, state: AggregatorState) -> None:
        self.state = state
        self.config = state.config
        self.base = parse_base_oid(self.config.snmp_base_oid)
        self.users = parse_users(self.config.snmp_users)
        self.targets = parse_trap_targets(self.config.snmp_trap_targets, {u.name for u in self.users})
        self.builder = ViewBuilder(state, self.base, self._counter_values)
        self.counts = Counters()
        self.sock: socket.socket | None = None
        self.port: int | None = None
        self.engine_id: bytes | None = None
        self.v3: V3 | None = None
        self.error: str | None = None
        self.notifier: Notifier | None = None
        self._view: View | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._v2c: V2c | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def requests(self) -> int:
        return self.counts.requests

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self, retry_seconds: float = BIND_RETRY_SECONDS) -> None:
        if self._thread is not None:
            return
        deadline = time.monotonic() + retry_seconds
        while True:
            try:
                sock = bind_udp(self.config.host, self.config.snmp_port)
                break
            except OSError as exc:
                if time.monotonic() >= deadline:
                    self.error = f"cannot bind UDP {self.config.host}:{self.config.snmp_port}: {exc}"
                    log.error("rockstar-mp: SNMP agent not started: %s", self.error)
                    raise
                await asyncio.sleep(0.2)
        try:
            self._prepare(sock)
        except BaseException:
            sock.close()
            raise
        self.error = None
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="rockstar-snmp", daemon=True)
        self._thread.start()
        log.info("rockstar-mp: SNMP agent on udp://%s:%d (base %s, engine ID %s)", self.config.host, self.port,
                 ".".join(map(str, self.base)), (self.engine_id or b"").hex())
        if self.state.announce is not None and self.sock is not None:
            self.state.announce(f"serving-snmp {net.url_of(self.sock, '', 'udp')}")
        from .notify import Notifier
        self.notifier = Notifier(self)
        try:
            await self.notifier.start()
        except Exception:
            log.exception("rockstar-mp: SNMP notifications not started")

    def _prepare(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self.port = sock.getsockname()[1]
        self.engine_id = engine_id(self.config.host, self.port, self.config.snmp_engine_id)
        self._v2c = V2c(self.config.snmp_community, self.counts, self.view)
        self.v3 = V3(self.engine_id, self.users, self.counts, self.view)
        sock.settimeout(POLL)
        self.sock = sock

    async def stop(self) -> None:
        if self._thread is None:
            return
        if self.notifier is not None:
            await self.notifier.stop()
            self.notifier = None
        self._stopping.set()
        while self._thread.is_alive():  # the loop keeps running: a view the thread waits for gets built
            await asyncio.sleep(0.02)
        self._thread = None
        try:
            if self.sock is not None:
                self.sock.close()
        except OSError:
            pass
        self.sock = None
        self._view = None
        log.info("rockstar-mp: SNMP agent stopped")

    # -- the thread -------------------------------------------------------------------------------
    def _serve(self) -> None:
        sock, buffer = self.sock, bytearray(65536)
        assert sock is not None  # the thread starts after _prepare
        while not self._stopping.is_set():
            try:
                size, address = sock.recvfrom_into(buffer)
            except (socket.timeout, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. an ICMP error reported on the socket
            reply = self.handle(bytes(buffer[:size]))
            if reply is not None:
                try:
                    sock.sendto(reply, address)
                except OSError:
                    pass  # a full buffer or an unreachable manager: as any lost datagram

    def handle(self, data: bytes) -> bytes | None:
        """The answer to one datagram, or None (dropped, and counted)."""
        counts = self.counts
        try:
            end = len(data)
            start, stop = ber.expect(data, 0x30, 0, end)
            if stop != end:
                raise ber.Malformed
            s, e = ber.expect(data, 0x02, start, end)
            version = ber.to_int(data, s, e)
            # _v2c and v3 are set by _prepare: a datagram before it is a bug, counted as unexpected
            if version == 1:
                assert self._v2c is not None
                return self._v2c.handle(data, e, end)
            if version == 3:
                assert self.v3 is not None
                return self.v3.handle(data, e, end)
            counts.bad_versions += 1  # SNMPv1 (0) included: not served
            return None
        except (ber.Malformed, IndexError, ValueError, OverflowError):
            counts.parse_errors += 1
            return None
        except Exception:
            counts.parse_errors += 1
            counts.unexpected += 1
            if counts.unexpected == 1:  # a bug of ours: show it once, never flood the log
                log.exception("rockstar-mp: SNMP datagram not handled")
            return None

    # -- the view ---------------------------------------------------------------------------------
    def view(self) -> View:
        """The view to answer from: called in the agent's thread, it has the loop (which owns the state)
        build a new one when the HTTP side has merged since the last (an answer is never older than what
        the HTTP endpoints served last), or when the merge is older than ``VIEW_MAX_AGE`` (as snmpd caches
        its tables: a walk does not wait for a merge every ``snapshot_max_age``)."""
        view = self._view
        # read without the loop: an attribute read is atomic, and a snapshot is never changed in place
        snap = getattr(self.state, "_snapshot", None)
        if view is not None and view.snapshot is snap and snap is not None \
                and time.time() - snap.taken <= max(self.config.snapshot_max_age, VIEW_MAX_AGE):
            return view
        done: concurrent.futures.Future = concurrent.futures.Future()
        assert self._loop is not None  # set by _prepare, before the thread asking starts
        self._loop.call_soon_threadsafe(self._build_view, done)
        try:
            return done.result(VIEW_WAIT)
        except concurrent.futures.TimeoutError:
            if view is None:
                raise
            return view  # the loop is busy: the last view rather than no answer

    def _build_view(self, done: concurrent.futures.Future) -> None:
        try:
            snap = self.state.snapshot()
            view = self._view
            if view is None or view.snapshot is not snap:
                view = self._view = self.builder.build()
            done.set_result(view)
        except BaseException as exc:  # raised in the thread, which answers genErr and logs it
            done.set_exception(exc)

    def bad_counts(self) -> dict:
        c = self.counts
        return {"communities": c.bad_communities,
                "usm": (c.unknown_user_names + c.wrong_digests + c.decryption_errors + c.unsupported_sec_levels
                        + c.refused_v3),
                "versions": c.bad_versions,
                "parse": c.parse_errors + c.invalid_msgs + c.unknown_security_models}

    def _counter_values(self) -> dict:
        bad = self.bad_counts()
        c32 = 2 ** 32
        return {18: (COUNTER32, bad["communities"] % c32), 19: (COUNTER32, bad["usm"] % c32),
                20: (COUNTER32, bad["versions"] % c32), 21: (COUNTER32, bad["parse"] % c32),
                22: (COUNTER32, self.counts.requests % c32)}
