"""The errors the segment raises: defined in ``rockstar_mp.errors`` (which imports nothing), kept here
under their old import path."""
from ..errors import (
           CatalogueFull,
           LayoutMismatch,
           MetricNameConflict,
           NoFreeSlab,
           NoSpace,
           RockstarError,
           UntrustedFile,
)

__all__ = ["RockstarError", "LayoutMismatch", "CatalogueFull", "MetricNameConflict", "NoFreeSlab", "NoSpace",
           "UntrustedFile"]
