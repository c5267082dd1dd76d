// Number, size, age and clock formatting for what the page shows. Pure functions.

const DASH = "–";

/** A count with thin grouping, or a dash for null/undefined. */
export function count(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return Math.round(value).toLocaleString("en-US");
}

/** Milliseconds with a precision fitting the size: 0.42 ms, 12.3 ms, 250 ms, 1.5 s. */
export function ms(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  if (value >= 10000) return `${(value / 1000).toFixed(0)} s`;
  if (value >= 1000) return `${(value / 1000).toFixed(1)} s`;
  if (value >= 100) return `${value.toFixed(0)} ms`;
  if (value >= 10) return `${value.toFixed(1)} ms`;
  return `${value.toFixed(2)} ms`;
}

/** A ratio 0..1 as a percentage. */
export function percent(ratio, digits = 1) {
  if (ratio === null || ratio === undefined || !Number.isFinite(ratio)) return DASH;
  return `${(ratio * 100).toFixed(digits)} %`;
}

/** A rate per second. */
export function rate(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  return value >= 10 ? value.toFixed(0) : value.toFixed(value >= 1 ? 1 : 2);
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** Bytes in binary units: 512 B, 4.0 KiB, 56.1 MiB. */
export function bytes(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return DASH;
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < UNITS.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${UNITS[unit]}`;
}

/** A duration in seconds: 0.4 s, 12 s, 3 min 05 s, 2 h 04 min. */
export function age(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  const whole = Math.round(seconds);
  if (whole < 3600) {
    return `${Math.floor(whole / 60)} min ${String(whole % 60).padStart(2, "0")} s`;
  }
  const minutes = Math.floor(whole / 60);
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

/** An epoch time (seconds) as the local wall clock, HH:MM:SS. */
export function clock(epochSeconds) {
  if (!Number.isFinite(epochSeconds)) return DASH;
  const date = new Date(epochSeconds * 1000);
  return date.toLocaleTimeString("en-GB", { hour12: false });
}

/** The last path parts of a "file:line in function" site, to keep cells short. */
export function shortSite(site) {
  if (typeof site !== "string") return DASH;
  const at = site.indexOf(":");
  const path = at >= 0 ? site.slice(0, at) : site;
  const parts = path.split("/");
  if (parts.length <= 3) return site;
  return `…/${parts.slice(-2).join("/")}${at >= 0 ? site.slice(at) : ""}`;
}

/** The function of a "path.py:LINE in function" site. */
const functionOf = (site) => {
  const at = site.indexOf(" in ");
  return at >= 0 ? site.slice(at + 4) : shortSite(site);
};

/** A pool's name kept short for a chart legend: a creation site as shortSite does; a pool
 * made in a class's __init__ "site (from maker)" by the two functions, "Client.__init__ ←
 * Server.get_client"; an adbapi pool's "driver /path/to/db" as "driver …/db"; anything else
 * unchanged. */
export function shortPool(name) {
  if (typeof name !== "string") return DASH;
  const made = name.match(/^(.*?) \(from (.*)\)( #\d+)?$/);
  if (made && / in /.test(made[1])) {
    return `${functionOf(made[1])} ← ${functionOf(made[2])}${made[3] || ""}`;
  }
  if (/:\d+ in /.test(name)) return shortSite(name);
  const space = name.indexOf(" ");
  if (space > 0) {
    const path = name.slice(space + 1);
    const parts = path.split("/");
    if (parts.length > 2) return `${name.slice(0, space)} …/${parts[parts.length - 1]}`;
  }
  return name;
}
