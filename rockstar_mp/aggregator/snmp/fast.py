"""The SNMPv2c fast path: well-formed v2c GET/GETNEXT/GETBULK requests with the read community are
decoded and answered here, without pysnmp's pyasn1 decoder (which costs ~0.5 ms a message).

Anything else, or anything unusual (another version, another community, a malformed or oddly encoded
message, another PDU type), returns None and goes to pysnmp unchanged, which answers SNMPv3, and
counts and drops the rest. So the fast path adds no acceptance rule of its own: it only answers what
pysnmp would answer, the same way.
"""
from __future__ import annotations

import hmac

from . import ber, respond

MAX_OID_ARCS = 128
MAX_VARBINDS_IN = 128
BUDGET = 16384  # bytes of var-binds in one GETBULK response


class Malformed(Exception):
    pass


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    if pos + 2 > end:
        raise Malformed
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise Malformed  # multi-octet tags: none in SNMP
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if not 1 <= n <= 3 or pos + n > end:
            raise Malformed  # indefinite or absurd lengths
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > end:
        raise Malformed
    return tag, pos, pos + length


def _int(data: bytes, start: int, stop: int) -> int:
    if not 1 <= stop - start <= 4:
        raise Malformed
    return int.from_bytes(data[start:stop], "big", signed=True)


def _oid(data: bytes, start: int, stop: int) -> tuple:
    if start >= stop:
        raise Malformed
    arcs, n, fresh = [], 0, True
    for byte in data[start:stop]:
        if fresh and byte == 0x80:
            raise Malformed  # a non-minimal arc
        n = (n << 7) | (byte & 0x7F)
        fresh = not byte & 0x80
        if fresh:
            arcs.append(n)
            n = 0
    if not fresh or len(arcs) >= MAX_OID_ARCS:
        raise Malformed
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    return head + tuple(arcs[1:])


def parse(data: bytes):
    """``(community, pdu kind, raw request-id TLV, a, b, [oid])`` of a v2c request, else ``Malformed``."""
    end = len(data)
    tag, start, stop = _tlv(data, 0, end)
    if tag != 0x30 or stop != end:
        raise Malformed
    tag, s, e = _tlv(data, start, stop)
    if tag != 0x02 or data[s:e] != b"\x01":
        raise Malformed  # not SNMPv2c
    tag, s, e = _tlv(data, e, stop)
    if tag != 0x04:
        raise Malformed
    community = data[s:e]
    kind, ps, pe = _tlv(data, e, stop)
    if kind not in (respond.GET, respond.GETNEXT, respond.GETBULK) or pe != stop:
        raise Malformed
    tag, s, e = _tlv(data, ps, pe)
    if tag != 0x02:
        raise Malformed
    _int(data, s, e)
    request_id = data[ps:e]
    tag, s, e = _tlv(data, e, pe)
    if tag != 0x02:
        raise Malformed
    a = _int(data, s, e)
    tag, s, e = _tlv(data, e, pe)
    if tag != 0x02:
        raise Malformed
    b = _int(data, s, e)
    tag, pos, list_end = _tlv(data, e, pe)
    if tag != 0x30 or list_end != pe:
        raise Malformed
    oids = []
    while pos < list_end:
        tag, s, vb_end = _tlv(data, pos, list_end)
        if tag != 0x30 or len(oids) >= MAX_VARBINDS_IN:
            raise Malformed
        tag, os_, oe = _tlv(data, s, vb_end)
        if tag != 0x06:
            raise Malformed
        oids.append(_oid(data, os_, oe))
        tag, s, e = _tlv(data, oe, vb_end)
        if e != vb_end:
            raise Malformed
        pos = vb_end
    return community, kind, request_id, a, b, oids


class FastPath:
    def __init__(self, agent, community: str) -> None:
        self.agent = agent
        self.community = community.encode()
        self.answered = 0

    def handle(self, data: bytes) -> bytes | None:
        """The response to send, or None: pysnmp takes the message."""
        try:
            community, kind, request_id, a, b, oids = parse(data)
        except (Malformed, IndexError, ValueError):
            return None
        if not hmac.compare_digest(community, self.community):
            return None  # pysnmp counts the bad community (or refuses a notification-only one)
        agent = self.agent
        agent.requests += 1
        status = b"\x02\x01\x00\x02\x01\x00"
        try:
            if kind == respond.GETBULK:
                encoded = respond.answer(agent.view(), kind, oids, a, b, BUDGET)
            else:
                encoded = respond.answer(agent.view(), kind, oids)
        except Exception:
            agent.gen_errors += 1
            agent.log_failure()
            encoded = [ber.varbind(oid, ber.NULL) for oid in oids]
            status = b"\x02\x01\x05\x02\x01\x01"  # genErr, index 1
        self.answered += 1
        pdu = ber.tlv(0xA2, request_id + status + ber.varbind_list(encoded))
        return ber.tlv(0x30, b"\x02\x01\x01" + ber.tlv(0x04, community) + pdu)
