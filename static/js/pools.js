// The pools table: every pool by name, with what tells one from another (the reactor's
// thread pool, an adbapi pool's driver and database, the hosts of an HTTP pool with the
// per-host limit on each host's row). Text only through textContent.

import { el, emptyRow, fillBody, setText, td } from "./dom.js";
import { count } from "./format.js";

/** Hosts listed under an HTTP pool; the rest are counted in one row. */
const SHOWN_HOSTS = 10;

const known = (value) => value !== null && value !== undefined;

/** The per-host rows of an HTTP pool: `hosts` ({host, in_use, idle, max}), or the older
 * `keys` ({key, in_use, idle}) with the pool's per-host `max`. */
function hostsOf(pool) {
  if (Array.isArray(pool.hosts)) return pool.hosts.filter((h) => h);
  if (Array.isArray(pool.keys)) {
    const max = pool.max_per_host ?? (pool.max_scope === "per_key" ? pool.max : null);
    return pool.keys.filter((k) => k).map((k) => ({ host: k.key, in_use: k.in_use, idle: k.idle, max }));
  }
  return [];
}

/** One line under the pool's name saying which pool it is. */
function detailOf(pool, hosts) {
  if (pool.kind === "threadpool") return pool.reactor ? "the reactor's thread pool" : "thread pool";
  if (pool.kind === "adbapi") {
    const driver = pool.driver ?? pool.dbapi;
    return [driver, pool.database].filter(known).join(" · ");
  }
  if (pool.kind === "http") {
    // Twisted's one limit (maxPersistentPerHost) is on the idle connections kept per host.
    const perHost = pool.max_per_host ?? (pool.max_scope === "per_key" ? pool.max : null);
    const total = pool.hosts_total ?? pool.keys_total ?? hosts.length;
    return (
      `${count(total)} host${total === 1 ? "" : "s"}` +
      (known(perHost) ? ` · keeps at most ${count(perHost)} idle per host` : "")
    );
  }
  return "";
}

/** "in use / max" with a bar; with no max, "/ ∞" (unbounded). */
function usageCell(inUse, max, saturated) {
  const hasMax = known(max);
  const share = hasMax && max > 0 ? Math.min(1, inUse / max) : 0;
  const bar = el("span", { class: "bar", "aria-hidden": "true" }, el("span", { class: "bar-fill" }));
  bar.firstChild.style.width = `${(share * 100).toFixed(0)}%`;
  return td(saturated ? "usage full" : "usage", bar, `${count(inUse)} / ${hasMax ? count(max) : "∞"}`);
}

function poolRows(pool) {
  const hosts = hostsOf(pool);
  // An older snapshot's HTTP pool gave the per-host limit as `max`: not a bound of the pool.
  const max = pool.max_scope === "per_key" ? null : pool.max;
  const saturated = pool.waiting > 0 && (!known(max) || pool.in_use >= max);
  const detail = detailOf(pool, hosts);
  const rows = [
    el(
      "tr",
      { class: saturated ? "saturated" : null },
      td(
        "pool",
        el("code", { title: pool.name ?? "" }, pool.name ?? "–"),
        detail ? el("span", { class: "pool-detail" }, detail) : null,
      ),
      td("", pool.kind ?? "–"),
      usageCell(pool.in_use, max, saturated),
      td("num", count(pool.idle)),
      td(saturated ? "num warn" : "num", count(pool.waiting)),
    ),
  ];
  // An HTTP host's `max` bounds the idle connections kept, not those in use (unbounded).
  for (const host of hosts.slice(0, SHOWN_HOSTS)) {
    rows.push(
      el(
        "tr",
        { class: "pool-host" },
        td("pool", el("span", { "aria-hidden": "true" }, "↳ "), el("code", { title: host.host ?? "" }, host.host ?? "–")),
        td("", "host"),
        usageCell(host.in_use, null, false),
        td("num", known(host.max) ? `${count(host.idle)} (keeps ≤ ${count(host.max)})` : count(host.idle)),
        td("num", known(host.waiting) ? count(host.waiting) : ""),
      ),
    );
  }
  if (hosts.length > SHOWN_HOSTS) {
    rows.push(
      el(
        "tr",
        { class: "pool-host" },
        el("td", { colspan: 5, class: "muted" }, `↳ ${count(hosts.length - SHOWN_HOSTS)} more hosts`),
      ),
    );
  }
  return rows;
}

export function renderPools(snapshot) {
  const table = document.getElementById("pools-table");
  const pools = (Array.isArray(snapshot.pools) ? snapshot.pools : []).filter((p) => p);
  const rows = pools.flatMap(poolRows);
  fillBody(table, rows.length ? rows : [emptyRow(5, "No pools seen.")]);
  const waiting = pools.reduce((a, p) => a + (p.waiting || 0), 0);
  setText("pools-note", `${pools.length} pools · ${count(waiting)} waiting`);
}
