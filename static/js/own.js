// The dashboard's own work, on a line of its own: its Deferreds, its port and the
// connections on it, its delayed calls, its event streams, the fresh snapshots it took for
// `?fresh=1` and what that cost the loop, its history, series and snapshot answers when any
// is under way or was refused or dropped, and any block it caused. None of these is in the program's figures.
// A snapshot without a figure (an older server, no web face) leaves its phrase out.

import { setText } from "./dom.js";
import { count, ms } from "./format.js";

const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;

/** The parts of the line, each a short phrase; empty when the snapshot reports none. */
export function ownWork(snapshot) {
  const parts = [];
  const deferreds = (snapshot.deferreds && snapshot.deferreds.own) || null;
  if (deferreds && Number.isFinite(deferreds.pending)) {
    parts.push(`${plural(deferreds.pending, "Deferred")} pending`);
  }
  const connections = (snapshot.connections && snapshot.connections.own) || null;
  if (connections) {
    const listening = (Array.isArray(connections.listening) ? connections.listening : [])
      .map((a) => (typeof a === "string" ? a : a && a.address))
      .filter((a) => a);
    if (Number.isFinite(connections.open)) parts.push(plural(connections.open, "connection"));
    if (listening.length) parts.push(`port ${listening.join(", ")}`);
  }
  const timeouts = snapshot.timeouts || {};
  const ownCalls = timeouts.own_calls;
  if (Number.isFinite(ownCalls)) parts.push(plural(ownCalls, "delayed call"));
  const sse = snapshot.sse;
  if (sse && Number.isFinite(sse.clients)) {
    parts.push(
      `${count(sse.clients)}/${count(sse.max_clients)} event streams, ` +
        `${count(sse.dropped_slow_total)} slow dropped, ${count(sse.rejected_total)} refused`,
    );
  }
  const web = snapshot.web || {};
  parts.push(...webWork(web));
  const blocks = ((snapshot.loop && snapshot.loop.blocks) || []).filter(
    (b) => b && b.owner === "dashboard",
  );
  if (blocks.length) parts.push(`blocked the loop ${blocks.length === 1 ? "once" : `${blocks.length} times`} recently`);
  return parts;
}

/** The web face's costly answers: fresh snapshots (once asked for); history, series and
 * snapshot (with /metrics) answers, each kind when one is being written, or one was refused
 * or dropped. */
function webWork(web) {
  const parts = [];
  const fresh = web.fresh;
  if (fresh && Number.isFinite(fresh.served_total) && fresh.served_total > 0) {
    const seconds = Number.isFinite(fresh.seconds_total) ? fresh.seconds_total : null;
    parts.push(
      `${plural(fresh.taken_total, "fresh snapshot")} for ${plural(fresh.served_total, "ask")}` +
        (seconds === null ? "" : `, ${ms(seconds * 1000)} on the loop`),
    );
  }
  for (const [kind, noun] of [
    ["history", "history"],
    ["series", "series"],
    ["snapshot", "snapshot"],
  ]) {
    const phrase = answersPhrase(web[kind], noun);
    if (phrase) parts.push(phrase);
  }
  return parts;
}

/** "1/4 history answers, 2 slow dropped, 36 refused", or null when none is being written
 * and none was refused or dropped (or the figures are missing). */
function answersPhrase(answers, noun) {
  if (!answers || !Number.isFinite(answers.in_flight)) return null;
  const refused = Number.isFinite(answers.refused_total) ? answers.refused_total : 0;
  const dropped = Number.isFinite(answers.dropped_slow_total) ? answers.dropped_slow_total : 0;
  if (answers.in_flight <= 0 && refused <= 0 && dropped <= 0) return null;
  return (
    `${count(answers.in_flight)}/${count(answers.max_in_flight)} ${noun} answers, ` +
    `${count(dropped)} slow dropped, ${count(refused)} refused`
  );
}

export function renderOwn(snapshot) {
  const parts = ownWork(snapshot);
  setText("own-work-text", parts.length ? parts.join(" · ") : "not reported");
}
