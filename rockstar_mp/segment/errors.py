"""Errors raised by the segment; re-exported from ``rockstar_mp``."""


class RockstarError(Exception):
    """Base class of every rockstar-mp error."""


class LayoutMismatch(RockstarError):
    """The file is not a segment this version of rockstar-mp can read."""


class CatalogueFull(RockstarError):
    """A new series did not fit in the worker's slab (series, key bytes or values).

    The refusal is counted (``catalogue_full`` in the worker's slab, shown in ``/metrics``). Raise the
    limits with ``MonitoringConfig(slab_max_series=..., slab_max_values=...)`` or use fewer label values.
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
