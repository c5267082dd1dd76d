"""The JavaScript the browser tests run in the dashboard page, and the synthetic snapshots
they feed it (through the page's own code paths)."""

from __future__ import annotations

from typing import Any

from dashboard.web.page import VERDICT_THRESHOLDS

CHART_PIXELS = """
(ids) => {
  // Pixels of the plot area (axes excluded) in any of the series colours.
  const style = getComputedStyle(document.documentElement);
  const colours = [1, 2, 3, 4, 5, 6, 7, 8].map((n) => {
    const hex = style.getPropertyValue(`--series-${n}`).trim();
    return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  });
  return ids.map((id) => {
    const host = document.getElementById(`chart-${id}-plot`);
    const canvas = host.querySelector('canvas');
    const over = host.querySelector('.u-over');
    if (!canvas || !over) return { id, canvas: false, series: 0 };
    const c = canvas.getBoundingClientRect();
    const o = over.getBoundingClientRect();
    const ratio = canvas.width / c.width;
    const x = Math.round((o.left - c.left) * ratio);
    const y = Math.round((o.top - c.top) * ratio);
    const w = Math.round(o.width * ratio);
    const h = Math.round(o.height * ratio);
    const data = canvas.getContext('2d').getImageData(x, y, w, h).data;
    let series = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] < 160) continue;
      const near = colours.some((want) => Math.abs(data[i] - want[0])
        + Math.abs(data[i + 1] - want[1]) + Math.abs(data[i + 2] - want[2]) < 90);
      if (near) series += 1;
    }
    return { id, canvas: true, width: w, height: h, series };
  });
}
"""


INJECT_HISTORY = """
(count) => {
  // Fifteen minutes at the default one sample per second, ending where the real data starts,
  // given to the same function as the history fetched from api/v1/history.
  const base = JSON.parse(document.getElementById('initial-snapshot').textContent);
  const first = window.__dashboard.store.rows[0];
  const samples = [];
  for (let i = count; i >= 1; i -= 1) {
    const s = structuredClone(base);
    s.time = first.t - i;
    s.seq = first.seq - i;
    s.loop.lag_ms.p50 = 0.5 + (i % 7) / 10;
    s.loop.lag_ms.p99 = 4 + (i % 13);
    s.loop.lag_ms.last = (i * 37) % 50;
    s.loop.busy_ratio = ((i * 13) % 100) / 100;
    s.deferreds.pending = 20 + (i % 30);
    s.connections.open = 5 + (i % 4);
    for (const pool of s.pools) pool.in_use = i % 3;
    s.timeouts.fired_total = { deferred: Math.floor((count - i) / 2) };
    samples.push(s);
  }
  window.__dashboard.seed(samples);
  return window.__dashboard.store.rows.length;
}
"""


JUDGE = """
async ({ snapshots, limits }) => {
  // The page's own modules: the store the live page feeds, then the verdict over it.
  const { SeriesStore } = await import(new URL('static/js/store.js', location.href));
  const { judge } = await import(new URL('static/js/verdict.js', location.href));
  const store = new SeriesStore(960, 20000);
  store.seed(snapshots);
  const latest = snapshots[snapshots.length - 1];
  return judge(latest, store.lastRows(2 * limits.recent_s), limits);
}
"""

#: The thresholds the page gets from the server.
LIMITS = dict(VERDICT_THRESHOLDS)


def synthetic(trouble: bool, block_at: float | None = None) -> list[dict[str, Any]]:
    """130 snapshots, one a second; with ``trouble``: lag p99 80 ms, pending Deferreds
    growing 10 -> 140, timeouts from 0.1/s to 3/s, a pool full with callers waiting."""
    out = []
    fired = 0.0
    for i in range(130):
        fired += (3 if i >= 70 else 0.1) if trouble else 0.1
        waiting = 7 if trouble else 0
        out.append(
            {
                "seq": i + 1,
                "time": 1_000_000.0 + i,
                "loop": {
                    "lag_ms": {"p50": 1, "p99": 80 if trouble else 2, "last": 1},
                    "busy_ratio": 0.1,
                    "blocks": []
                    if block_at is None
                    else [
                        {
                            "at": 1_000_000.0 + block_at,
                            "duration_ms": 420.0,
                            "stack": ["app.py:3 in main", "app.py:9 in slow_call"],
                        }
                    ],
                },
                "deferreds": {"pending": 10 + i if trouble else 10, "sites": []},
                "connections": {"open": 3},
                "pools": [{"name": "db", "max": 4, "in_use": 4, "idle": 0, "waiting": waiting}],
                "timeouts": {"fired_total": {"deferred": int(fired)}},
            }
        )
    return out
