// The dashboard page: initial data from the page's JSON, charts seeded from
// "api/v1/series" (the charted figures of each sample, not whole snapshots), then live
// snapshots over server-sent events from "api/v1/events".
// Every URL is relative, so the page works wherever the dashboard is mounted.

import { renderBlocks } from "./blocks.js";
import { ChartBoard, chartStats } from "./charts.js";
import { renderConnections, setUpConnectionSorting } from "./connections.js";
import { el, setText } from "./dom.js";
import * as fmt from "./format.js";
import { HandlerTrends, renderHandlers } from "./handlers.js";
import { renderOwn } from "./own.js";
import { renderPools } from "./pools.js";
import { profileStats, setUpProfile } from "./profile.js";
import { startReplay } from "./replay.js";
import { SeriesStore } from "./store.js";
import { SnapshotStream } from "./stream.js";
import { StuckWatch } from "./stuck.js";
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
const handlerTrends = new HandlerTrends();
let latest = readJSON("initial-snapshot");
let windowS = config.default_window_s;
let seededS = 0; // seconds of series asked for so far
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
  historySamples: 0, // samples seeded from api/v1/series (the name predates it)
  historyError: null,
  charts: chartStats,
};
window.__dashboardStats = stats;
stats.profile = profileStats;
// Notices a silent stream and asks the stuck server (see stuck.js).
const stuckWatch = new StuckWatch({ intervalS: config.interval_s, stats });

function take(snapshot) {
  if (!store.add(snapshot)) return false;
  trends.add(snapshot);
  handlerTrends.add(snapshot);
  if (!(snapshot.time <= latest.time)) latest = snapshot;
  return true;
}

/** Merge many samples (the series seed, or whole snapshots from a test) into the charts'
 * store and the per-site trends, then redraw. `latest` stays the newest whole snapshot:
 * a series sample lacks what the tables show, and the stream brings the next one. */
function seed(samples) {
  store.seed(samples);
  for (const sample of samples) trends.add(sample);
  scheduleRender();
}

function onSnapshot(snapshot) {
  stats.received += 1;
  stuckWatch.heard();
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
  renderHandlers(snapshot, handlerTrends);
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

/** Tries of api/v1/series: a 503 (too many answers being written) is tried again after its
 * Retry-After, at most this many times in all. */
const SERIES_TRIES = 3;

async function fetchSeries(url) {
  for (let attempt = 1; ; attempt += 1) {
    const response = await fetch(url, { cache: "no-store" });
    if (response.status !== 503 || attempt >= SERIES_TRIES) return response;
    const waitS = Math.min(30, Number(response.headers.get("Retry-After")) || 5);
    await new Promise((resolve) => setTimeout(resolve, waitS * 1000));
  }
}

/** Fetch the chart series of the last `seconds` from api/v1/series into the store; the
 * samples of the trend window (limits.recent_s) also carry their per-site pending counts. */
async function loadSeries(seconds) {
  const span = Math.max(1, Math.min(config.history_seconds, Math.ceil(seconds)));
  const sitesS = Math.max(0, Math.min(span, Math.floor(limits.recent_s)));
  seededS = Math.max(seededS, seconds);
  try {
    const response = await fetchSeries(`api/v1/series?seconds=${span}&sites_seconds=${sitesS}`);
    if (!response.ok) throw new Error(`series answered ${response.status}`);
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
      if (windowS > seededS) loadSeries(windowS); // history beyond what the page has
      if (!paused) board.update();
    });
  }
  setUpConnectionSorting();
  setUpProfile(!config.replay);
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
  if (config.replay) {
    replayRecording();
    return;
  }
  loadSeries(windowS);
  const stream = new SnapshotStream("api/v1/events", {
    onSnapshot,
    onStatus: (state) => {
      connection = state;
      showStatus();
    },
    // A replaced EventSource sends no Last-Event-ID: refill what was missed from the series.
    onGap: () => loadSeries(Date.now() / 1000 - latest.time + 2),
  });
  window.__dashboard.stream = stream;
  stream.start();
  stuckWatch.start();
}

/** A recording (reactor-dashboard replay): no stream; the charts over the chosen range and
 * the rest of the page at the chosen moment, driven by static/js/replay.js. */
function replayRecording() {
  connection = "replay";
  showStatus();
  document.querySelector(".window-switch").hidden = true;
  document.getElementById("pause").hidden = true;
  window.__dashboard.replay = startReplay(config.replay, {
    stats,
    recentS: limits.recent_s,
    showRange: (samples, from, to) => {
      store.rows = [];
      store.maxAgeS = Math.max(1, to - from) + 60;
      windowS = Math.max(1, to - from);
      seed(samples);
    },
    showMoment: (snapshot) => {
      latest = snapshot;
      scheduleRender();
    },
  });
}

// Test hook: the same path as the series seed, for data the server cannot produce quickly.
window.__dashboard = { seed, store, trends };

start();
