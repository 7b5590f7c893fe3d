"""Request PDUs in, response PDUs out: GET, GETNEXT and GETBULK answered from a ``View``; SET refused
with noAccess (no principal may write, as snmpd answers a read-only community or user); a response that
would not fit answered with tooBig. Shared by the SNMPv2c (``fast.py``) and SNMPv3 (``usm.py``) paths,
which authenticate the message before anything here decodes its var-binds.
"""
from __future__ import annotations

import logging
from typing import Callable, NamedTuple

from . import ber

log = logging.getLogger("rockstar_mp.aggregator")

GET, GETNEXT, RESPONSE, SET, GETBULK, INFORM, TRAP, REPORT = 0xA0, 0xA1, 0xA2, 0xA3, 0xA5, 0xA6, 0xA7, 0xA8
V1_TRAP = 0xA4
REQUESTS = (GET, GETNEXT, SET, GETBULK)
NOT_REQUESTS = (RESPONSE, V1_TRAP, INFORM, TRAP, REPORT)  # well-formed, but nothing for a responder
NO_ERROR, TOO_BIG, GEN_ERR, NO_ACCESS = 0, 1, 5, 6
MAX_VARBINDS = 512  # per GETBULK response (the response size usually caps it first)
MAX_REQUEST_VARBINDS = 1024  # more in one request: tooBig, before any look-up (bounds a packet's work)
MAX_MESSAGE = 65507  # the largest UDP payload over IPv4: no response may be larger
BULK_BUDGET = 16384  # bytes of var-binds in one GETBULK response


class Request(NamedTuple):
    """A decoded request PDU. ``oids`` is None when it has more than ``MAX_REQUEST_VARBINDS``."""
    kind: int
    request_id: bytes  # the request-id TLV, copied into the response as it came
    a: int  # non-repeaters (GETBULK), else error-status
    b: int  # max-repetitions (GETBULK), else error-index
    oids: list | None
    varbinds: bytes  # the var-bind list TLV as it came (echoed by error responses)


def parse_pdu(data: bytes, pos: int, end: int) -> Request | None:
    """The request PDU filling ``data[pos:end]``; None for a well-formed PDU that is not a request
    (a response, a trap, a report); ``ber.Malformed`` for anything else."""
    kind, ps, pe = ber.read(data, pos, end)
    if pe != end:
        raise ber.Malformed
    if kind in NOT_REQUESTS:
        return None
    if kind not in REQUESTS:
        raise ber.Malformed
    s, e = ber.expect(data, 0x02, ps, pe)
    ber.to_int(data, s, e)
    request_id = data[ps:e]
    s, e = ber.expect(data, 0x02, e, pe)
    a = ber.to_int(data, s, e)
    s, e = ber.expect(data, 0x02, e, pe)
    b = ber.to_int(data, s, e)
    list_start = e
    pos, list_end = ber.expect(data, 0x30, e, pe)
    if list_end != pe:
        raise ber.Malformed
    oids: list[tuple] = []
    while pos < list_end:
        if len(oids) == MAX_REQUEST_VARBINDS:
            return Request(kind, request_id, a, b, None, b"\x30\x00")
        s, vb_end = ber.expect(data, 0x30, pos, list_end)
        os_, oe = ber.expect(data, 0x06, s, vb_end)
        oids.append(ber.to_oid(data, os_, oe))
        if ber.read(data, oe, vb_end)[2] != vb_end:
            raise ber.Malformed
        pos = vb_end
    return Request(kind, request_id, a, b, oids, data[list_start:list_end])


def response_pdu(request_id: bytes, status: int, index: int, varbinds: bytes) -> bytes:
    """A Response-PDU; ``varbinds`` is the encoded var-bind list TLV."""
    return ber.tlv(RESPONSE, request_id + ber.int32(status) + ber.int32(index) + varbinds)


