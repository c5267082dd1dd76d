// Pending Deferreds per creation site over the last minute, for the trend column.
// Bounded: only the sites the snapshots list (their top N), only the last `windowS` seconds.

export class SiteTrends {
  constructor(windowS) {
    this.windowS = windowS;
    this.bySite = new Map(); // site -> [[t, pending], ...] oldest first
    this.lastT = -Infinity;
  }

  /** Record a snapshot's per-site pending counts. Snapshots may come out of order (the
   * history seed lands after the first live ones); each site's points stay sorted. */
  add(snapshot) {
    const t = snapshot.time;
    if (!Number.isFinite(t) || t < this.lastT - this.windowS) return;
    this.lastT = Math.max(this.lastT, t);
    const sites = (snapshot.deferreds && snapshot.deferreds.sites) || [];
    for (const site of sites) {
      if (!site || typeof site.site !== "string") continue;
      let points = this.bySite.get(site.site);
      if (!points) {
        points = [];
        this.bySite.set(site.site, points);
      }
      let at = points.length;
      while (at > 0 && points[at - 1][0] > t) at -= 1;
      if (at > 0 && points[at - 1][0] === t) continue; // seen already
      points.splice(at, 0, [t, site.pending]);
    }
    const horizon = this.lastT - this.windowS;
    for (const [site, points] of this.bySite) {
      let drop = 0;
      while (drop < points.length && points[drop][0] < horizon) drop += 1;
      if (drop) points.splice(0, drop);
      if (!points.length) this.bySite.delete(site);
    }
  }

  /** {values, delta, spanS} for `site`: its pending counts and the change over the window. */
  trend(site) {
    const points = this.bySite.get(site) || [];
    const values = points.map((p) => p[1]);
    if (points.length < 2) return { values, delta: 0, spanS: 0 };
    return {
      values,
      delta: values[values.length - 1] - values[0],
      spanS: points[points.length - 1][0] - points[0][0],
    };
  }
}
