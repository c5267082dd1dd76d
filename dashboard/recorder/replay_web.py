"""The answers of a replayed dashboard (``reactor-dashboard replay``), from the file.

The app's routes hand over to these when their source is a :class:`ReplaySource`:

- ``GET /api/v1/snapshot?at=T``: the sample in force at unix time ``T`` (the last one taken
  at or before it); without ``at``, the newest.
- ``GET /api/v1/history?from=A&to=B`` (or ``?seconds=N``: the recording's last N seconds):
  ``{"from", "to", "samples": [...], "truncated", "next_from", "next_after"}``: at most
  :data:`MAX_HISTORY_SAMPLES` samples, oldest first; when more were in the range,
  ``truncated`` is true and the next page is ``?from=<next_from>&after=<next_after>&to=B``:
  ``after`` (a sample's row in the file) leaves out the samples at ``from`` up to that row,
  so no sample comes twice, however many share one time.
- ``GET /api/v1/series?from=A&to=B&sites_seconds=S&points=P`` (or ``?seconds=N``): the chart
  figures (dashboard/web/series.py), at most ``P`` (default and most
  :data:`MAX_SERIES_POINTS`) samples picked evenly over the range; those of the last ``S``
  seconds before ``B`` carry their sites.
- ``/metrics``: 404 (a recording is not scraped).

Bad values are 400 JSON naming the parameter. Bodies are written as the client reads them,
with the live dashboard's limits (dashboard/web/bulk_body.py). Reactor thread.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from dashboard.recorder.replay import (
    MAX_HISTORY_SAMPLES,
    MAX_SERIES_POINTS,
    ReplaySource,
    as_sample,
)
from dashboard.web.bulk_body import stream_body, stream_whole
from dashboard.web.json_api import BadRequest, int_param, json_error, query_params
from dashboard.web.series import SITES_MAX_S, SeriesCache

Answer = bytes | Deferred[None]


def time_param(value: str, name: str) -> float:
    """A unix time in seconds (a decimal number), or :class:`BadRequest`."""
    problem = f"{name} must be a unix time in seconds, got {value[:40]!r}"
    try:
        number = float(value) if len(value) <= 32 else math.nan
    except ValueError:
        raise BadRequest(problem, name) from None
    if not math.isfinite(number) or not 0 <= number < 1e11:
        raise BadRequest(problem, name)
    return number


def time_range(params: dict[str, str], source: ReplaySource) -> tuple[float, float, int]:
    """``from``/``to`` (default: the recording's span) or ``seconds`` (the last N of it);
    the range and its length in whole seconds."""
    start, end = source.span()
    if "seconds" in params:
        if "from" in params or "to" in params:
            raise BadRequest("give seconds, or from and to, not both", "seconds")
        span = max(1, math.ceil(end - start) + 1)
        seconds = int_param(params["seconds"], "seconds", 1, max(span, 1))
        return end - seconds, end, seconds
    low = time_param(params["from"], "from") if "from" in params else start
    high = time_param(params["to"], "to") if "to" in params else end
    if high < low:
        raise BadRequest(f"to ({high}) is before from ({low})", "to")
    return low, high, max(1, math.ceil(high - low))


def _on_error(source: ReplaySource) -> Any:
    return lambda exc: source.errors.record("web", exc)


def snapshot(request: Request, source: ReplaySource) -> Answer:
    params = query_params(request, {"at": "a unix time in the recording"})
    moment = time_param(params["at"], "at") if "at" in params else math.inf
    sample = source.at(moment)
    try:
        json.loads(sample.encoded)
    except ValueError:
        source.store.corrupt_total += 1
        return json_error(request, 422, "damaged_sample", "the sample at that moment is damaged")
    return stream_whole(
        request,
        sample.encoded,
        answers=source.snapshot_answers,
        clock=source.reactor,
        on_error=_on_error(source),
    )


def history(request: Request, source: ReplaySource) -> Answer:
    params = query_params(
        request,
        {
            "from": "unix seconds",
            "to": "unix seconds",
            "seconds": "the recording's last N s",
            "after": "next_after of the previous page (with from)",
        },
    )
    after = None
    if "after" in params:
        if "from" not in params:
            raise BadRequest("after goes with from (the previous page's next_from)", "after")
        after = int_param(params.pop("after"), "after", 0, 2**62)
    low, high, _ = time_range(params, source)
    stored, more = source.between(low, high, MAX_HISTORY_SAMPLES, after_id=after)
    head = json.dumps({"from": low, "to": high}, separators=(",", ":")).encode()[:-1]
    tail: dict[str, Any] = {
        "truncated": more,
        "next_from": stored[-1].time if more and stored else None,
        "next_after": stored[-1].id if more and stored else None,
        "corrupt_total": source.store.corrupt_total,
    }
    pieces = [head + b',"samples":[']
    for i, sample in enumerate(stored):
        if i:
            pieces.append(b",")
        pieces.append(sample.encoded)
    pieces.append(b"]," + json.dumps(tail, separators=(",", ":")).encode()[1:])
    return stream_body(
        request,
        pieces,
        answers=source.history_answers,
        clock=source.reactor,
        length=sum(len(piece) for piece in pieces),
        on_error=_on_error(source),
    )


def series(request: Request, source: ReplaySource) -> Answer:
    params = query_params(
        request,
        {
            "from": "unix seconds",
            "to": "unix seconds",
            "seconds": "the recording's last N s",
            "sites_seconds": f"0 to {SITES_MAX_S}",
            "points": f"2 to {MAX_SERIES_POINTS}",
        },
    )
    low, high, seconds = time_range(params, source)
    sites_seconds = int_param(params.get("sites_seconds", "0"), "sites_seconds", 0, SITES_MAX_S)
    points = int_param(params.get("points", str(MAX_SERIES_POINTS)), "points", 2, MAX_SERIES_POINTS)
    samples = []
    for sample in source.thinned(low, high, points):
        try:  # decoded once here: a damaged one is skipped, not a failed answer
            data = json.loads(sample.encoded)
        except ValueError:
            source.store.corrupt_total += 1
            continue
        if isinstance(data, dict):
            samples.append(type(sample)(seq=sample.seq, time=sample.time, data=data, encoded=b""))
    # a cache of this answer alone: seqs here are rows of the file, not one program's
    cache = SeriesCache(len(samples) or 1, source.interval, source.series_answers)
    pieces, length = cache.answer(samples, seconds, sites_seconds, high)
    return stream_body(
        request,
        pieces,
        answers=source.series_answers,
        clock=source.reactor,
        length=length,
        on_error=_on_error(source),
    )


def metrics(request: Request, source: ReplaySource) -> Answer:
    query_params(request, {})
    return json_error(request, 404, "not_found", "a replayed recording has no /metrics")


__all__ = ["as_sample", "history", "metrics", "series", "snapshot"]
