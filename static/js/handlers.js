// "Where the loop's time goes": busy time by handler (loop.handlers), each with a share bar,
// calls per second, mean and max, and a sparkline of its share over the recent samples; the
// dashboard's own handlers marked, not hidden. And the verdict's reason when one handler takes
// most of a busy loop. Text goes in through textContent (el/td) only.

import { breakable, el, emptyRow, fillBody, setText, sparkline, td } from "./dom.js";
import { count, ms, percent, rate } from "./format.js";

const SHOWN = 20;
/** Points kept per handler for its sparkline (one per sample). */
const TREND_POINTS = 60;
/** The verdict names a handler when the loop is at least this busy... */
export const BUSY_LOOP = 0.5;
/** ...and that handler took at least this part of the busy time. */
export const MOST_OF_BUSY = 0.5;

const rowsOf = (snapshot) => {
  const loop = (snapshot && snapshot.loop) || {};
  return Array.isArray(loop.handlers) ? loop.handlers.filter((h) => h && typeof h.handler === "string") : null;
};

/** Each listed handler's share of the last interval, sample after sample (bounded). */
export class HandlerTrends {
  constructor(points = TREND_POINTS) {
    this.points = points;
    this.byName = new Map(); // handler -> [[seq, share], ...] oldest first
  }

  add(snapshot) {
    const rows = rowsOf(snapshot);
    if (!rows) return;
    const seq = snapshot.seq;
    for (const row of rows) {
      const share = Number.isFinite(row.share_last) ? row.share_last : row.share;
      if (!Number.isFinite(share)) continue;
      let points = this.byName.get(row.handler);
      if (!points) {
        points = [];
        this.byName.set(row.handler, points);
      }
      if (points.length && points[points.length - 1][0] >= seq) continue; // seen already
      points.push([seq, share]);
      if (points.length > this.points) points.splice(0, points.length - this.points);
    }
    // Forget handlers no longer listed for a whole trend's length.
    for (const [name, points] of this.byName) {
      if (seq - points[points.length - 1][0] > this.points) this.byName.delete(name);
    }
  }

  values(name) {
    return (this.byName.get(name) || []).map((p) => p[1]);
  }
}

function shareCell(share) {
  const bar = el("span", { class: "bar", "aria-hidden": "true" }, el("span", { class: "bar-fill" }));
  const width = Number.isFinite(share) ? Math.max(0, Math.min(1, share)) : 0;
  bar.firstChild.style.width = `${(width * 100).toFixed(1)}%`;
  return td("usage share", bar, percent(share));
}

function handlerCell(row) {
  return td(
    "site handler",
    el("code", { title: row.handler }, ...breakable(row.handler)),
    row.own ? el("span", { class: "own-tag", title: "the dashboard's own work" }, "dashboard") : null,
  );
}

export function renderHandlers(snapshot, trends) {
  const table = document.getElementById("handlers-table");
  if (!table) return;
  const loop = snapshot.loop || {};
  const rows = rowsOf(snapshot);
  if (rows === null) {
    const off = loop.handlers === null;
    const why = typeof loop.handlers_off_reason === "string" ? loop.handlers_off_reason : null;
    fillBody(table, [
      emptyRow(
        6,
        off
          ? `Busy time by handler is off: ${why || "Monitor(handlers=True) switches it on"}.`
          : "Not reported by this version of the dashboard.",
      ),
    ]);
    setText("handlers-note", "");
    return;
  }
  const shown = rows.slice(0, SHOWN).map((h) =>
    el(
      "tr",
      { class: h.own ? "own" : null },
      handlerCell(h),
      shareCell(h.share),
      td("num", rate(h.calls_per_s)),
      td("num", ms(h.mean_ms)),
      td("num", ms(h.max_ms)),
      td("trend", sparkline(trends.values(h.handler))),
    ),
  );
  fillBody(table, shown.length ? shown : [emptyRow(6, "The reactor called nothing in the window.")]);
  const other = loop.handlers_other || {};
  const total = rows.reduce((sum, h) => sum + (h.share || 0), 0) + (other.share || 0);
  const parts = [`last ${count(Math.round(loop.handlers_window_s || 0))} s`];
  if (Number.isFinite(loop.handlers_busy_ratio)) {
    parts.push(`handlers ${percent(total)} of the loop, busy ${percent(loop.handlers_busy_ratio)}`);
  }
  if (other.handlers) parts.push(`${count(other.handlers)} more handlers ${percent(other.share)}`);
  setText("handlers-note", parts.join(" · "));
}

/** The verdict's reason when the loop is busy (at least BUSY_LOOP of the window) and one
 * handler took at least MOST_OF_BUSY of that busy time; null otherwise. */
export function handlerReason(snapshot) {
  const rows = rowsOf(snapshot);
  const loop = (snapshot && snapshot.loop) || {};
  const busy = Number.isFinite(loop.handlers_busy_ratio) ? loop.handlers_busy_ratio : loop.busy_ratio;
  if (!rows || !rows.length || !Number.isFinite(busy) || busy < BUSY_LOOP) return null;
  const top = rows.reduce((a, b) => ((b.share || 0) > (a.share || 0) ? b : a));
  if (!((top.share || 0) >= busy * MOST_OF_BUSY)) return null;
  const who = top.own ? "the dashboard's own " : "";
  return {
    level: "degraded",
    text:
      `the loop is ${percent(busy)} busy, ${percent(top.share)} in ${who}${top.handler} ` +
      `(${rate(top.calls_per_s)} calls/s, mean ${ms(top.mean_ms)}, max ${ms(top.max_ms)})`,
  };
}
