"""A ``logging.Handler`` that keeps the worker's recent log records in its slab's ring.

The aggregator merges every worker's records by time (``GET /logs``). Messages and logger names are
cut to their fields' widths (``segment.layout.LOG_WIDTH``, bytes of UTF-8) on a character boundary.

Example (gunicorn's hooks install it on the root logger for you)::

    logging.getLogger().addHandler(SlabLogHandler(logging.INFO))
"""
from __future__ import annotations

import logging
import os

from ..segment import RingWriter, fit
from ..segment.layout import LOG_WIDTH


class SlabLogHandler(logging.Handler):
    """Writes records to the ring of the slab the process attached to (nothing before attaching)."""

    ring: RingWriter | None = None  # set by attach_worker for every handler in the process

    def emit(self, record: logging.LogRecord) -> None:
        ring = SlabLogHandler.ring
        if ring is None:
            return
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message += " | " + record.exc_info[0].__name__ + ": " + str(record.exc_info[1])
            ring.append(record.created, os.getpid(), record.levelno, fit(record.name, LOG_WIDTH["logger"]),
                        fit(message, LOG_WIDTH["message"]))
        except Exception:  # a handler must never raise into the application
            self.handleError(record)


def install(level: int | str = logging.INFO, loggers: tuple = ("", "gunicorn.error")) -> SlabLogHandler:
    """Add one handler to the root logger and to loggers that do not propagate (gunicorn's)."""
    handler = SlabLogHandler(level)
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(h, SlabLogHandler) for h in logger.handlers):
            logger.addHandler(handler)
    return handler
