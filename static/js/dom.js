// Small DOM builders. Data only ever enters the page as textContent or attribute values,
// never as markup.

import { shortSite } from "./format.js";

/**
 * An element with attributes and children; strings become text nodes.
 * `attrs.class` sets className, `attrs.title` a tooltip; other keys are attributes.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/**
 * Text as nodes with a line-break opportunity (<wbr>) after each "/", ".", "_" and ":", so a
 * long path or name wraps at its joints first; the text itself is unchanged.
 */
export function breakable(text) {
  const nodes = [];
  for (const part of String(text).split(/(?<=[/._:])/)) {
    if (nodes.length) nodes.push(document.createElement("wbr"));
    nodes.push(document.createTextNode(part));
  }
  return nodes;
}

/** A <td>, with an optional class; content as for el(). */
export function td(cls, ...children) {
  return el("td", cls ? { class: cls } : {}, ...children);
}

/** A cell showing a "file:line in function" site, shortened, with the full text as tooltip. */
export function siteCell(site, cls = "site") {
  const text = typeof site === "string" ? site : "–";
  return td(cls, el("code", { title: text }, ...breakable(shortSite(text))));
}

/** A row saying the table has nothing to show. */
export function emptyRow(columns, text) {
  return el("tr", { class: "empty" }, el("td", { colspan: columns }, text));
}

/** Set an element's text by id (no-op when the id is missing). */
export function setText(id, text) {
  const node = document.getElementById(id);
  if (node && node.textContent !== text) node.textContent = text;
}

/** Replace a table body's rows in one go. */
export function fillBody(table, rows) {
  table.tBodies[0].replaceChildren(...rows);
}

const SVG = "http://www.w3.org/2000/svg";

/** A tiny line of `values` (numbers) as an inline SVG, `width` x `height` CSS px. */
export function sparkline(values, width = 64, height = 16) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("aria-hidden", "true");
  if (values.length < 2) return svg;
  let low = Infinity;
  let high = -Infinity;
  for (const v of values) {
    low = Math.min(low, v);
    high = Math.max(high, v);
  }
  const span = high - low;
  const step = width / (values.length - 1);
  // A flat series is drawn across the middle; otherwise low..high fills the height.
  const y = (v) => (span ? height - 1 - ((v - low) / span) * (height - 2) : height / 2);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  return svg;
}
