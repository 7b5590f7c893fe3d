"""The SNMP agent: pysnmp's engine (transport, SNMPv2c communities, SNMPv3 USM) on the aggregator's loop,
with our own read-only command responder over a ``View`` (``tree.py``).

* Requests go through pysnmp's message processing and security (community check, USM authentication
  and decryption); our responder then answers GET, GETNEXT and GETBULK from the view alone. The engine's
  own MIB tree (which holds community strings and USM keys) is never consulted: the default SNMP
  context is replaced by an empty one and nothing else reads it.
* Only the read community (v2c) and the configured USM users (v3) are answered. Any other principal
  (SNMPv1, a notification-only community) is dropped and counted, like pysnmp's own bad-community and
  USM counters, which the view serves as ``rsmpSnmpBad*``.
* GETBULK stops at the first repetition that is all endOfMibView and at the response size the manager
  allows (pysnmp's stock responder repeats endOfMibView max-repetitions times and rescans the tree).
* Any exception while answering becomes a genErr response (pysnmp would drop the request).
* SNMPv2c fast path (``fast.py``): well-formed v2c requests with the read community are decoded and
  answered without pysnmp (its pyasn1 decoder caps it near 900 GETs/s); everything else goes to pysnmp.
  Both paths answer from ``respond.answer`` and encode var-binds with ``ber.py``.

``start()`` binds the UDP socket itself (a busy port is an error here, not silence) and creates the
engine inside the running loop; ``stop()`` closes everything. Both can be called again at runtime.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time

from ...config import parse_base_oid, parse_trap_targets, parse_users
from .. import net
from ..state import AggregatorState
from . import ber, respond
from .fast import FastPath
from .tree import COUNTER32, View, ViewBuilder

log = logging.getLogger("rockstar_mp.aggregator")

BIND_RETRY_SECONDS = 10.0
RCVBUF = 1 << 20

AUTH = {"NONE": "USM_AUTH_NONE", "MD5": "USM_AUTH_HMAC96_MD5", "SHA": "USM_AUTH_HMAC96_SHA",
        "SHA224": "USM_AUTH_HMAC128_SHA224", "SHA256": "USM_AUTH_HMAC192_SHA256",
        "SHA384": "USM_AUTH_HMAC256_SHA384", "SHA512": "USM_AUTH_HMAC384_SHA512"}
PRIV = {"NONE": "USM_PRIV_NONE", "DES": "USM_PRIV_CBC56_DES", "3DES": "USM_PRIV_CBC168_3DES",
        "AES": "USM_PRIV_CFB128_AES", "AES192": "USM_PRIV_CFB192_AES", "AES256": "USM_PRIV_CFB256_AES"}
READ_SECURITY_NAME = "rockstar-ro"


def engine_id(port: int) -> bytes:
    """Fixed per port: enterprise 8072 (net-snmp), format 4 (text), "rockstar-mp:<port>"."""
    return bytes.fromhex("80001f8804") + f"rockstar-mp:{port}".encode()


def bind_udp(host: str, port: int) -> socket.socket:
    return net.bind_udp(host, port, RCVBUF)


def preload() -> None:
    """Import now what the agent imports when it starts (pysnmp is only loaded when SNMP is on): the
    aggregator calls it before dropping root, after which the interpreter's files may be unreadable."""
    import pyasn1.type.univ  # noqa: F401
    import pysnmp.carrier.asyncio.dgram.udp  # noqa: F401
    import pysnmp.entity.config  # noqa: F401
    import pysnmp.entity.engine  # noqa: F401
    import pysnmp.entity.rfc3413.cmdrsp  # noqa: F401
    import pysnmp.entity.rfc3413.context  # noqa: F401
    import pysnmp.entity.rfc3413.ntforg  # noqa: F401
    import pysnmp.proto.api.v2c  # noqa: F401
    import pysnmp.proto.rfc1902  # noqa: F401
    import pysnmp.proto.rfc1905  # noqa: F401
    import pysnmp.smi.builder  # noqa: F401
    import pysnmp.smi.instrum  # noqa: F401

    from . import notify  # noqa: F401
    pysnmp.entity.engine.SnmpEngine()  # loads its MIB modules, and the standard modules they import


