"""The SNMP agent under runtime control: started, stopped and restarted as the config in force says
(``enable_snmp``, ``snmp_port``, ``snmp_community``), without touching anything else."""
from __future__ import annotations

import asyncio
import logging

from .agent import SnmpAgent

IDLE_WAIT = 5.0  # seconds between looks at the config when no change woke the task (a safety net)

log = logging.getLogger("rockstar_mp.aggregator")


def _wanted(config) -> tuple | None:
    return (config.host, config.snmp_port, config.snmp_community) if config.enable_snmp else None


async def run_snmp(state, stopping: asyncio.Event) -> None:
    """Keep ``state.snmp`` matching the config until ``stopping``; then stop the agent."""
    running = None
    try:
        while not stopping.is_set():
            wanted = _wanted(state.config)
            if wanted != running:
                if state.snmp is not None:
                    await state.snmp.stop()
                    state.snmp = None
                running = wanted
                if wanted is not None:
                    state.snmp = SnmpAgent(state)  # a new agent takes the settings now in force
                    try:
                        await state.snmp.start()
                    except Exception:  # logged by the agent (kept in agent.error); retried on change
                        log.exception("rockstar-mp: the SNMP agent did not start")
            await state.until_config_changes(stopping, IDLE_WAIT)
    finally:
        if state.snmp is not None:
            await state.snmp.stop()
