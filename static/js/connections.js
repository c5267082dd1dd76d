// The connections table: sortable by any column header (the choice survives updates),
// with the HTTP requests in flight on each server connection.

import { el, emptyRow, fillBody, setText, td } from "./dom.js";
import { age, bytes, count } from "./format.js";

const sort = { key: null, descending: false };
let lastSnapshot = null;

function compare(a, b) {
  const x = a[sort.key];
  const y = b[sort.key];
  let order;
  if (typeof x === "number" && typeof y === "number") order = x - y;
  else order = String(x ?? "").localeCompare(String(y ?? ""), "en", { numeric: true });
  return sort.descending ? -order : order;
}

function requestsCell(item) {
  const requests = item.requests || [];
  if (!requests.length) {
    return td("requests muted", item.requests_in_flight === undefined ? "–" : "none");
  }
  return td(
    "requests",
    ...requests.map((r) =>
      el("div", { class: "request" }, el("code", {}, `${r.method} ${r.uri}`), ` · ${age(r.age_s)}`),
    ),
  );
}

export function renderConnections(snapshot) {
  lastSnapshot = snapshot;
  const table = document.getElementById("connections-table");
  const section = snapshot.connections || {};
  let items = [...(section.items || [])];
  if (sort.key) items.sort(compare);
  const rows = items.map((c) =>
    el(
      "tr",
      { class: c.pending_write_bytes > 0 ? "unsent" : null },
      td("", c.kind + (c.tls ? " · TLS" : "")),
      td("addr", c.peer ?? "–"),
      td("addr", c.local ?? "–"),
      td("proto", el("code", { title: c.protocol }, (c.protocol || "–").split(".").pop())),
      td("num", age(c.age_s)),
      td("num", bytes(c.bytes_in)),
      td("num", bytes(c.bytes_out)),
      td("num", bytes(c.pending_write_bytes)),
      requestsCell(c),
    ),
  );
  fillBody(table, rows.length ? rows : [emptyRow(9, "No open connections.")]);
  const listening = (section.listening || []).map((l) => l && l.address).filter((a) => a).join(", ");
  // The dashboard's own port, connections and streams are on the own-work line, not here.
  setText(
    "connections-note",
    `${count(section.open)} open · ${count(section.failed_connects_total)} failed connects` +
      (section.items_truncated ? ` · ${items.length} of ${count(section.items_total)} listed` : "") +
      (listening ? ` · listening on ${listening}` : ""),
  );
}

/** Make the column headers sort the table (click again to reverse). */
export function setUpConnectionSorting() {
  const table = document.getElementById("connections-table");
  for (const th of table.querySelectorAll("th[data-sort-key]")) {
    th.querySelector("button").addEventListener("click", () => {
      const key = th.dataset.sortKey;
      sort.descending = sort.key === key ? !sort.descending : th.classList.contains("num");
      sort.key = key;
      for (const other of table.querySelectorAll("th[data-sort-key]")) {
        other.setAttribute("aria-sort", "none");
        other.querySelector(".sort-mark").textContent = "";
      }
      th.setAttribute("aria-sort", sort.descending ? "descending" : "ascending");
      th.querySelector(".sort-mark").textContent = sort.descending ? " ▼" : " ▲";
      if (lastSnapshot) renderConnections(lastSnapshot);
    });
  }
}
