"""The environment variables one role of rockstar-mp sets and another reads.

The master exports them before forking (workers inherit them) and adds them to the environment of a
master re-executed by gunicorn's USR2. Every role imports the names from here, so none has to load
another role's modules to learn them.
"""
from __future__ import annotations

SEGMENT_ENV = "ROCKSTAR_SEGMENT"
"""The segment's path: the master sets it, a worker attaches to it, a re-executed master re-attaches."""

RUN_DIR_ENV = "ROCKSTAR_PRIVATE_RUN_DIR"
"""The master's private run directory: workers put their control sockets under it; a re-executed
master keeps it."""

SEGMENT_FD_ENV = "ROCKSTAR_SEGMENT_FD"
"""``fd:dev:inode`` of the segment a USR2 master left open for the master it re-executes."""

__all__ = ["SEGMENT_ENV", "RUN_DIR_ENV", "SEGMENT_FD_ENV"]
