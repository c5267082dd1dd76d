// The Deferred tables under the charts, rebuilt from each rendered snapshot: pending by
// site, where results are lost, the oldest pending and the running loops (kept apart).
// Text goes in through textContent (el/td); nothing from a snapshot is parsed as markup.
// Any field may be missing (an older snapshot) and a section null (its probe failed).

import { el, emptyRow, fillBody, setText, siteCell, sparkline, td } from "./dom.js";
import { age, count } from "./format.js";

const SHOWN_SITES = 25;
const SHOWN_LOST = 20;
const SHOWN_LOOPS = 20;

function trendCell(trend) {
  const { delta, values, spanS } = trend;
  const mark = delta > 0 ? "▲" : delta < 0 ? "▼" : "→";
  const direction = delta > 0 ? "up" : delta < 0 ? "down" : "flat";
  const label = `${delta > 0 ? "+" : ""}${delta}`;
  return td(
    `trend trend-${direction}`,
    sparkline(values),
    el("span", { "aria-hidden": "true", class: "trend-mark" }, mark),
    el("span", { class: "trend-delta" }, label),
    el("span", { class: "visually-hidden" }, ` in ${Math.round(spanS)} s`),
  );
}

export function renderSites(snapshot, trends) {
  const table = document.getElementById("sites-table");
  const deferreds = snapshot.deferreds || {};
  const sites = deferreds.sites || [];
  const rows = sites.slice(0, SHOWN_SITES).map((s) =>
    el(
      "tr",
      {},
      siteCell(s.site),
      td("num", count(s.pending)),
      trendCell(trends.trend(s.site)),
      td("num", age(s.oldest_age_s)),
      td("num", count(s.created_total)),
      td("num", count(s.unfired_collected_total)),
    ),
  );
  fillBody(table, rows.length ? rows : [emptyRow(6, "No pending Deferreds.")]);
  // The snapshot lists the busiest sites only: if their pending do not add up to the total,
  // more sites hold some ("+"). `sites_total` counts every site seen, pending or not.
  const shownPending = sites.slice(0, SHOWN_SITES).reduce((sum, s) => sum + (s.pending || 0), 0);
  const more = shownPending < (deferreds.pending || 0) ? "+" : "";
  const total = deferreds.sites_total ?? sites.length;
  setText(
    "sites-note",
    `${count(deferreds.pending)} pending at ${count(rows.length)}${more} ` +
      `site${rows.length === 1 && !more ? "" : "s"} · ${count(total)} sites seen`,
  );
}

/** Sites that lost Deferreds (garbage-collected unfired), newest loss first as listed. */
export function renderLost(snapshot) {
  const table = document.getElementById("lost-table");
  const deferreds = snapshot.deferreds || {};
  const lost = (Array.isArray(deferreds.lost_sites) ? deferreds.lost_sites : []).filter((s) => s);
  const rows = lost.slice(0, SHOWN_LOST).map((s) =>
    el(
      "tr",
      { class: s.lost_last_60s > 0 ? "losing" : null },
      siteCell(s.site),
      td("num", count(s.unfired_collected_total)),
      td(s.lost_last_60s > 0 ? "num warn" : "num", count(s.lost_last_60s)),
      td("num", s.last_lost_age_s === null || s.last_lost_age_s === undefined ? "–" : `${age(s.last_lost_age_s)} ago`),
      td("num", count(s.pending)),
    ),
  );
  const none = Array.isArray(deferreds.lost_sites)
    ? "No Deferred lost: none was garbage-collected without firing."
    : "Not reported by this version of the dashboard.";
  fillBody(table, rows.length ? rows : [emptyRow(5, none)]);
  const recent = lost.reduce((sum, s) => sum + (s.lost_last_60s || 0), 0);
  setText(
    "lost-note",
    `${count(deferreds.unfired_collected_total)} lost in total · ${count(recent)} in the last minute`,
  );
}

export function renderOldest(snapshot) {
  const table = document.getElementById("oldest-table");
  const deferreds = snapshot.deferreds || {};
  const oldest = deferreds.oldest || [];
  const rows = oldest.map((d) => {
    const waiting = (d.waiting || []).map((w) => el("code", { class: "line" }, w));
    return el(
      "tr",
      {},
      td("num", age(d.age_s)),
      siteCell(d.site),
      td("waiting", ...(waiting.length ? waiting : [el("span", { class: "muted" }, "no callbacks yet")])),
    );
  });
  fillBody(table, rows.length ? rows : [emptyRow(3, "No pending Deferreds.")]);
  const loops = deferreds.loops && Number.isFinite(deferreds.loops.pending) ? deferreds.loops.pending : null;
  setText(
    "oldest-note",
    `oldest ${age(deferreds.oldest_pending_age_s)}` +
      (loops ? ` · running loops apart (${count(loops)} pending)` : ""),
  );
}

/** The long-lived Deferreds of running LoopingCalls: not stuck work, so shown apart. */
export function renderLoops(snapshot) {
  const table = document.getElementById("loops-table");
  const deferreds = snapshot.deferreds || {};
  const loops = deferreds.loops || {};
  const items = (Array.isArray(loops.items) ? loops.items : []).filter((l) => l);
  const rows = items.slice(0, SHOWN_LOOPS).map((l) =>
    el("tr", {}, siteCell(l.function), td("num", count(l.pending)), td("num", age(l.oldest_age_s))),
  );
  fillBody(table, rows.length ? rows : [emptyRow(3, "No LoopingCall running.")]);
  setText(
    "loops-note",
    `${count(loops.pending)} pending in ${count(items.length)} loop${items.length === 1 ? "" : "s"}` +
      " · not counted as oldest pending",
  );
}
