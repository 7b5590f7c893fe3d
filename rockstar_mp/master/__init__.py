"""What runs in the pre-fork master: the segment's owner and the aggregator's supervisor."""
from .manager import MonitoringManager

__all__ = ["MonitoringManager"]
