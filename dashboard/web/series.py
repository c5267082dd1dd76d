"""``GET /api/v1/series``: the light history the page seeds its charts and verdict from.

``/api/v1/history`` answers whole samples (tens of KB each in a busy program: 9.5 MB for five
minutes of 31 KB samples, 28 MB for fifteen); the charts read a handful of figures per sample.
This answers those alone (0.35 MB and 0.55 MB for the same, with the last minute's sites), in
the same nested shape as a snapshot, so the page reads a series sample as it reads a
snapshot (static/js/store.js rowFromSnapshot)::

    {"seconds": 300, "sites_seconds": 60, "samples": [
      {"seq": 7, "time": 1700000000.5,
       "loop": {"lag_ms": {"p50": 0.4, "p99": 2.1, "last": 0.3}, "busy_ratio": 0.12},
       "connections": {"open": 12},
       "timeouts": {"fired_total": {"deferred": 3}},
       "pools": [{"name": "db", "in_use": 2}],
       "deferreds": {"pending": 40, "sites": [{"site": "app.py:12 in fetch", "pending": 9}]}},
      ...]}

Query: ``seconds`` (1 .. the history length, default all of it): the samples of the last that
many seconds, oldest first, as ``/api/v1/history`` picks them. ``sites_seconds`` (0 ..
:data:`SITES_MAX_S`, default 0): samples of the last that many seconds also carry
``deferreds.sites`` as ``{site, pending}`` (the page's per-site trend column reads the last
minute). A section whose probe failed is ``null``, as in the snapshot.

Each sample is projected once: :func:`series_cache` makes one :class:`SeriesCache` per
Monitor (call it when the app is built), subscribed to it, which projects every new sample
from its dict (no decoding, about 80 us for a 31 KB sample) when it is taken. Samples older
than the subscription are projected on demand from ``sample.encoded`` (about 0.25 ms each)
and kept. Both are bounded by the history length; the per-site part is kept for the newest
:data:`SITES_MAX_S` seconds of samples only.

The answer is written as the client reads it (dashboard/web/bulk_body.py): pieces that are
the cached projections themselves, an entry with its sites spliced only when its turn comes.
At most :data:`MAX_SERIES_ANSWERS` are written at once (503 with ``Retry-After`` beyond), and
a client that stops reading for 30 s is dropped; the limits and counters are the Monitor's
``series_answers`` (``web.series`` in the snapshot), so ``Monitor.stop()`` ends them.

Everything here runs in the reactor thread.
"""

from __future__ import annotations

import json
import math
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from dashboard.answer_limits import DEFAULT_MAX_SERIES_ANSWERS, BulkAnswers
from dashboard.web.page import VERDICT_THRESHOLDS

if TYPE_CHECKING:
    from dashboard.monitor import Monitor, Sample

#: The most seconds of samples that carry ``deferreds.sites``: the page's trend window (the
#: per-site trend column and the verdict look back this far), 60.
SITES_MAX_S = int(VERDICT_THRESHOLDS["recent_s"])

#: Series answers written at once; a caller beyond gets 503 with Retry-After.
MAX_SERIES_ANSWERS = DEFAULT_MAX_SERIES_ANSWERS

