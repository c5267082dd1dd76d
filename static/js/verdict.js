// The health verdict: "blocked" when the loop was stuck recently, "degraded" when something
// is wrong but the loop runs, else "ok"; each with the reasons that led to it.

import { blockPlace } from "./blocks.js";
import { count, ms, rate, shortSite } from "./format.js";
import { handlerReason } from "./handlers.js";

const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;

/**
 * Recent blocks (within `recentS` of the snapshot) as reasons: the program's, labelled by
 * the innermost frame it owns, and apart from them the dashboard's own (its work stalled
 * the loop too, and says so). None, one or two reasons.
 */
function blockReasons(snapshot, recentS) {
  const loop = snapshot.loop || {};
  const recent = (loop.blocks || []).filter((b) => b && snapshot.time - b.at <= recentS);
  const reasons = [];
  for (const dashboard of [false, true]) {
    const blocks = recent.filter((b) => blockPlace(b).dashboard === dashboard);
    if (!blocks.length) continue;
    const longest = blocks.reduce((a, b) => ((b.duration_ms ?? 0) > (a.duration_ms ?? 0) ? b : a));
    const { where } = blockPlace(longest);
    const times = blocks.length === 1 ? "once" : `${blocks.length} times`;
    const who = dashboard ? "the dashboard's own work blocked the loop" : "the loop blocked";
    reasons.push({
      level: "blocked",
      text:
        `${who} ${times} in the last ${recentS} s, ` +
        `longest ${ms(longest.duration_ms)}${where ? ` in ${shortSite(where)}` : ""}`,
    });
  }
  return reasons;
}

/** The site that lost the most Deferreds (garbage-collected unfired) in the last minute,
 * when it lost at least `limits.lost_recent_min`; null otherwise. */
function lostReason(snapshot, limits) {
  const deferreds = snapshot.deferreds || {};
  const sites = (Array.isArray(deferreds.lost_sites) ? deferreds.lost_sites : []).filter(
    (s) => s && s.lost_last_60s >= limits.lost_recent_min,
  );
  if (!sites.length) return null;
  const worst = sites.reduce((a, b) => (b.lost_last_60s > a.lost_last_60s ? b : a));
  const others = sites.length - 1;
  return {
    level: "degraded",
    text:
      `results lost: ${count(worst.lost_last_60s)} Deferreds garbage-collected unfired in the ` +
      `last minute at ${shortSite(worst.site)}` +
      (others ? ` (and ${others} more site${others === 1 ? "" : "s"})` : ""),
  };
}

/** Pending Deferreds grew over the last `recentS` seconds (first third vs last third). */
function pendingReason(rows, limits) {
  const values = rows.filter((r) => r.pending !== null);
  if (values.length < 6 || values[values.length - 1].t - values[0].t < limits.recent_s / 2) {
    return null;
  }
  const third = Math.floor(values.length / 3);
  const before = mean(values.slice(0, third).map((r) => r.pending));
  const after = mean(values.slice(-third).map((r) => r.pending));
  const grown = after - before;
  if (grown < limits.pending_growth_min || grown < before * limits.pending_growth_ratio) return null;
  const now = values[values.length - 1].pending;
  return {
    level: "degraded",
    text: `pending Deferreds growing: about ${Math.round(before)} → ${now} in the last ${limits.recent_s} s`,
  };
}

/** Timeouts per second in the last `recentS` seconds vs the `recentS` before. */
function timeoutsReason(rows, limits) {
  const recentS = limits.recent_s;
  if (rows.length < 3) return null;
  const newest = rows[rows.length - 1];
  if (newest.t - rows[0].t < recentS * 1.5) return null; // not enough history to compare
  // Timeouts per second between the rows nearest to `from` and `to` (running counts).
  const ratePer = (from, to) => {
    const first = rows.find((r) => r.t >= from);
    const last = [...rows].reverse().find((r) => r.t <= to);
    if (!first || !last || last.t - first.t < recentS / 2) return null;
    return (last.timeoutsCum - first.timeoutsCum) / (last.t - first.t);
  };
  const recent = ratePer(newest.t - recentS, newest.t);
  const before = ratePer(newest.t - 2 * recentS, newest.t - recentS);
  if (recent === null || before === null) return null;
  if (recent < limits.timeouts_min_per_s || recent < before * limits.timeouts_rise_ratio) return null;
  return {
    level: "degraded",
    text: `timeouts rising: ${rate(recent)}/s in the last ${recentS} s (was ${rate(before)}/s)`,
  };
}

/** Pools with every resource in use and callers waiting. */
function poolReasons(snapshot) {
  const reasons = [];
  for (const pool of snapshot.pools || []) {
    if (!pool || !(pool.waiting > 0)) continue;
    if (pool.max !== null && pool.max !== undefined && pool.in_use < pool.max) continue;
    const limit = pool.max === null || pool.max === undefined ? "" : `/${pool.max}`;
    reasons.push({
      level: "degraded",
      text: `pool ${pool.name} saturated: ${pool.in_use}${limit} in use, ${pool.waiting} waiting`,
    });
  }
  return reasons;
}

/**
 * The verdict for `snapshot`, with `rows` the store's rows of the last 2 × recent_s
 * seconds. Returns {level: "ok" | "degraded" | "blocked", reasons: [{level, text}]}.
 */
export function judge(snapshot, rows, limits) {
  const reasons = [];
  const recentRows = rows.filter((r) => r.t >= snapshot.time - limits.recent_s);
  reasons.push(...blockReasons(snapshot, limits.recent_s));
  const lag = snapshot.loop && snapshot.loop.lag_ms ? snapshot.loop.lag_ms.p99 : null;
  if (lag !== null && lag !== undefined && lag > limits.lag_p99_ms) {
    reasons.push({ level: "degraded", text: `loop lag p99 ${ms(lag)}, over ${ms(limits.lag_p99_ms)}` });
  }
  const pending = pendingReason(recentRows, limits);
  if (pending) reasons.push(pending);
  const lost = lostReason(snapshot, limits);
  if (lost) reasons.push(lost);
  reasons.push(...poolReasons(snapshot));
  const timeouts = timeoutsReason(rows, limits);
  if (timeouts) reasons.push(timeouts);
  const handler = handlerReason(snapshot);
  if (handler) reasons.push(handler);
  let level = "ok";
  if (reasons.some((r) => r.level === "blocked")) level = "blocked";
  else if (reasons.length) level = "degraded";
  return { level, reasons };
}
