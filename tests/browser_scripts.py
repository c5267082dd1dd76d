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


RENDER_PANELS = """
async (snapshot) => {
  // The page's own modules (the instances main.js uses) render `snapshot` into the page,
  // which the test has paused so no live update overwrites it; then the text of each part.
  const load = (name) => import(new URL(`static/js/${name}.js`, location.href));
  const tables = await load('tables');
  const { renderBlocks } = await load('blocks');
  const { renderOwn } = await load('own');
  const { renderPools } = await load('pools');
  const { renderTimeouts } = await load('timeouts');
  const { renderConnections } = await load('connections');
  const { SiteTrends } = await load('trends');
  renderOwn(snapshot);
  tables.renderSites(snapshot, new SiteTrends(60));
  tables.renderLost(snapshot);
  tables.renderOldest(snapshot);
  tables.renderLoops(snapshot);
  renderBlocks(snapshot);
  renderConnections(snapshot);
  renderPools(snapshot);
  renderTimeouts(snapshot);
  const rows = (id) => [...document.querySelectorAll(`#${id}-table tbody tr`)].map(
    (tr) => [...tr.cells].map((td) => td.textContent.trim()));
  const text = (id) => document.getElementById(id).textContent;
  return {
    own: text('own-work-text'),
    lost: rows('lost'), lostNote: text('lost-note'),
    oldest: rows('oldest'), oldestNote: text('oldest-note'),
    loops: rows('loops'), loopsNote: text('loops-note'),
    pools: rows('pools'),
    timeouts: rows('timeouts'), timeoutsNote: text('timeouts-note'),
    connectionsNote: text('connections-note'),
    blocks: [...document.querySelectorAll('#blocks-list > li')].map((li) => ({
      summary: (li.querySelector('summary') || li).textContent,
      marked: (li.querySelector('.stack li.where') || { textContent: null }).textContent,
      own: li.classList.contains('block-own'),
    })),
    blocksNote: text('blocks-note'),
    images: document.querySelectorAll('main img').length,
    xss: window.__xss ?? null,
  };
}
"""

#: Markup where a site name goes: the page must show it as text.
MARKUP_SITE = 'evil.py:1 in <img src=x onerror="window.__xss=1">'
NOW = 2_000_000.0


