// Blocks of the loop: where each happened (the innermost frame the user owns, as the
// snapshot's `where` says) and whose work it was (the program's or the dashboard's own).

import { el, setText } from "./dom.js";
import { clock, count, ms, shortSite } from "./format.js";

/**
 * Where a block happened: {where, dashboard}. `where` is the snapshot's label (the innermost
 * frame the user owns); an older snapshot without it gives the innermost frame. `dashboard`
 * is true when the dashboard's own work stalled the loop.
 */
export function blockPlace(block) {
  const stack = Array.isArray(block.stack) ? block.stack : [];
  const where =
    typeof block.where === "string" && block.where
      ? block.where
      : stack.length
        ? stack[stack.length - 1]
        : null;
  return { where, dashboard: block.owner === "dashboard" };
}

/** Blocks keep their element (and so their open/closed state) across updates. */
const blockItems = new Map();

function blockItem(b) {
  const stack = Array.isArray(b.stack) ? b.stack : [];
  const { where, dashboard } = blockPlace(b);
  const label = where === null ? "no stack captured" : shortSite(where);
  // The frame the label names is marked in the stack (the last one equal to it).
  const marked = where === null ? -1 : stack.lastIndexOf(where);
  return el(
    "li",
    { class: dashboard ? "block-own" : null },
    el(
      "details",
      {},
      el(
        "summary",
        {},
        el("span", { class: "block-time" }, clock(b.at)),
        el("span", { class: "block-duration" }, ms(b.duration_ms)),
        dashboard ? el("span", { class: "block-owner" }, "the dashboard") : null,
        el("code", { class: "block-where", title: where ?? "" }, label),
      ),
      el(
        "ol",
        { class: "stack" },
        ...stack.map((frame, i) =>
          el("li", { class: i === marked ? "where" : null }, el("code", {}, frame)),
        ),
      ),
    ),
  );
}

export function renderBlocks(snapshot) {
  const list = document.getElementById("blocks-list");
  const loop = snapshot.loop || {};
  const blocks = [...(loop.blocks || [])].filter((b) => b).reverse(); // newest first
  const keep = new Set();
  const items = blocks.map((b) => {
    const key = `${b.at}|${b.duration_ms}|${b.owner ?? ""}|${b.where ?? ""}`;
    keep.add(key);
    let item = blockItems.get(key);
    if (!item) {
      item = blockItem(b);
      blockItems.set(key, item);
    }
    return item;
  });
  for (const key of [...blockItems.keys()]) if (!keep.has(key)) blockItems.delete(key);
  list.replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No blocks recorded.")]));
  const own = blocks.filter((b) => b.owner === "dashboard").length;
  setText(
    "blocks-note",
    `${count(loop.blocks_total)} in total · stuck over ${ms(loop.threshold_ms)} counts` +
      (own ? ` · ${count(own)} of those listed were the dashboard's own work` : ""),
  );
}
