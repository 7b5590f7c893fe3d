"""Least privilege: which user the aggregator runs as, and dropping to it.

The aggregator is the one process that parses untrusted HTTP and SNMP from the network. When the master
runs as root (the usual way to bind port 80, and SNMP's 161), the aggregator binds its ports as root,
then drops to ``aggregator_user``/``aggregator_group`` (by default gunicorn's ``user``/``group``).

Example::

    MonitoringConfig(aggregator_user="nobody", aggregator_group="nogroup")
"""
from __future__ import annotations

import grp
import os
import pwd


def resolve(user: str | int | None, group: str | int | None) -> tuple[int, int] | None:
    """``(uid, gid)`` for a user and group given by name or number; None when no user is given.
    Without a group, the user's primary group. Raises ``ValueError`` for an unknown name."""
    if user is None or user == "":
        return None
    try:
        uid = int(user)
        primary = pwd.getpwuid(uid).pw_gid if group in (None, "") else None
    except ValueError:
        try:
            entry = pwd.getpwnam(str(user))
        except KeyError:
            raise ValueError(f"aggregator_user {user!r}: no such user") from None
        uid, primary = entry.pw_uid, entry.pw_gid
    except KeyError:
        primary = uid  # a uid without a passwd entry: its own number as group, as gunicorn does
    if group in (None, ""):
        return uid, primary if primary is not None else uid
    try:
        return uid, int(group)
    except ValueError:
        try:
            return uid, grp.getgrnam(str(group)).gr_gid
        except KeyError:
            raise ValueError(f"aggregator_group {group!r}: no such group") from None


def drop_to(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good (no supplementary groups). Needs root; checked after."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        raise PermissionError(f"could not drop to uid {uid} gid {gid}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PermissionError("root could be regained after dropping privileges")
