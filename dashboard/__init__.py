"""Reactor Dashboard: a live health dashboard for a running Twisted reactor."""

from dashboard.monitor import Monitor, MonitorAlreadyRunning, Sample
from dashboard.probes.pools import TrackablePool

__all__ = ["Monitor", "MonitorAlreadyRunning", "Sample", "TrackablePool"]
__version__ = "0.1.0"
