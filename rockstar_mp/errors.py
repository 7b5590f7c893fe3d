"""Every public error of rockstar-mp, all under ``RockstarError``; re-exported from ``rockstar_mp``.

``except rockstar_mp.RockstarError`` catches anything rockstar-mp raises on purpose. An error that
replaces a builtin one callers may already catch keeps that builtin as a second base (``NoSegment`` is
a ``RuntimeError``, ``UnsafePath`` a ``PermissionError``, ``MetricNameConflict`` a ``ValueError``).

This module imports nothing: every part of the package (the segment, the aggregator, the CLI) can use
it without loading another's code. A few errors private to one module (the SNMP parser's ``Malformed``
and ``Refused``, the aggregator's ``StartupError``) stay beside the code that raises and catches them,
also under ``RockstarError``.
"""
from __future__ import annotations

__all__ = ["RockstarError", "LayoutMismatch", "CatalogueFull", "MetricNameConflict", "NoFreeSlab", "NoSpace",
           "UntrustedFile", "UnsafePath", "NoSegment", "FetchError", "ProfileFetchError", "WorkerUnavailable",
           "ProfilerBusy"]


class RockstarError(Exception):
    """Base class of every rockstar-mp error."""


# -- the segment ------------------------------------------------------------------------------------
class LayoutMismatch(RockstarError):
    """The file is not a segment this version of rockstar-mp can read."""


class CatalogueFull(RockstarError):
    """A new series did not fit in the worker's slab (series, key bytes or values).

    The refusal is counted (``catalogue_full`` in the worker's slab, shown in ``/metrics``). Raise the
    limits with ``MonitoringConfig(slab_max_series=..., slab_max_values=...)`` or use fewer label values.
    """


class MetricNameConflict(RockstarError, ValueError):
    """A metric whose Prometheus names are already taken in this process, or reserved for rockstar-mp.

    Prometheus names fold ``.`` into ``_``; a counter also takes ``<name>_total`` and ``<name>_created``
    (and ``dup`` and ``dup_total`` are one counter), a histogram ``<name>_bucket``, ``_sum``, ``_count``
    and ``_created``. Names starting ``rockstar_`` and rockstar-mp's own ``http.requests`` and
    ``http.request.duration.seconds`` are reserved. The message names the metric to rename.
    """


class NoFreeSlab(RockstarError):
    """Every slab is in use: more live workers than ``MonitoringConfig.max_workers``."""


class NoSpace(NoFreeSlab):
    """``segment_dir`` (a tmpfs, usually ``/dev/shm``) has no room to reserve the segment or a slab.

    Pages are reserved (``posix_fallocate``) before anything touches them, so a full tmpfs refuses a
    slab (its worker runs unmonitored, counted in ``space_failures``) instead of killing a process with
    SIGBUS. Point ``segment_dir`` at a larger tmpfs, or lower ``max_workers`` or ``slab_max_series``.
    """


class UntrustedFile(RockstarError):
    """A file we were asked to open is a symlink, not a regular file, or owned by another user."""


# -- files and processes ----------------------------------------------------------------------------
class UnsafePath(RockstarError, PermissionError):
    """A name we were about to use is taken by something we must not trust (``rockstar_mp.safefs``)."""


class NoSegment(RockstarError, RuntimeError):
    """``attach_worker()`` found no segment: none passed, none inherited, ``$ROCKSTAR_SEGMENT`` unset."""


# -- clients of a running server ----------------------------------------------------------------------
class FetchError(RockstarError):
    """A request to the aggregator failed; ``str()`` is the one-line message shown to the user and
    ``status`` the HTTP status, if an answer came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProfileFetchError(RockstarError):
    """A profile could not be fetched from a server's ``/debug/pprof`` tree (``rockstar-mp profile``)."""


# -- profiling ----------------------------------------------------------------------------------------
class WorkerUnavailable(RockstarError):
    """The worker did not answer (gone, not listening, or too slow)."""


class ProfilerBusy(RockstarError):
    """A profile of this kind is already running in this process."""
