"""The SNMP settings of ``MonitoringConfig`` parsed and validated: USM users, notification targets, the
base OID and the engine ID.

A module of its own, importing only the standard library, so that ``MonitoringConfig`` (loaded by the
master, the workers and the aggregator) validates them alike without loading pysnmp or aggregator code;
the aggregator's SNMP agent (``rockstar_mp/aggregator/snmp/``) parses them again from here to run them.
"""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

__all__ = ["AUTH_PROTOCOLS", "PRIV_PROTOCOLS", "SnmpUser", "TrapTarget", "parse_base_oid", "parse_engine_id",
           "parse_trap_targets", "parse_users"]

class SnmpUser(NamedTuple):
    """One SNMPv3 USM user. Protocols: auth SHA (= SHA1), SHA224, SHA256, SHA384, SHA512, MD5 or NONE;
    priv AES (= AES128), AES192, AES256, DES, 3DES or NONE. Keys are passphrases of 8+ characters."""

    name: str
    auth_protocol: str
    auth_key: str
    priv_protocol: str
    priv_key: str

    @property
    def level(self) -> str:
        """The USM security level the user's protocols give."""
        if self.auth_protocol == "NONE":
            return "noAuthNoPriv"
        return "authNoPriv" if self.priv_protocol == "NONE" else "authPriv"


class TrapTarget(NamedTuple):
    """One destination of notifications (``snmp_trap_targets``)."""

    version: str  # "v2c" or "v3"
    secret: str  # the community (v2c) or the USM user name (v3)
    host: str
    port: int
    inform: bool


AUTH_PROTOCOLS = ("NONE", "MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512")
PRIV_PROTOCOLS = ("NONE", "DES", "3DES", "AES", "AES128", "AES192", "AES256")


def _entries(value: object, what: str) -> list[Any]:
    """The entries of a list setting given as a list, a JSON list, or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{what}: bad JSON: {exc}") from None
        else:
            return [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a string or a list, got {type(value).__name__}")
    return list(value)


def parse_users(value: object) -> list[SnmpUser]:
    """``snmp_users`` as ``SnmpUser``s: "name:AUTH:authkey:PRIV:privkey" strings (comma-separated in one
    string; keys cannot contain ':' or ',' there: use the JSON/list form) or dicts with those fields."""
    users: list[SnmpUser] = []
    for entry in _entries(value, "snmp_users"):
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 3:
                parts += ["NONE", ""]
            if len(parts) != 5:
                raise ValueError("snmp_users entries are 'name:AUTH:authkey:PRIV:privkey' "
                                 f"(or 'name:AUTH:authkey'), got {len(parts)} fields")
            entry = dict(zip(("user", "auth_protocol", "auth_key", "priv_protocol", "priv_key"), parts, strict=True))
        if not isinstance(entry, dict):
            raise ValueError(f"snmp_users entries must be strings or dicts, got {type(entry).__name__}")
        unknown = set(entry) - {"user", "name", "auth_protocol", "auth_key", "priv_protocol", "priv_key"}
        if unknown:
            raise ValueError(f"snmp_users: unknown keys {sorted(unknown)}")
        name = str(entry.get("user") or entry.get("name") or "")
        auth = str(entry.get("auth_protocol") or "SHA").upper()
        priv = str(entry.get("priv_protocol") or ("AES" if entry.get("priv_key") else "NONE")).upper()
        user = SnmpUser(name, auth, str(entry.get("auth_key") or ""), "AES" if priv == "AES128" else priv,
                        str(entry.get("priv_key") or ""))
        if not name or len(name) > 32:
            raise ValueError(f"snmp_users: a user name must have 1..32 characters, got {name!r}")
        if auth not in AUTH_PROTOCOLS or priv not in PRIV_PROTOCOLS:
            raise ValueError(f"snmp_users: user {name!r}: auth must be one of {AUTH_PROTOCOLS} and priv "
                             f"one of {PRIV_PROTOCOLS}, got {auth!r}/{priv!r}")
        if auth == "NONE" and priv != "NONE":
            raise ValueError(f"snmp_users: user {name!r}: privacy needs authentication")
        for proto, key, kind in ((auth, user.auth_key, "auth"), (user.priv_protocol, user.priv_key, "priv")):
            if proto != "NONE" and len(key) < 8:
                raise ValueError(f"snmp_users: user {name!r}: the {kind} key needs 8 or more characters")
        if any(u.name == name for u in users):
            raise ValueError(f"snmp_users: user {name!r} appears twice")
        users.append(user)
    return users


_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits, at most five: checked before int() converts them


def _is_port(text: str) -> bool:
    """A port number 1..65535 in ASCII digits ("²" and 5,000-digit strings are refused, not parsed)."""
    return _PORT.fullmatch(text) is not None and 0 < int(text) < 65536


def parse_trap_targets(value: object, users: set[str] | None = None) -> list[TrapTarget]:
    """``snmp_trap_targets``: "v2c:community@host:port" or "v3:user@host:port", "/inform" appended for
    informs (default traps); comma-separated in one string, or a list of such strings."""
    targets = []
    for entry in _entries(value, "snmp_trap_targets"):
        if not isinstance(entry, str):
            raise ValueError("snmp_trap_targets entries are strings like 'v2c:public@127.0.0.1:162'")
        spec, inform = entry, False
        if spec.endswith("/inform") or spec.endswith("/trap"):
            spec, _, kind = spec.rpartition("/")
            inform = kind == "inform"
        version, _, rest = spec.partition(":")
        secret, _, address = rest.rpartition("@")
        host, _, port = address.rpartition(":")
        if version not in ("v2c", "v3") or not secret or not host or not _is_port(port):
            raise ValueError(f"snmp_trap_targets: expected 'v2c:community@host:port' or "
                             f"'v3:user@host:port' (optionally '/inform'), got {entry!r}")
        if version == "v3" and users is not None and secret not in users:
            raise ValueError(f"snmp_trap_targets: {entry!r} names user {secret!r}, not in snmp_users")
        targets.append(TrapTarget(version, secret, host.strip("[]"), int(port), inform))
    return targets


def parse_base_oid(value: str) -> tuple[int, ...]:
    """``snmp_base_oid`` ("1.3.6.1...", a leading or trailing dot allowed) as its arcs."""
    try:
        oid = tuple(int(part) for part in value.strip(".").split("."))
    except ValueError:
        raise ValueError(f"snmp_base_oid must be a dotted OID like 1.3.6.1.4.1.8072.9999.9999, "
                         f"got {value!r}") from None
    if len(oid) < 2 or oid[0] > 2 or any(p < 0 or p >= 2 ** 32 for p in oid) or len(oid) > 100:
        raise ValueError(f"snmp_base_oid is not a valid OID: {value!r}")
    return oid


def parse_engine_id(value: str) -> bytes:
    """``snmp_engine_id``: hex (an optional "0x"), 5..32 octets, not all zeros nor all 0xff (RFC 3411)."""
    text = value.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    try:
        raw = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raise ValueError(f"snmp_engine_id must be hexadecimal, like 80001f8805c0ffee01, got {value!r}") from None
    if not 5 <= len(raw) <= 32 or raw in (bytes(len(raw)), b"\xff" * len(raw)):
        raise ValueError(f"snmp_engine_id must have 5..32 octets, not all 0x00 nor all 0xff, got {value!r}")
    return raw
