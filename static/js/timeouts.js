// The recent timeouts table: a Deferred timeout names the delayed call's function, where
// the Deferred was made and how long it waited; cancellations that no delayed call made
// (a user closing a page) are counted apart, never as timeouts.

import { el, emptyRow, fillBody, setText, siteCell, td } from "./dom.js";
import { age, clock, count } from "./format.js";

const SHOWN_TIMEOUTS = 25;

export function renderTimeouts(snapshot) {
  const table = document.getElementById("timeouts-table");
  const timeouts = snapshot.timeouts || {};
  const recent = [...(Array.isArray(timeouts.recent) ? timeouts.recent : [])]
    .filter((t) => t)
    .reverse()
    .slice(0, SHOWN_TIMEOUTS);
  const rows = recent.map((t) =>
    el(
      "tr",
      {},
      td("num", clock(t.at)),
      td("", t.kind ?? "–"),
      t.function ? siteCell(t.function, "site function") : td("muted", "–"),
      t.site ? siteCell(t.site) : td("muted", "–"),
      td("num", t.waited_s === null || t.waited_s === undefined ? "–" : age(t.waited_s)),
      td("what", t.what ?? ""),
    ),
  );
  fillBody(table, rows.length ? rows : [emptyRow(6, "No timeouts yet.")]);
  const fired = Object.entries(timeouts.fired_total || {})
    .map(([kind, n]) => `${kind} ${count(n)}`)
    .join(" · ");
  const cancelled = Number.isFinite(timeouts.cancelled_total)
    ? ` · ${count(timeouts.cancelled_total)} cancelled (not timeouts)`
    : "";
  setText(
    "timeouts-note",
    `${fired || "none fired"}${cancelled} · ${count(timeouts.delayed_calls)} delayed calls, ` +
      `${count(timeouts.overdue_calls)} overdue`,
  );
}
