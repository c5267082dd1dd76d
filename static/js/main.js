// The dashboard page: initial data from the page's JSON, charts seeded from
// "api/v1/history", then live snapshots over server-sent events from "api/v1/events".
// Every URL is relative, so the page works wherever the dashboard is mounted.

import { renderBlocks } from "./blocks.js";
import { ChartBoard, chartStats } from "./charts.js";
import { renderConnections, setUpConnectionSorting } from "./connections.js";
import { el, setText } from "./dom.js";
import * as fmt from "./format.js";
import { renderOwn } from "./own.js";
import { renderPools } from "./pools.js";
import { SeriesStore } from "./store.js";
import { SnapshotStream } from "./stream.js";
import * as tables from "./tables.js";
import { renderTimeouts } from "./timeouts.js";
import { SiteTrends } from "./trends.js";
import { judge } from "./verdict.js";

/** The longest chart window; the store keeps a little more. */
const MAX_WINDOW_S = 900;
const MAX_ROWS = 20000;

const readJSON = (id) => JSON.parse(document.getElementById(id).textContent);

const config = readJSON("page-config");
const limits = config.verdict;
const store = new SeriesStore(MAX_WINDOW_S + 60, MAX_ROWS);
const trends = new SiteTrends(limits.recent_s);
let latest = readJSON("initial-snapshot");
let windowS = config.default_window_s;
let seededS = 0; // seconds of history asked for so far
let paused = false;
let connection = "connecting";
let renderQueued = false;

const board = new ChartBoard(store, () => windowS);

/** What the page did, for the browser tests and for anyone curious (read-only use). */
const stats = {
  received: 0, // snapshots from the stream
  applied: 0, // snapshots that were new and went into the store
  renders: 0,
  renderedSeq: null,
  renderedPid: null, // the monitored process that sent the snapshot shown
  renderMs: null,
  status: connection,
  historySamples: 0,
  historyError: null,
  charts: chartStats,
};
window.__dashboardStats = stats;

function take(snapshot) {
  if (!store.add(snapshot)) return false;
  trends.add(snapshot);
  if (!(snapshot.time <= latest.time)) latest = snapshot;
  return true;
}

/** Merge many snapshots (the history seed) through the store, then redraw. */
function seed(snapshots) {
  store.seed(snapshots);
  let newest = latest;
  for (const snapshot of snapshots) {
    trends.add(snapshot);
    if (snapshot.time > newest.time) newest = snapshot;
  }
  latest = newest;
  scheduleRender();
}

function onSnapshot(snapshot) {
  stats.received += 1;
  if (take(snapshot)) {
    stats.applied += 1;
    scheduleRender();
  }
}

