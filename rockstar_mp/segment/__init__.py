"""The shared segment: its byte layout (``layout``), the per-body catalogue, and the file itself.

This package imports nothing else of rockstar-mp but ``rockstar_mp.errors``: workers, masters and the
aggregator all build on it.
"""
from .catalogue import CatalogueWriter, catalogue_bytes, published_count, read_entries, reset_body
from .errors import CatalogueFull, LayoutMismatch, MetricNameConflict, NoFreeSlab, NoSpace, RockstarError, UntrustedFile
from .layout import FREE, LIVE, RETIRED, STATE_NAMES, Geometry
from .ring import RingWriter, copy_ring, fit, log_ring, record_ring, text, unpack
from .segment import Segment, SlotInfo, no_such_process, process_alive, process_start, stale_segments

__all__ = ["CatalogueWriter", "catalogue_bytes", "published_count", "read_entries", "reset_body",
           "CatalogueFull", "LayoutMismatch", "MetricNameConflict", "NoFreeSlab", "NoSpace", "RockstarError",
           "UntrustedFile", "FREE", "LIVE", "RETIRED", "STATE_NAMES", "Geometry", "Segment", "SlotInfo",
           "RingWriter", "copy_ring", "fit", "log_ring", "record_ring", "text", "unpack", "no_such_process",
           "process_alive", "process_start", "stale_segments"]
