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
