"""The aggregator's SNMP agent and ROCKSTAR-MP-MIB.

``SnmpAgent(state)``: ``await agent.start()`` / ``await agent.stop()`` on the aggregator's loop (pysnmp is
imported on the first start). ``mib_path()``: the shipped MIB file; ``render_mib(base)``: the MIB for
another ``snmp_base_oid``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .agent import SnmpAgent
from .mibdef import DEFAULT_BASE, MODULE, render_mib

__all__ = ["SnmpAgent", "mib_path", "render_mib", "MODULE", "DEFAULT_BASE"]


def mib_path() -> Path:
    """The shipped ``ROCKSTAR-MP-MIB.txt`` (package data of ``rockstar_mp``, in ``rockstar_mp/mibs``)."""
    return Path(str(resources.files("rockstar_mp").joinpath("mibs", f"{MODULE}.txt")))
