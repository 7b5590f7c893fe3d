"""Answering GET, GETNEXT and GETBULK from a ``View``: encoded var-binds, ready for a response PDU.

Shared by the pysnmp responder (SNMPv3, and whatever the fast path passes on) and the SNMPv2c fast path.
"""
from __future__ import annotations

from . import ber

GET, GETNEXT, GETBULK = 0xA0, 0xA1, 0xA5
MAX_VARBINDS = 512  # per GETBULK response (the response size usually caps it first)


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