_SITES_KEY = b',"sites":'
_TAIL = b"]}"


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _section(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    """``data[name]`` when it is an object; ``None`` (a failed probe) otherwise."""
    section = data.get(name)
    return section if isinstance(section, dict) else None


def _light(data: dict[str, Any]) -> dict[str, Any]:
    """The figures of one snapshot that the charts and the verdict read, nested as in the
    snapshot; ``deferreds`` last, so its per-site list can be spliced in (see Projection)."""
    out: dict[str, Any] = {"seq": data.get("seq"), "time": data.get("time")}
    loop = _section(data, "loop")
    if loop is None:
        out["loop"] = None
    else:
        lag = loop.get("lag_ms")
        lag = lag if isinstance(lag, dict) else {}
        out["loop"] = {
            "lag_ms": {key: lag.get(key) for key in ("p50", "p99", "last")},
            "busy_ratio": loop.get("busy_ratio"),
        }
    connections = _section(data, "connections")
    out["connections"] = None if connections is None else {"open": connections.get("open")}
    timeouts = _section(data, "timeouts")
    out["timeouts"] = None if timeouts is None else {"fired_total": timeouts.get("fired_total")}
    pools = data.get("pools")
    out["pools"] = (
        [
            {"name": pool.get("name"), "in_use": pool.get("in_use")}
            for pool in pools
            if isinstance(pool, dict)
        ]
        if isinstance(pools, list)
        else None
    )
    deferreds = _section(data, "deferreds")
    out["deferreds"] = None if deferreds is None else {"pending": deferreds.get("pending")}
    return out


def _sites(data: dict[str, Any]) -> bytes | None:
    """``deferreds.sites`` as ``[{site, pending}, ...]``, JSON; ``None`` without the section."""
    deferreds = _section(data, "deferreds")
    if deferreds is None:
        return None
    sites = deferreds.get("sites")
    return _encode(
        [
            {"site": site.get("site"), "pending": site.get("pending")}
            for site in (sites if isinstance(sites, list) else [])
            if isinstance(site, dict)
        ]
    )


@attrs.frozen
class Projection:
    """One sample's series entry as JSON. ``sites_at`` is where ``,"sites":[...]`` goes
    (before the closing brace of ``deferreds``), or -1 when ``deferreds`` is null."""

    light: bytes
    sites_at: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> Projection:
        light = _encode(_light(data))
        # The dict ends with a non-null "deferreds" object: the encoding ends with "}}".
        at = len(light) - 2 if _section(data, "deferreds") is not None else -1
        return cls(light, at)

    def size(self, sites: bytes | None) -> int:
        """Bytes of the entry, with ``sites`` spliced in when given."""
        if sites is None or self.sites_at < 0:
            return len(self.light)
        return len(self.light) + len(_SITES_KEY) + len(sites)

    def with_sites(self, sites: bytes) -> bytes:
        if self.sites_at < 0:
            return self.light
        return b"%s%s%s%s" % (
            self.light[: self.sites_at],
            _SITES_KEY,
            sites,
            self.light[self.sites_at :],
        )


@attrs.define
class _SeqCache:
    """Values by sample seq, holding at most the ``keep`` newest seqs once ``prune`` is told
    the newest. Seqs of stored samples count up by one, so the oldest kept is found by
    counting, not by scanning."""

    keep: int
    values: dict[int, Any] = attrs.field(factory=dict)
    low: int | None = None  # every key is >= low

    def put(self, seq: int, value: Any) -> None:
        self.values[seq] = value
        if self.low is None or seq < self.low:
            self.low = seq

    def prune(self, newest_seq: int) -> None:
        first_kept = newest_seq - self.keep + 1
        if self.low is None or self.low >= first_kept:
            return
        if first_kept - self.low > len(self.values):  # a long jump: fewer keys than seqs
            self.values = {k: v for k, v in self.values.items() if k >= first_kept}
        else:
            for seq in range(self.low, first_kept):
                self.values.pop(seq, None)
        self.low = first_kept


class SeriesCache:
    """Every sample's projection, made once: new samples when they are taken (``add`` is the
    Monitor's subscriber), older ones on demand. Reactor thread.

    ``history`` (samples) bounds the projections kept; the per-site lists are kept for the
    samples of the newest :data:`SITES_MAX_S` seconds at ``interval_s`` apart. ``answers``
    bounds the series answers written at once (see dashboard/web/bulk_body.py): the
    Monitor's ``series_answers``, or limits of its own when none is given.
    """

    def __init__(self, history: int, interval_s: float, answers: BulkAnswers | None = None) -> None:
        self._light = _SeqCache(keep=max(1, history))
        keep_sites = math.ceil(SITES_MAX_S / interval_s) + 2 if interval_s > 0 else history
        self._sites = _SeqCache(keep=max(1, min(history, keep_sites)))
        #: projections made from a sample's dict when it was taken
        self.projected_total = 0
        #: projections made by decoding ``sample.encoded`` (samples older than this cache)
        self.decoded_total = 0
        #: the series answers being written, and their limits: more at once than history
        #: answers (a series answer is small, and every page opening asks for one)
        self.answers = answers if answers is not None else BulkAnswers(MAX_SERIES_ANSWERS)

    def add(self, sample: Sample) -> None:
        """Project ``sample`` (the newest: its dict is still at hand, nothing is decoded)."""
        data = sample.data
        self._light.put(sample.seq, Projection.of(data))
        sites = _sites(data)
        if sites is not None:
            self._sites.put(sample.seq, sites)
        self.projected_total += 1
        self._light.prune(sample.seq)
        self._sites.prune(sample.seq)

    def entry(self, sample: Sample, with_sites: bool) -> tuple[Projection, bytes | None]:
        """``sample``'s projection, and its per-site list when ``with_sites`` (``None`` when
        not wanted or its ``deferreds`` is null)."""
        projection: Projection | None = self._light.values.get(sample.seq)
        sites: bytes | None = self._sites.values.get(sample.seq) if with_sites else None
        if projection is None or (with_sites and sites is None and projection.sites_at >= 0):
            data = sample.data  # decodes an older sample's bytes: once per sample
            self.decoded_total += 1
            if projection is None:
                projection = Projection.of(data)
                self._light.put(sample.seq, projection)
            if with_sites:
                sites = _sites(data)
                if sites is not None:
                    self._sites.put(sample.seq, sites)
        return projection, sites

    def answer(
        self, samples: Iterable[Sample], seconds: int, sites_seconds: int, now: float
    ) -> tuple[Iterator[bytes], int]:
        """The answer for ``samples`` (oldest first) as pieces to write, and its length in
        bytes: those taken in the last ``sites_seconds`` before ``now`` (unix seconds) carry
        their per-site lists. The entries are looked up now; an entry with its sites is
        spliced only when its turn to be written comes."""
        sites_from = now - sites_seconds if sites_seconds > 0 else math.inf
        entries = [self.entry(s, s.time >= sites_from) for s in samples]
        head = b'{"seconds":%d,"sites_seconds":%d,"samples":[' % (seconds, sites_seconds)
        length = len(head) + max(0, len(entries) - 1) + len(_TAIL)
        for projection, sites in entries:
            length += projection.size(sites)
        return _pieces(head, entries), length

    @property
    def size(self) -> tuple[int, int]:
        """(projections kept, per-site lists kept)."""
        return len(self._light.values), len(self._sites.values)


def _pieces(head: bytes, entries: list[tuple[Projection, bytes | None]]) -> Iterator[bytes]:
    yield head
    for i, (projection, sites) in enumerate(entries):
        if i:
            yield b","
        yield projection.light if sites is None else projection.with_sites(sites)
    yield _TAIL


#: One cache per Monitor, shared by every mount of its resource. The cache holds no reference
#: to its Monitor, so a Monitor that is dropped takes its cache with it.
_caches: weakref.WeakKeyDictionary[Monitor, SeriesCache] = weakref.WeakKeyDictionary()


def series_cache(monitor: Monitor) -> SeriesCache:
    """``monitor``'s cache, made and subscribed on the first call (call it when the app is
    built, so that every later sample is projected as it is taken)."""
    cache = _caches.get(monitor)
    if cache is None:
        cache = SeriesCache(monitor.history, monitor.interval, monitor.series_answers)
        monitor.subscribe(cache.add)
        _caches[monitor] = cache
    return cache


def series_answer(
    monitor: Monitor, seconds: int, sites_seconds: int = 0
) -> tuple[Iterator[bytes], int]:
    """The ``/api/v1/series`` answer as pieces and its length: ``monitor``'s samples of the
    last ``seconds`` (picked as ``/api/v1/history`` picks them), the last ``sites_seconds``
    of them with their sites."""
    return series_cache(monitor).answer(
        monitor.samples(seconds=seconds), seconds, sites_seconds, time.time()
    )


def series_body(monitor: Monitor, seconds: int, sites_seconds: int = 0) -> bytes:
    """The same answer, whole (for tests and Python callers)."""
    pieces, _ = series_answer(monitor, seconds, sites_seconds)
    return b"".join(pieces)