function scheduleRender() {
  if (renderQueued || paused) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function showStatus() {
  const state = paused ? "paused" : connection;
  stats.status = state;
  document.getElementById("status").dataset.state = state;
  const words = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…" };
  setText("status-text", paused ? "paused" : words[state] || state);
}

function renderVerdict(snapshot) {
  const verdict = judge(snapshot, store.lastRows(2 * limits.recent_s), limits);
  const section = document.getElementById("verdict");
  section.dataset.level = verdict.level;
  setText("verdict-label", { ok: "OK", degraded: "Degraded", blocked: "Blocked" }[verdict.level]);
  const items = verdict.reasons.map((r) => el("li", { class: `reason-${r.level}` }, r.text));
  if (!items.length) {
    items.push(
      el(
        "li",
        { class: "reason-ok" },
        `no block in the last ${limits.recent_s} s, lag p99 under ${fmt.ms(limits.lag_p99_ms)}, ` +
          "pending Deferreds and timeouts steady, no site losing results, no pool saturated",
      ),
    );
  }
  document.getElementById("verdict-reasons").replaceChildren(...items);
}

function figure(id, value, note = "") {
  setText(`figure-${id}-value`, value);
  setText(`figure-${id}-note`, note);
}

function renderFigures(snapshot) {
  const loop = snapshot.loop || {};
  const lag = loop.lag_ms || {};
  const deferreds = snapshot.deferreds || {};
  const connections = snapshot.connections || {};
  const proc = snapshot.process || {};
  const errors = snapshot.errors || {};
  const newest = store.newest;
  const blocks = loop.blocks || [];
  figure("lag", fmt.ms(lag.p99), `p50 ${fmt.ms(lag.p50)}`);
  figure("busy", fmt.percent(loop.busy_ratio), `${fmt.count(loop.iterations_total)} iterations`);
  figure("pending", fmt.count(deferreds.pending), `oldest ${fmt.age(deferreds.oldest_pending_age_s)}`);
  figure(
    "connections",
    fmt.count(connections.open),
    `${fmt.count((connections.listening || []).length)} listening`,
  );
  figure("timeouts", newest ? fmt.rate(newest.timeoutsRate) : "–", "per second");
  figure(
    "blocks",
    fmt.count(loop.blocks_total),
    blocks.length ? `last ${fmt.clock(blocks[blocks.length - 1].at)}` : "none recent",
  );
  figure("rss", fmt.bytes(proc.rss_bytes), `${fmt.count(proc.open_fds)} open files`);
  figure(
    "cpu",
    proc.cpu_percent === undefined || proc.cpu_percent === null ? "–" : `${proc.cpu_percent} %`,
    `${fmt.count(proc.threads)} threads`,
  );
  const disabled = errors.disabled || [];
  figure("errors", fmt.count(errors.total), disabled.length ? `off: ${disabled.join(", ")}` : "");
}

function render() {
  if (paused) return;
  const started = performance.now();
  const snapshot = latest;
  renderVerdict(snapshot);
  renderFigures(snapshot);
  board.update();
  renderOwn(snapshot);
  tables.renderSites(snapshot, trends);
  tables.renderLost(snapshot);
  tables.renderOldest(snapshot);
  tables.renderLoops(snapshot);
  renderBlocks(snapshot);
  renderConnections(snapshot);
  renderPools(snapshot);
  renderTimeouts(snapshot);
  setText("seq", `#${snapshot.seq}`);
  stats.renders += 1;
  stats.renderedSeq = snapshot.seq;
  stats.renderedPid = snapshot.process ? snapshot.process.pid : null;
  stats.renderMs = performance.now() - started;
}

/** Fetch the samples of the last `seconds` from api/v1/history into the store. Full
 * snapshots are large, so the page asks for the window shown, not all there is. */
async function loadHistory(seconds) {
  const span = Math.max(1, Math.min(config.history_seconds, Math.ceil(seconds)));
  seededS = Math.max(seededS, seconds);
  try {
    const response = await fetch(`api/v1/history?seconds=${span}`, { cache: "no-store" });
    if (!response.ok) throw new Error(`history answered ${response.status}`);
    const body = await response.json();
    stats.historySamples += body.samples.length;
    seed(body.samples);
  } catch (error) {
    stats.historyError = String(error);
  }
}

function setUpControls() {
  const pause = document.getElementById("pause");
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    showStatus();
    if (!paused) render();
  });
  for (const radio of document.querySelectorAll('input[name="window"]')) {
    radio.addEventListener("change", () => {
      windowS = Number(radio.value);
      if (windowS > seededS) loadHistory(windowS); // history beyond what the page has
      if (!paused) board.update();
    });
  }
  setUpConnectionSorting();
  const scheme = window.matchMedia("(prefers-color-scheme: dark)");
  scheme.addEventListener("change", () => {
    board.build();
    board.update();
  });
  let resizeQueued = false;
  new ResizeObserver(() => {
    if (resizeQueued) return;
    resizeQueued = true;
    requestAnimationFrame(() => {
      resizeQueued = false;
      board.resize();
    });
  }).observe(document.querySelector(".charts"));
}

function start() {
  take(latest);
  setUpControls();
  board.build();
  render();
  showStatus();
  loadHistory(windowS);
  const stream = new SnapshotStream("api/v1/events", {
    onSnapshot,
    onStatus: (state) => {
      connection = state;
      showStatus();
    },
    // A replaced EventSource sends no Last-Event-ID: refill what was missed from history.
    onGap: () => loadHistory(Date.now() / 1000 - latest.time + 2),
  });
  window.__dashboard.stream = stream;
  stream.start();
}

// Test hook: the same path as the history seed, for data the server cannot produce quickly.
window.__dashboard = { seed, store };

start();
