// The time-series charts (uPlot, vendored). Each update sets every chart's data over the
// chosen window and draws at once; the time it takes is measured with performance.now().

import { count, ms, rate, shortPool } from "./format.js";

const HEIGHT_PX = 150;

/** Tick steps for charts of whole things (no 0.5 Deferred). */
const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 1e6];

/** A tick value with no trailing zeros: 0, 2.5, 40. */
const tick = (v) => String(Number(v.toPrecision(3)));

const hhmmss = new Intl.DateTimeFormat("en-GB", {
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  hour12: false,
});
const hhmm = new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hour12: false });

/** The charts: which row keys each draws, their legend labels and the latest-value text. */
const CHARTS = [
  {
    id: "lag",
    keys: ["lagP50", "lagP99", "lagLast"],
    labels: ["p50", "p99", "max per sample"],
    axis: (v) => `${tick(v)} ms`,
    now: (r) => `p99 ${ms(r.lagP99)} · last ${ms(r.lagLast)}`,
  },
  {
    id: "busy",
    keys: ["busy"],
    labels: ["busy share"],
    max: 100,
    axis: (v) => `${v.toFixed(0)} %`,
    now: (r) => (r.busy === null ? "–" : `${r.busy.toFixed(1)} %`),
  },
  {
    id: "pending",
    keys: ["pending"],
    labels: ["pending"],
    whole: true,
    axis: (v) => count(v),
    now: (r) => count(r.pending),
  },
  {
    id: "connections",
    keys: ["open"],
    labels: ["open"],
    whole: true,
    axis: (v) => count(v),
    now: (r) => count(r.open),
  },
  {
    id: "pools",
    pools: true,
    whole: true,
    axis: (v) => count(v),
    now: (r) => {
      const total = Object.values(r.pools).reduce((a, b) => a + (b || 0), 0);
      return `${count(total)} in use`;
    },
  },
  {
    id: "timeouts",
    keys: ["timeoutsRate"],
    labels: ["timeouts/s"],
    axis: tick,
    now: (r) => `${rate(r.timeoutsRate)}/s`,
  },
];

/** Colours from the page's CSS custom properties, so charts follow light/dark. */
function theme() {
  const style = getComputedStyle(document.documentElement);
  const get = (name) => style.getPropertyValue(name).trim();
  const series = [];
  for (let i = 1; i <= 8; i += 1) series.push(get(`--series-${i}`));
  return { text: get("--muted"), grid: get("--grid"), series };
}

/** A y range from 0 to a little above the highest value (or a fixed top), with a sliver
 * below 0 so that a line at zero is not cut in half by the plot's edge. */
function yRange(fixedMax) {
  return (_u, _min, max) => {
    const top = fixedMax || (Number.isFinite(max) && max > 0 ? max * 1.15 : 1);
    return [-top * 0.03, top];
  };
}

/** Recent chart update times, for the page's own budget and the browser tests. */
export const chartStats = {
  updates: 0,
  lastMs: null,
  maxMs: null,
  recentMs: [],
  slowestChartMs: null,
  recentSlowestMs: [],
  points: {},
};

const RECENT_TIMINGS = 120;

export class ChartBoard {
  /** `store` gives the rows; `windowS()` the seconds shown. */
  constructor(store, windowS) {
    this.store = store;
    this.windowS = windowS;
    this.charts = new Map();
    this.poolNames = [];
  }

  /** Create every chart (again after a colour-scheme change). */
  build() {
    for (const chart of this.charts.values()) chart.plot.destroy();
    this.charts.clear();
    this.colors = theme();
    for (const def of CHARTS) this.buildOne(def);
  }

  buildOne(def) {
    const host = document.getElementById(`chart-${def.id}-plot`);
    if (!host) return;
    const labels = def.pools ? [...this.store.poolNames] : def.labels;
    if (def.pools) this.poolNames = labels;
    const { text, grid, series } = this.colors;
    const axis = {
      stroke: text,
      grid: { stroke: grid, width: 1 },
      ticks: { stroke: grid, width: 1, size: 4 },
      font: "11px system-ui, sans-serif",
    };
    const options = {
      width: Math.max(200, host.clientWidth),
      height: HEIGHT_PX,
      cursor: { show: false },
      legend: { show: true, live: false },
      scales: {
        x: { time: true, range: () => this.xRange() },
        y: { range: yRange(def.max) },
      },
      axes: [
        { ...axis, space: 64, values: (_u, splits) => splits.map((t) => this.timeLabel(t)) },
        {
          ...axis,
          size: 58,
          space: 28,
          values: (_u, splits) => splits.map(def.axis),
          ...(def.whole ? { incrs: WHOLE_STEPS } : {}),
        },
      ],
      series: [
        {},
        ...labels.map((label, i) => ({
          label: def.pools ? shortPool(label) : label,
          stroke: series[i % series.length],
          width: 1.5,
          points: { show: false },
        })),
      ],
    };
    const plot = new window.uPlot(options, this.data(def), host);
    this.charts.set(def.id, { def, plot, host });
  }

  /** The chosen window, or less while the page holds less data than that. */
  xRange() {
    const rows = this.store.rows;
    const end = rows.length ? rows[rows.length - 1].t : Date.now() / 1000;
    let start = end - this.windowS();
    if (rows.length > 1) start = Math.max(start, rows[0].t);
    if (!(start < end)) start = end - 1;
    return [start, end];
  }

  timeLabel(epochSeconds) {
    const date = new Date(epochSeconds * 1000);
    return (this.windowS() > 300 ? hhmm : hhmmss).format(date);
  }

  data(def) {
    const seconds = this.windowS();
    return def.pools ? this.store.poolColumns(seconds) : this.store.columns(seconds, def.keys);
  }

  /** Redraw every chart from the store; returns the time it took in ms. */
  update() {
    const names = this.store.poolNames;
    if (names.length !== this.poolNames.length) {
      const pools = this.charts.get("pools");
      if (pools) pools.plot.destroy();
      this.buildOne(CHARTS.find((d) => d.pools));
    }
    const started = performance.now();
    let slowest = 0;
    for (const { def, plot } of this.charts.values()) {
      const begun = performance.now();
      const data = this.data(def);
      chartStats.points[def.id] = data[0].length;
      plot.batch(() => plot.setData(data));
      slowest = Math.max(slowest, performance.now() - begun);
    }
    const took = performance.now() - started;
    chartStats.slowestChartMs = slowest;
    chartStats.recentSlowestMs.push(slowest);
    if (chartStats.recentSlowestMs.length > RECENT_TIMINGS) chartStats.recentSlowestMs.shift();
    chartStats.updates += 1;
    chartStats.lastMs = took;
    chartStats.maxMs = chartStats.maxMs === null ? took : Math.max(chartStats.maxMs, took);
    chartStats.recentMs.push(took);
    if (chartStats.recentMs.length > RECENT_TIMINGS) chartStats.recentMs.shift();
    this.captions();
    return took;
  }

  /** The latest value of each chart, as text beside its title. */
  captions() {
    const newest = this.store.newest;
    if (!newest) return;
    for (const { def } of this.charts.values()) {
      const node = document.getElementById(`chart-${def.id}-now`);
      const text = def.now(newest);
      if (node && node.textContent !== text) node.textContent = text;
    }
  }

  /** Follow the width of each chart's card. */
  resize() {
    for (const { plot, host } of this.charts.values()) {
      const width = Math.max(200, host.clientWidth);
      if (width !== plot.width) plot.setSize({ width, height: HEIGHT_PX });
    }
  }
}
