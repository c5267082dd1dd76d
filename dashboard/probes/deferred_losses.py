"""Where Deferreds were lost lately: the creation sites that had a Deferred garbage-collected
unfired, newest loss first, with how many they lost in the last minute.

Losses are counted by the Deferred probe's sweep (never on the hot path); this keeps, for the
most recent ``max_sites`` losing sites only, the time of their last loss and a small ring of
``(collect time, lost total)`` pairs, one appended per collect at most (merged when collects
come closer than ``merge_s``), trimmed to the window: ``lost_last_60s`` is then the total
now minus the total at the newest pair at least 60 s old. Resolution: a collect interval.
Reactor thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Protocol

#: The window of ``lost_last_60s``, seconds.
WINDOW_S = 60.0


class LosingSite(Protocol):
    """What is read of a site: its lost total (the probe's ``_Site``)."""

    lost: int


class _Losses:
    """One losing site's last loss time and its ring of ``(time, lost total)``."""

    __slots__ = ("last_lost_s", "ring")

    def __init__(self, lost_before: int, now: float) -> None:
        self.last_lost_s = now
        # the total before its first loss seen, valid since forever
        self.ring: deque[tuple[float, int]] = deque([(float("-inf"), lost_before)])


class RecentLosses:
    """The sites that lost Deferreds most recently (at most ``max_sites``), with their rings."""

    def __init__(self, *, max_sites: int = 256, merge_s: float = 1.0) -> None:
        self.max_sites = max_sites
        self.merge_s = merge_s
        #: site -> its losses, in order of last loss (newest last)
        self._sites: dict[LosingSite, _Losses] = {}

    def lost(self, site: LosingSite, now: float) -> None:
        """``site`` is about to count one more loss (call before ``site.lost += 1``)."""
        losses = self._sites.pop(site, None)
        if losses is None:
            losses = _Losses(site.lost, now)
            if len(self._sites) >= self.max_sites:  # forget the least recent
                del self._sites[next(iter(self._sites))]
        losses.last_lost_s = now
        self._sites[site] = losses

    def clear(self) -> None:
        self._sites.clear()

    def newest_first(self, now: float) -> Iterator[tuple[LosingSite, float, int]]:
        """Every site kept, newest loss first: ``(site, seconds since its last loss, lost in
        the last 60 s)``. Updates every ring (all of them, so each keeps its baseline)."""
        rows = []
        # a copy: a sweep on another thread may count a loss meanwhile
        for site, losses in list(self._sites.items()):
            ring = losses.ring
            if ring[-1][1] != site.lost:
                if len(ring) >= 2 and ring[-1][0] > now - self.merge_s:
                    ring[-1] = (now, site.lost)  # later, never earlier: counted in longer
                else:
                    ring.append((now, site.lost))
            horizon = now - WINDOW_S
            while len(ring) >= 2 and ring[1][0] <= horizon:
                ring.popleft()
            rows.append((site, max(0.0, now - losses.last_lost_s), site.lost - ring[0][1]))
        return reversed(rows)
