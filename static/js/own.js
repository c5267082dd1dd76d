// The dashboard's own work, on a line of its own: its Deferreds, its port and the
// connections on it, its delayed calls, its event streams and any block it caused. None of
// these is in the program's figures.

import { setText } from "./dom.js";
import { count } from "./format.js";

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
  const blocks = ((snapshot.loop && snapshot.loop.blocks) || []).filter(
    (b) => b && b.owner === "dashboard",
  );
  if (blocks.length) parts.push(`blocked the loop ${blocks.length === 1 ? "once" : `${blocks.length} times`} recently`);
  return parts;
}

export function renderOwn(snapshot) {
  const parts = ownWork(snapshot);
  setText("own-work-text", parts.length ? parts.join(" · ") : "not reported");
}