def respond(request: Request, view: Callable, room: int, counts) -> bytes:
    """The Response-PDU to ``request``, at most ``room`` bytes (tooBig when the answer would not fit).
    ``view()`` gives the ``View`` to answer from; ``counts`` has ``requests`` and ``gen_errors``."""
    counts.requests += 1
    pdu = _response(request, view, room, counts)
    if len(pdu) > room:
        return response_pdu(request.request_id, TOO_BIG, 0, b"\x30\x00")
    return pdu


def _response(request: Request, view: Callable, room: int, counts) -> bytes:
    if request.oids is None:
        return response_pdu(request.request_id, TOO_BIG, 0, b"\x30\x00")
    if request.kind == SET:
        return response_pdu(request.request_id, NO_ACCESS, 1, request.varbinds)
    try:
        if request.kind == GETBULK:
            budget = min(BULK_BUDGET, room - len(request.request_id) - 24)
            encoded = answer(view(), GETBULK, request.oids, request.a, request.b, budget)
        else:
            encoded = answer(view(), request.kind, request.oids)
    except TimeoutError:  # no view yet, and the loop too busy to build one: overload, not a bug
        counts.gen_errors += 1
        if not counts.busy_logged:
            counts.busy_logged = True
            log.warning("rockstar-mp: SNMP answered genErr: the aggregator was too busy to build its first "
                        "view in time (logged once)")
        return response_pdu(request.request_id, GEN_ERR, 1, request.varbinds)
    except Exception:  # a bug of ours, not the request's: say so, answer genErr
        counts.gen_errors += 1
        log.exception("rockstar-mp: SNMP request failed")
        return response_pdu(request.request_id, GEN_ERR, 1, request.varbinds)
    return response_pdu(request.request_id, NO_ERROR, 0, ber.varbind_list(encoded))


def _next(view, oid: tuple):
    """(the next OID, its encoded var-bind, whether it is endOfMibView)."""
    found = view.next(oid)
    if found is None:
        return oid, ber.varbind(oid, ber.END_OF_MIB_VIEW), True
    return found[0], ber.varbind(found[0], ber.value(found[1])), False


def answer(view, kind: int, requested: list, non_repeaters: int = 0, max_repetitions: int = 0,
           budget: int = 1400) -> list:
    """The response's encoded var-binds. ``budget``: bytes the var-binds may take (GETBULK stops there)."""
    if kind == GET:
        out = []
        for oid in requested:
            found = view.get(oid)
            if found is None:
                value = ber.NO_SUCH_INSTANCE if view.exists(oid) else ber.NO_SUCH_OBJECT
            else:
                value = ber.value(found)
            out.append(ber.varbind(oid, value))
        return out
    if kind == GETNEXT:
        return [_next(view, oid)[1] for oid in requested]
    # GETBULK (RFC 3416 4.2.3), stopping at the first all-endOfMibView repetition
    repetitions = max(0, max_repetitions)
    n = min(max(0, non_repeaters), len(requested))
    out = []
    for oid in requested[:n]:
        out.append(_next(view, oid)[1])
        budget -= len(out[-1])
    last = requested[n:]
    r = len(last)
    if r == 1:  # the common walk: one repeater, read the view in order
        name = last[0]
        for name, found in view.after(last[0]):
            if not repetitions or len(out) >= MAX_VARBINDS:
                return out
            vb = ber.varbind(name, ber.value(found))
            if len(vb) > budget and len(out) > n:
                return out  # it would not fit: the manager asks again from here
            budget -= len(vb)
            out.append(vb)
            repetitions -= 1
        if repetitions and len(out) < MAX_VARBINDS:
            out.append(ber.varbind(name, ber.END_OF_MIB_VIEW))
        return out
    while r and repetitions and len(out) + r <= MAX_VARBINDS:
        row = [_next(view, oid) for oid in last]
        cost = sum(len(vb) for _, vb, _ in row)
        if cost > budget and len(out) > n:
            break
        budget -= cost
        out.extend(vb for _, vb, _ in row)
        if all(end for _, _, end in row):
            break
        last = [name for name, _, _ in row]
        repetitions -= 1
    return out