class SnmpAgent:
    """The agent over one ``AggregatorState``. ``await start()``, ``await stop()``; ``running``."""

    def __init__(self, state: AggregatorState) -> None:
        self.state = state
        self.config = state.config
        self.base = parse_base_oid(self.config.snmp_base_oid)
        self.users = parse_users(self.config.snmp_users)
        self.targets = parse_trap_targets(self.config.snmp_trap_targets, {u.name for u in self.users})
        self.builder = ViewBuilder(state, self.base, self._counter_values)
        self.engine = None
        self.sock: socket.socket | None = None
        self.port: int | None = None
        self.error: str | None = None
        self.notifier = None
        self._view: View | None = None
        self._transport = None
        self._responder = None
        # our own counts, beside pysnmp's
        self.refused = 0  # authenticated, but not a reader (v1, a notification community)
        self.requests = 0
        self.gen_errors = 0
        self.fast_path = True  # SNMPv2c requests decoded by us (fast.py); False: everything via pysnmp

    @property
    def running(self) -> bool:
        return self.engine is not None

    # -- life cycle -------------------------------------------------------------------------------
    async def start(self, retry_seconds: float = BIND_RETRY_SECONDS) -> None:
        if self.engine is not None:
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
            await self._start_engine(sock)
        except BaseException:
            sock.close()
            self.engine = None
            raise
        self.error = None
        log.info("rockstar-mp: SNMP agent on udp://%s:%d (base %s)", self.config.host, self.port,
                 ".".join(map(str, self.base)))
        from .notify import Notifier
        self.notifier = Notifier(self)
        self.notifier.start()

    async def _start_engine(self, sock: socket.socket) -> None:
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.entity import config, engine
        from pysnmp.entity.rfc3413 import context
        from pysnmp.proto.api import v2c
        from pysnmp.smi.builder import MibBuilder
        from pysnmp.smi.instrum import MibInstrumController

        loop = asyncio.get_running_loop()
        self.port = sock.getsockname()[1]
        snmp_engine = engine.SnmpEngine(snmpEngineID=v2c.OctetString(engine_id(self.port)))
        fast, agent = FastPath(self, self.config.snmp_community), self

        class Transport(udp.UdpTransport):
            def datagram_received(self, datagram, address):
                reply = fast.handle(datagram) if agent.fast_path else None
                if reply is None:
                    super().datagram_received(datagram, address)
                else:
                    self.transport.sendto(reply, address)

        transport = Transport(loop=loop).open_server_mode(sock=sock)
        await transport._lport  # the endpoint exists once this is done
        config.add_transport(snmp_engine, udp.DOMAIN_NAME, transport)
        config.add_v1_system(snmp_engine, READ_SECURITY_NAME, self.config.snmp_community)
        for user in self.users:
            config.add_v3_user(snmp_engine, user.name, getattr(config, AUTH[user.auth_protocol]),
                               user.auth_key or None, getattr(config, PRIV[user.priv_protocol]),
                               user.priv_key or None)
        config.add_context(snmp_engine, "")
        snmp_context = context.SnmpContext(snmp_engine)
        # A private, empty tree for the default context: the engine's own (with the community and USM
        # tables) is never reachable through a context, whatever the responders do.
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", MibInstrumController(MibBuilder()))
        self.engine, self._transport, self.sock = snmp_engine, transport, sock
        self._responder = Responder(self, snmp_engine, snmp_context)
        self._context = snmp_context

    async def stop(self) -> None:
        if self.engine is None:
            return
        if self.notifier is not None:
            await self.notifier.stop()
            self.notifier = None
        try:
            self._responder.close(self.engine)
        except Exception:
            pass
        try:
            self.engine.close_dispatcher()
        except Exception:
            log.exception("rockstar-mp: closing the SNMP engine")
        try:
            self.sock.close()
        except OSError:
            pass
        self.engine = self._transport = self._responder = self.sock = None
        self._view = None
        log.info("rockstar-mp: SNMP agent stopped")

    # -- the view ---------------------------------------------------------------------------------
    def view(self) -> View:
        """The view of the current merge (``state.snapshot()``, as the HTTP endpoints use): rebuilt only
        when the merge was redone, so an answer is never older than the JSON served at that moment."""
        view = self._view
        if view is None or view.snapshot is not self.state.snapshot():
            view = self._view = self.builder.build()
        return view

    @staticmethod
    def log_failure() -> None:
        log.exception("rockstar-mp: SNMP request failed")

    def _mib_value(self, module: str, name: str) -> int:
        try:
            (symbol,) = self.engine.get_mib_builder().import_symbols(module, name)
            return int(symbol.syntax)
        except Exception:
            return 0

    def bad_counts(self) -> dict:
        if self.engine is None:
            return {"communities": 0, "usm": 0, "versions": 0, "parse": 0}
        usm = sum(self._mib_value("__SNMP-USER-BASED-SM-MIB", n) for n in (
            "usmStatsUnknownUserNames", "usmStatsWrongDigests", "usmStatsDecryptionErrors",
            "usmStatsUnsupportedSecLevels"))
        return {"communities": self._mib_value("__SNMPv2-MIB", "snmpInBadCommunityNames") + self.refused,
                "usm": usm,
                "versions": self._mib_value("__SNMPv2-MIB", "snmpInBadVersions"),
                "parse": self._mib_value("__SNMPv2-MIB", "snmpInASNParseErrs")}

    def _counter_values(self) -> dict:
        bad = self.bad_counts()
        c32 = 2 ** 32
        return {18: (COUNTER32, bad["communities"] % c32), 19: (COUNTER32, bad["usm"] % c32),
                20: (COUNTER32, bad["versions"] % c32), 21: (COUNTER32, bad["parse"] % c32),
                22: (COUNTER32, self.requests % c32)}


