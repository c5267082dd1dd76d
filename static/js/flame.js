// A flame graph of a profile (GET api/v1/profile): one box per function in each call path,
// as wide as its share of the busy samples, the outermost frame at the bottom. Drawn with
// DOM boxes (positioned through the CSSOM, which the page's CSP allows), names as text
// nodes only. No library: the ones that fit (d3-flame-graph) need d3, ten times this page's
// scripts.

import { el } from "./dom.js";

/** Boxes narrower than this share of the width are left out (and counted). */
const MIN_SHARE = 0.002;
/** At most this many boxes are drawn; the narrowest go first. */
const MAX_BOXES = 3000;
/** Height of a row, px. */
const ROW_PX = 18;

/** The merged call tree of `stacks` ([{frames: [outer..inner], count}]). */
export function callTree(stacks) {
  const root = { name: "all busy samples", count: 0, children: new Map() };
  for (const stack of Array.isArray(stacks) ? stacks : []) {
    const count = Number(stack.count) || 0;
    if (count <= 0 || !Array.isArray(stack.frames)) continue;
    root.count += count;
    let node = root;
    for (const frame of stack.frames) {
      const name = String(frame);
      let child = node.children.get(name);
      if (!child) {
        child = { name, count: 0, children: new Map() };
        node.children.set(name, child);
      }
      child.count += count;
      node = child;
    }
  }
  return root;
}

/** Boxes {name, count, depth, start} (start and count in samples), widest first within a
 * parent, with the ones too narrow to draw counted in `hidden`. */
export function layout(tree) {
  const boxes = [];
  let hidden = 0;
  let depth = 0;
  const minCount = tree.count * MIN_SHARE;
  const visit = (node, level, start) => {
    if (boxes.length >= MAX_BOXES || node.count < minCount) {
      hidden += 1;
      return;
    }
    boxes.push({ name: node.name, count: node.count, depth: level, start });
    depth = Math.max(depth, level);
    let offset = start;
    const children = [...node.children.values()].sort(
      (a, b) => b.count - a.count || (a.name < b.name ? -1 : 1),
    );
    for (const child of children) {
      visit(child, level + 1, offset);
      offset += child.count;
    }
  };
  if (tree.count > 0) visit(tree, 0, 0);
  return { boxes, hidden, depth };
}

/** A stable colour per function name (warm, as flame graphs are). */
function hue(name) {
  let hash = 0;
  for (let i = 0; i < name.length; i += 1) hash = (hash * 31 + name.charCodeAt(i)) | 0;
  return 10 + (Math.abs(hash) % 45);
}

/**
 * Draw `profile` into `container` (replacing what it held). `onHover(text)` is told what the
 * box under the pointer (or with focus) is, and its share; `totalSamples` is every sample,
 * idle ones included, so a share is of the wall time sampled.
 * Returns {boxes, hidden} (counts).
 */
export function drawFlame(container, profile, onHover = () => {}) {
  const tree = callTree(profile.stacks);
  const { boxes, hidden, depth } = layout(tree);
  const total = Number(profile.samples) || tree.count || 1;
  const busy = tree.count || 1;
  const nodes = boxes.map((box) => {
    const share = box.count / total;
    const ofBusy = box.count / busy;
    const text =
      `${box.name}: ${box.count} samples, ${(share * 100).toFixed(1)}% of the time` +
      (box.depth ? `, ${(ofBusy * 100).toFixed(1)}% of busy` : "");
    const node = el("div", { class: "flame-box", title: text, tabindex: "0" }, box.name);
    node.dataset.frame = box.name;
    node.dataset.count = String(box.count);
    node.style.left = `${(box.start / busy) * 100}%`;
    node.style.width = `${(box.count / busy) * 100}%`;
    node.style.top = `${(depth - box.depth) * ROW_PX}px`;
    node.style.backgroundColor = box.depth ? `hsl(${hue(box.name)} 85% 62%)` : "";
    const show = () => onHover(text);
    node.addEventListener("mouseenter", show);
    node.addEventListener("focus", show);
    return node;
  });
  container.style.height = `${(depth + 1) * ROW_PX}px`;
  container.replaceChildren(...nodes);
  return { boxes: boxes.length, hidden };
}