def contract_snapshot() -> dict[str, Any]:
    """A snapshot with every field of issue 13's contract (docs/snapshot.md), as a
    Synapse-like program would give: a site losing Deferreds, a running LoopingCall, a
    Deferred timeout from a delayed call, cancellations, a block in the user's code under
    library frames, a block of the dashboard's own, named pools."""
    return {
        "seq": 7,
        "time": NOW,
        "reactor": "EPollReactor",
        "loop": {
            "lag_ms": {"p50": 1.0, "p99": 3.0, "last": 1.0},
            "busy_ratio": 0.2,
            "blocks_total": 2,
            "threshold_ms": 100.0,
            "blocks": [
                {
                    "at": NOW - 20,
                    "duration_ms": 180.0,
                    "stack": [
                        "synapse/app/homeserver.py:400 in main",
                        "synapse/handlers/sync.py:120 in wait_for_sync",
                        "json/encoder.py:200 in encode",
                        "weakref.py:369 in remove",
                    ],
                    "where": "synapse/handlers/sync.py:120 in wait_for_sync",
                    "owner": "program",
                },
                {
                    "at": NOW - 5,
                    "duration_ms": 150.0,
                    "stack": [
                        "twisted/web/server.py:230 in process",
                        "/opt/app/dashboard/web/page.py:101 in render_page",
                        "jinja2/nodes.py:300 in visit",
                    ],
                    "where": "/opt/app/dashboard/web/page.py:101 in render_page",
                    "owner": "dashboard",
                },
            ],
        },
        "deferreds": {
            "pending": 12,
            "created_total": 900,
            "fired_total": 600,
            "unfired_collected_total": 288,
            "oldest_pending_age_s": 19.5,
            "sites_total": 4,
            "sites": [
                {
                    "site": "synapse/notifier.py:650 in Notifier.wait_for_events",
                    "pending": 10,
                    "created_total": 40,
                    "fired_total": 30,
                    "unfired_collected_total": 0,
                    "oldest_age_s": 19.5,
                },
            ],
            "oldest": [
                {
                    "age_s": 19.5,
                    "site": "synapse/notifier.py:650 in Notifier.wait_for_events",
                    "waiting": ["suspended at synapse/handlers/sync.py:120 in wait_for_sync"],
                }
            ],
            "own": {
                "pending": 3,
                "created_total": 1500,
                "fired_total": 1497,
                "unfired_collected_total": 0,
            },
            "lost_sites": [
                {
                    "site": "synapse/handlers/worker_lock.py:200 in WaitingLock.__init__",
                    "unfired_collected_total": 200,
                    "lost_last_60s": 24,
                    "last_lost_age_s": 0.4,
                    "pending": 0,
                },
                {
                    "site": MARKUP_SITE,
                    "unfired_collected_total": 88,
                    "lost_last_60s": 0,
                    "last_lost_age_s": 95.0,
                    "pending": 2,
                },
            ],
            "loops": {
                "pending": 2,
                "items": [
                    {
                        "function": "synapse.util.caches.expire_caches",
                        "pending": 1,
                        "oldest_age_s": 3600.0,
                    },
                    {
                        "function": "synapse.app.phone_stats_home",
                        "pending": 1,
                        "oldest_age_s": 125.0,
                    },
                ],
            },
        },
        "connections": {
            "open": 4,
            "failed_connects_total": 0,
            "items": [],
            "listening": [{"address": "127.0.0.1:8008"}],
            "own": {"open": 2, "listening": ["127.0.0.1:8089"]},
        },
        "pools": [
            {
                "name": "twisted.internet.reactor",
                "kind": "threadpool",
                "reactor": True,
                "max": 10,
                "in_use": 1,
                "idle": 2,
                "waiting": 0,
            },
            {
                "name": "synapse-resolver",
                "kind": "threadpool",
                "reactor": False,
                "max": 4,
                "in_use": 0,
                "idle": 1,
                "waiting": 0,
            },
            {
                "name": "scrapy/core/downloader/handlers/http11.py:60 in "
                "HTTP11DownloadHandler.__init__",
                "kind": "http",
                "max": None,
                "max_per_host": 8,
                "in_use": 9,
                "idle": 1,
                "waiting": 0,
                "hosts": [
                    {"host": "http://127.0.0.1:8000", "in_use": 8, "idle": 0, "max": 8},
                    {"host": "http://127.0.0.1:8001", "in_use": 1, "idle": 1, "max": 8},
                ],
            },
            {
                "name": "sqlite3 /tmp/app.db",
                "kind": "adbapi",
                "driver": "sqlite3",
                "database": "/tmp/app.db",
                "max": 5,
                "in_use": 1,
                "idle": 2,
                "waiting": 0,
            },
        ],
        "timeouts": {
            "delayed_calls": 9,
            "overdue_calls": 0,
            "fired_total": {"deferred": 5, "connect": 0, "protocol": 1},
            "cancelled_total": 3,
            "own_calls": 2,
            "recent": [
                {"at": NOW - 30, "kind": "protocol", "what": "HTTPChannel idle"},
                {
                    "at": NOW - 2,
                    "kind": "deferred",
                    "what": "Deferred cancelled by a delayed call",
                    "function": "synapse.util.async_helpers.timeout_deferred.<locals>.time_it_out",
                    "site": "synapse/notifier.py:650 in Notifier.wait_for_events",
                    "waited_s": 30.0,
                },
            ],
        },
        "sse": {"clients": 1, "max_clients": 100, "dropped_slow_total": 0, "rejected_total": 0},
    }


def old_snapshot() -> dict[str, Any]:
    """A snapshot of before issue 13 (no `own`, `lost_sites`, `loops`, `where`, `owner`,
    `cancelled_total`, `hosts`), with a probe's section null: the page must still render."""
    return {
        "seq": 3,
        "time": NOW,
        "reactor": "EPollReactor",
        "loop": {
            "blocks": [
                {
                    "at": NOW - 1,
                    "duration_ms": 120.0,
                    "stack": ["app.py:3 in main", "app.py:9 in slow"],
                }
            ]
        },
        "deferreds": {"pending": 1, "sites": [], "oldest": []},
        "connections": None,
        "pools": [
            {
                "name": "http#1",
                "kind": "http",
                "max": 4,
                "max_scope": "per_key",
                "in_use": 1,
                "idle": 3,
                "waiting": 0,
                "keys_total": 1,
                "keys": [{"key": "http://127.0.0.1:9", "in_use": 1, "idle": 3}],
            },
            {
                "name": "sqlite3#1",
                "kind": "adbapi",
                "dbapi": "sqlite3",
                "max": 3,
                "in_use": 0,
                "idle": 2,
                "waiting": 0,
            },
        ],
        "timeouts": {
            "fired_total": {"deferred": 1},
            "recent": [
                {"at": NOW - 1, "kind": "deferred", "what": "Deferred timed out after 0.2 s"}
            ],
        },
    }
