// The time series the charts and the verdict read: one small row per snapshot, bounded by
// age and count. Samples arrive from the series seed (api/v1/series: each sample's charted
// figures in the snapshot's own shape) and whole snapshots from the live stream, in any
// order around the seam between the two; rows stay sorted by time and unique.

/** At most this many pools get their own line in the pools chart (first seen first). */
export const MAX_CHARTED_POOLS = 8;

/** The figures of one snapshot that are charted or judged over time: all a series sample
 * carries (dashboard/web/series.py), so both read the same. */
export function rowFromSnapshot(snapshot) {
  const loop = snapshot.loop || {};
  const lag = loop.lag_ms || {};
  const deferreds = snapshot.deferreds || {};
  const connections = snapshot.connections || {};
  const timeouts = snapshot.timeouts || {};
  const fired = timeouts.fired_total || {};
  let timeoutsTotal = 0;
  for (const value of Object.values(fired)) timeoutsTotal += Number(value) || 0;
  const pools = {};
  for (const pool of snapshot.pools || []) {
    if (pool && typeof pool.name === "string") pools[pool.name] = pool.in_use ?? null;
  }
  return {
    t: snapshot.time,
    seq: snapshot.seq,
    lagP50: lag.p50 ?? null,
    lagP99: lag.p99 ?? null,
    lagLast: lag.last ?? null,
    busy: loop.busy_ratio === null || loop.busy_ratio === undefined ? null : loop.busy_ratio * 100,
    pending: deferreds.pending ?? null,
    open: connections.open ?? null,
    timeoutsTotal: timeouts.fired_total ? timeoutsTotal : null,
    timeoutsCum: 0,
    timeoutsRate: null,
    pools,
  };
}

/** Timeouts per second are averaged over this many trailing seconds (at least 2 samples),
 * so a sample rate above one per second does not turn single timeouts into spikes. */
export const RATE_WINDOW_S = 5;

/**
 * Fill `rows[i]`'s running timeout count (`timeoutsCum`, which ignores counter resets
 * such as a server restart) and its trailing rate. Needs rows[0..i-1] filled.
 */
function fillRate(rows, i) {
  const row = rows[i];
  const previous = rows[i - 1];
  row.timeoutsRate = null;
  if (!previous) {
    row.timeoutsCum = 0;
    return;
  }
  const grew = row.timeoutsTotal !== null && previous.timeoutsTotal !== null;
  const step = grew ? row.timeoutsTotal - previous.timeoutsTotal : 0;
  row.timeoutsCum = previous.timeoutsCum + (step > 0 ? step : 0);
  if (!grew) return;
  let j = i - 1;
  while (j > 0 && row.t - rows[j].t < RATE_WINDOW_S) j -= 1;
  const dt = row.t - rows[j].t;
  if (dt > 0) row.timeoutsRate = (row.timeoutsCum - rows[j].timeoutsCum) / dt;
}

export class SeriesStore {
  /** Keep rows of the last `maxAgeS` seconds, at most `maxRows` of them. */
  constructor(maxAgeS, maxRows) {
    this.maxAgeS = maxAgeS;
    this.maxRows = maxRows;
    this.rows = [];
    this.poolNames = [];
  }

  get newest() {
    return this.rows.length ? this.rows[this.rows.length - 1] : null;
  }

  /** Add one live snapshot. False when it is not newer than the newest row (a repeat). */
  add(snapshot) {
    if (!Number.isFinite(snapshot.time)) return false;
    const newest = this.newest;
    if (newest && snapshot.time <= newest.t) return false;
    const row = rowFromSnapshot(snapshot);
    this.rows.push(row);
    fillRate(this.rows, this.rows.length - 1);
    this.notePools(row);
    this.trim();
    return true;
  }

  /** Merge many snapshots or series samples (the seed, or test data through the same path). */
  seed(snapshots) {
    const byTime = new Map();
    for (const row of this.rows) byTime.set(row.t, row);
    for (const snapshot of snapshots) {
      if (snapshot && Number.isFinite(snapshot.time) && !byTime.has(snapshot.time)) {
        byTime.set(snapshot.time, rowFromSnapshot(snapshot));
      }
    }
    this.rows = [...byTime.values()].sort((a, b) => a.t - b.t);
    for (let i = 0; i < this.rows.length; i += 1) fillRate(this.rows, i);
    for (const row of this.rows) this.notePools(row);
    this.trim();
  }

  notePools(row) {
    if (this.poolNames.length >= MAX_CHARTED_POOLS) return;
    for (const name of Object.keys(row.pools)) {
      if (!this.poolNames.includes(name) && this.poolNames.length < MAX_CHARTED_POOLS) {
        this.poolNames.push(name);
      }
    }
  }

  trim() {
    const newest = this.newest;
    if (!newest) return;
    const horizon = newest.t - this.maxAgeS;
    let drop = Math.max(0, this.rows.length - this.maxRows);
    while (drop < this.rows.length && this.rows[drop].t < horizon) drop += 1;
    if (drop > 0) this.rows.splice(0, drop);
  }

  /** Index of the first row at or after time `t` (binary search). */
  indexAt(t) {
    let low = 0;
    let high = this.rows.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.rows[mid].t < t) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  /** Rows of the last `seconds` before the newest row. */
  lastRows(seconds) {
    const newest = this.newest;
    if (!newest) return [];
    return this.rows.slice(this.indexAt(newest.t - seconds));
  }

  /** Column arrays for uPlot over the last `seconds`: [times, ...one array per key]. */
  columns(seconds, keys) {
    const rows = this.lastRows(seconds);
    const out = [new Array(rows.length)];
    for (let k = 0; k < keys.length; k += 1) out.push(new Array(rows.length));
    for (let i = 0; i < rows.length; i += 1) {
      const row = rows[i];
      out[0][i] = row.t;
      for (let k = 0; k < keys.length; k += 1) out[k + 1][i] = row[keys[k]];
    }
    return out;
  }

  /** Column arrays of the charted pools' in-use counts over the last `seconds`. */
  poolColumns(seconds) {
    const rows = this.lastRows(seconds);
    const names = this.poolNames;
    const out = [new Array(rows.length)];
    for (let k = 0; k < names.length; k += 1) out.push(new Array(rows.length));
    for (let i = 0; i < rows.length; i += 1) {
      const row = rows[i];
      out[0][i] = row.t;
      for (let k = 0; k < names.length; k += 1) out[k + 1][i] = row.pools[names[k]] ?? null;
    }
    return out;
  }
}
