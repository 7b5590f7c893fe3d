"""SNMPv2c messages: the community is checked before anything else of the message is decoded, so a
wrong community costs the same few microseconds whatever the message carries.

``V2c.handle(data, version_end)`` is called by the agent once the message's version said 1 (v2c); it
returns the response to send, or None (dropped; the reason is counted in the agent's counters).
"""
from __future__ import annotations

import hmac

from . import ber, respond


class V2c:
    """The SNMPv2c path of an agent: ``counts`` is the agent's ``Counters``; ``view()`` its view."""

    def __init__(self, community: str, counts, view) -> None:
        self.community = community.encode()
        self.counts = counts
        self.view = view

    def handle(self, data: bytes, pos: int, end: int) -> bytes | None:
        """The response to the v2c message whose community starts at ``data[pos]``, or None."""
        s, e = ber.expect(data, 0x04, pos, end)
        if not hmac.compare_digest(data[s:e], self.community):
            self.counts.bad_communities += 1
            return None
        request = respond.parse_pdu(data, e, end)
        if request is None:
            return None  # a response or a trap sent to the agent: nothing to answer
        header = b"\x02\x01\x01" + ber.octets(self.community)
        room = respond.MAX_MESSAGE - len(header) - 8
        pdu = respond.respond(request, self.view, room, self.counts)
        return ber.tlv(0x30, header + pdu)
