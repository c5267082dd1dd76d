// The live feed: an EventSource on the relative URL "api/v1/events". The browser
// reconnects by itself after a dropped stream (sending Last-Event-ID, so the server replays
// what was missed); when it gives up for good (a non-200 answer, e.g. 503 when full) a new
// EventSource is made after a growing delay, and `onGap` lets the page refill the gap.

const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;

export class SnapshotStream {
  /**
   * `onSnapshot(snapshot)` per event; `onStatus("connecting" | "live" | "reconnecting")`;
   * `onGap()` after a fresh EventSource replaced one that gave up.
   */
  constructor(url, { onSnapshot, onStatus, onGap }) {
    this.url = url;
    this.onSnapshot = onSnapshot;
    this.onStatus = onStatus;
    this.onGap = onGap;
    this.source = null;
    this.retryMs = FIRST_RETRY_MS;
    this.timer = null;
    this.reconnects = 0;
    this.badEvents = 0;
  }

  start() {
    this.open(false);
  }

  open(replacing) {
    const source = new EventSource(this.url);
    this.source = source;
    this.onStatus("connecting");
    source.addEventListener("open", () => {
      this.retryMs = FIRST_RETRY_MS;
      this.onStatus("live");
      if (replacing) this.onGap();
      replacing = false;
    });
    source.addEventListener("snapshot", (event) => {
      let snapshot;
      try {
        snapshot = JSON.parse(event.data);
      } catch {
        this.badEvents += 1;
        return;
      }
      this.onSnapshot(snapshot);
    });
    source.addEventListener("error", () => {
      if (source !== this.source) return;
      this.onStatus("reconnecting");
      if (source.readyState === EventSource.CLOSED) this.replaceLater();
      else this.reconnects += 1;
    });
  }

  replaceLater() {
    if (this.timer !== null) return;
    const delay = this.retryMs;
    this.retryMs = Math.min(LAST_RETRY_MS, this.retryMs * 2);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.reconnects += 1;
      this.open(true);
    }, delay);
  }
}
