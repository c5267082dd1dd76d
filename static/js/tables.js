// The tables and lists under the charts, rebuilt from each rendered snapshot.
// Text goes in through textContent (el/td); nothing from a snapshot is parsed as markup.

import { breakable, el, emptyRow, fillBody, setText, sparkline, td } from "./dom.js";
import { age, clock, count, ms, shortSite } from "./format.js";

const SHOWN_SITES = 25;
const SHOWN_TIMEOUTS = 25;

/** A cell showing a "file:line in function" site, shortened, with the full text as tooltip. */
function siteCell(site) {
  return td("site", el("code", { title: site }, ...breakable(shortSite(site))));
}

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
  setText("oldest-note", `oldest ${age(deferreds.oldest_pending_age_s)}`);
}

/** Blocks keep their element (and so their open/closed state) across updates. */
const blockItems = new Map();

export function renderBlocks(snapshot) {
  const list = document.getElementById("blocks-list");
  const loop = snapshot.loop || {};
  const blocks = [...(loop.blocks || [])].reverse(); // newest first
  const keep = new Set();
  const items = blocks.map((b) => {
    const key = `${b.at}|${b.duration_ms}`;
    keep.add(key);
    let item = blockItems.get(key);
    if (!item) {
      const stack = b.stack || [];
      const where = stack.length ? stack[stack.length - 1] : "no stack captured";
      item = el(
        "li",
        {},
        el(
          "details",
          {},
          el(
            "summary",
            {},
            el("span", { class: "block-time" }, clock(b.at)),
            el("span", { class: "block-duration" }, ms(b.duration_ms)),
            el("code", { title: where }, shortSite(where)),
          ),
          el("ol", { class: "stack" }, ...stack.map((frame) => el("li", {}, el("code", {}, frame)))),
        ),
      );
      blockItems.set(key, item);
    }
    return item;
  });
  for (const key of [...blockItems.keys()]) if (!keep.has(key)) blockItems.delete(key);
  list.replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No blocks recorded.")]));
  const threshold = loop.threshold_ms;
  setText(
    "blocks-note",
    `${count(loop.blocks_total)} in total · stuck over ${ms(threshold)} counts`,
  );
}

export function renderPools(snapshot) {
  const table = document.getElementById("pools-table");
  const pools = snapshot.pools || [];
  const rows = pools.map((p) => {
    const hasMax = p.max !== null && p.max !== undefined;
    const share = hasMax && p.max > 0 ? Math.min(1, p.in_use / p.max) : 0;
    const bar = el("span", { class: "bar", "aria-hidden": "true" }, el("span", { class: "bar-fill" }));
    bar.firstChild.style.width = `${(share * 100).toFixed(0)}%`;
    const saturated = p.waiting > 0 && (!hasMax || p.in_use >= p.max);
    return el(
      "tr",
      { class: saturated ? "saturated" : null },
      td("", el("code", {}, p.name)),
      td("", p.kind),
      td("usage", bar, `${count(p.in_use)} / ${hasMax ? count(p.max) : "∞"}`),
      td("num", count(p.idle)),
      td(saturated ? "num warn" : "num", count(p.waiting)),
    );
  });
  fillBody(table, rows.length ? rows : [emptyRow(5, "No pools seen.")]);
  const waiting = pools.reduce((a, p) => a + (p.waiting || 0), 0);
  setText("pools-note", `${pools.length} pools · ${count(waiting)} waiting`);
}

export function renderTimeouts(snapshot) {
  const table = document.getElementById("timeouts-table");
  const timeouts = snapshot.timeouts || {};
  const recent = [...(timeouts.recent || [])].reverse().slice(0, SHOWN_TIMEOUTS);
  const rows = recent.map((t) =>
    el("tr", {}, td("num", clock(t.at)), td("", t.kind), td("what", t.what)),
  );
  fillBody(table, rows.length ? rows : [emptyRow(3, "No timeouts yet.")]);
  const fired = Object.entries(timeouts.fired_total || {})
    .map(([kind, n]) => `${kind} ${count(n)}`)
    .join(" · ");
  setText(
    "timeouts-note",
    `${fired || "none fired"} · ${count(timeouts.delayed_calls)} delayed calls, ` +
      `${count(timeouts.overdue_calls)} overdue`,
  );
}
