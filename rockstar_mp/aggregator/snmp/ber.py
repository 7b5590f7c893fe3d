"""A small BER encoder and decoder for SNMP messages (X.690 definite lengths; the SNMP application types).

pyasn1 costs ~100 us per var-bind (making the objects, then encoding them) and ~0.5 ms to decode a
message; these functions cost a few us. Encoding is on every answer's path: short lengths and small
integers take the shortest way.
"""
from __future__ import annotations

from functools import lru_cache

from .tree import COUNTER32, COUNTER64, GAUGE32, INT, OID, STRING, TICKS, UINT

TAG = {INT: 0x02, STRING: 0x04, OID: 0x06, COUNTER32: 0x41, GAUGE32: 0x42, UINT: 0x42, TICKS: 0x43,
       COUNTER64: 0x46}
NO_SUCH_OBJECT = b"\x80\x00"
NO_SUCH_INSTANCE = b"\x81\x00"
END_OF_MIB_VIEW = b"\x82\x00"
NULL = b"\x05\x00"


def length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def tlv(tag: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return bytes((tag,)) + length(n) + payload


def _sub(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


@lru_cache(maxsize=4096)
def _payload(value: tuple) -> bytes:
    if len(value) < 2:
        value = tuple(value) + (0,) * (2 - len(value))
    return _sub(value[0] * 40 + value[1]) + b"".join(_sub(n) for n in value[2:])


def oid(value: tuple) -> bytes:
    """An OBJECT IDENTIFIER; the encoding of all but the last arc is cached (column prefixes)."""
    if len(value) <= 2:
        return tlv(0x06, _payload(tuple(value)))
    last = value[-1]
    return tlv(0x06, _payload(value[:-1]) + (bytes((last,)) if last < 0x80 else _sub(last)))


def integer(tag: int, n: int, signed: bool) -> bytes:
    if 0 <= n < 0x80:
        return bytes((tag, 1, n))
    if signed:
        size = max(1, (n + (n < 0)).bit_length() // 8 + 1)
        return bytes((tag, size)) + n.to_bytes(size, "big", signed=True)
    size = n.bit_length() // 8 + 1  # a leading zero octet when the top bit is set
    return bytes((tag, size)) + n.to_bytes(size, "big")


def value(kind_value) -> bytes:
    kind, v = kind_value
    if kind == STRING:
        return tlv(0x04, v)
    if kind == OID:
        return oid(v)
    return integer(TAG[kind], int(v), kind == INT)


def varbind(name: tuple, encoded_value: bytes) -> bytes:
    return tlv(0x30, oid(name) + encoded_value)


def varbind_list(encoded: list) -> bytes:
    return tlv(0x30, b"".join(encoded))


# -- decoding (requests) ---------------------------------------------------------------------------
MAX_OID_ARCS = 128
MAX_ARC = 2 ** 32 - 1  # SNMP sub-identifiers are 32-bit


class Malformed(Exception):
    """The bytes are not the BER this agent accepts (counted as a parse error, never logged)."""


def read(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """``(tag, start, stop)`` of the TLV at ``pos``, which must end by ``end`` (definite lengths only)."""
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
        size = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        size = first
    if pos + size > end:
        raise Malformed
    return tag, pos, pos + size


def expect(data: bytes, tag: int, pos: int, end: int) -> tuple[int, int]:
    """``(start, stop)`` of the TLV at ``pos``, which must have ``tag``."""
    found, start, stop = read(data, pos, end)
    if found != tag:
        raise Malformed
    return start, stop


def to_int(data: bytes, start: int, stop: int) -> int:
    """A 32-bit INTEGER's value (every integer of a request header or PDU fits)."""
    if not 1 <= stop - start <= 4:
        raise Malformed
    return int.from_bytes(data[start:stop], "big", signed=True)


def to_oid(data: bytes, start: int, stop: int) -> tuple:
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
        elif n > MAX_ARC:
            raise Malformed
    if not fresh or len(arcs) > MAX_OID_ARCS or arcs[-1] > MAX_ARC:
        raise Malformed
    first = arcs[0]
    head = (first // 40, first % 40) if first < 80 else (2, first - 80)
    return head + tuple(arcs[1:])


def octets(value: bytes) -> bytes:
    return tlv(0x04, value)


def int32(n: int) -> bytes:
    return integer(0x02, n, True)