class Responder:
    """GET / GETNEXT / GETBULK over the agent's view (a pysnmp ``CommandResponderBase``)."""

    def __new__(cls, agent: SnmpAgent, snmp_engine, snmp_context):
        from pysnmp.entity.rfc3413 import cmdrsp
        from pysnmp.proto import rfc1905
        from pysnmp.proto.api import v2c
        from pyasn1.type import univ

        kinds = {rfc1905.GetRequestPDU.tagSet: respond.GET, rfc1905.GetNextRequestPDU.tagSet: respond.GETNEXT,
                 rfc1905.GetBulkRequestPDU.tagSet: respond.GETBULK}

        class _Responder(cmdrsp.CommandResponderBase):
            SUPPORTED_PDU_TYPES = (rfc1905.GetRequestPDU.tagSet, rfc1905.GetNextRequestPDU.tagSet,
                                   rfc1905.GetBulkRequestPDU.tagSet)

            def __init__(self) -> None:
                super().__init__(snmp_engine, snmp_context)
                self._max_size = 1472
                self._readers = {(2, READ_SECURITY_NAME)} | {(3, u.name) for u in agent.users}

            def process_pdu(self, snmpEngine, messageProcessingModel, securityModel, securityName,
                            securityLevel, contextEngineId, contextName, pduVersion, PDU,
                            maxSizeResponseScopedPDU, stateReference):
                name = bytes(securityName).decode("utf-8", "replace") if securityName is not None else ""
                if messageProcessingModel == 0 or (securityModel, name) not in self._readers \
                        or bytes(contextName):
                    agent.refused += 1  # dropped without an answer
                    return
                self._max_size = int(maxSizeResponseScopedPDU)
                super().process_pdu(snmpEngine, messageProcessingModel, securityModel, securityName,
                                    securityLevel, contextEngineId, contextName, pduVersion, PDU,
                                    maxSizeResponseScopedPDU, stateReference)

            def handle_management_operation(self, snmpEngine, stateReference, contextName, PDU):
                agent.requests += 1
                try:
                    encoded = self._answer(PDU)
                    status = 0
                except Exception:
                    agent.gen_errors += 1
                    log.exception("rockstar-mp: SNMP request failed")
                    encoded = [ber.varbind(tuple(oid), ber.NULL) for oid, _ in v2c.apiPDU.get_varbinds(PDU)]
                    status = "genErr"
                response = self._CommandResponderBase__pendingReqs[stateReference][7]
                v2c.apiPDU.set_error_status(response, status)
                v2c.apiPDU.set_error_index(response, 1 if status else 0)
                # the var-bind list, encoded by us: pyasn1 copies the bytes through
                response.setComponentByPosition(3, univ.Any(ber.varbind_list(encoded)), verifyConstraints=False,
                                                matchTags=False, matchConstraints=False)
                self.send_pdu(snmpEngine, stateReference, response)
                self.release_state_information(stateReference)

            def _answer(self, PDU) -> list:
                requested = [tuple(oid) for oid, _ in v2c.apiPDU.get_varbinds(PDU)]
                kind = kinds[PDU.tagSet]
                if kind != respond.GETBULK:
                    return respond.answer(agent.view(), kind, requested)
                return respond.answer(agent.view(), kind, requested,
                                      int(v2c.apiBulkPDU.get_non_repeaters(PDU)),
                                      int(v2c.apiBulkPDU.get_max_repetitions(PDU)), self._max_size - 64)

        return _Responder()
