// While the loop is stuck, the page hears nothing: the event stream (and every keep-alive
// connection) is held by the reactor thread that cannot run. The dashboard's stuck server
// still answers "api/v1/snapshot" on a NEW connection, from a thread of its own, with a live
// `loop.stuck` ({since, for_s, stack, where}). This module notices the silence and asks for
// that snapshot. The browser would send an ask over an idle keep-alive connection the stuck
// reactor holds (one per file the page loaded, up to six), so the first asks go out as a
// burst, all aborted after ASK_TIMEOUT_MS: an aborted fetch closes its connection, so the
// burst clears the held ones at once and the next asks open new connections, which reach the
// stuck server. Once answered it asks once a second and shows "Stuck for N s in <where>" with
// the live stack, until the loop runs again: then the stream speaks again (or an answer says
// `stuck: null`) and the banner goes. Asks nobody answers (the server gone) back off to one
// every 8 s; a silent stream with a running loop (answered `stuck: null`), one every 5 s.

import { setText } from "./dom.js";

/** How long one ask may take before it is aborted, ms. */
const ASK_TIMEOUT_MS = 1000;
/** Asks while the banner shows: one a second. */
const ASK_EVERY_MS = 1000;
/** Asks while silent but answered "not stuck" (the stream is down, the loop runs). */
const CALM_ASK_EVERY_MS = 5000;
/** The longest wait after asks nobody answered (the server gone), ms. */
const MAX_BACKOFF_MS = 8000;
/** Asks at once until one is answered: the browser's connections per host (HTTP/1.1). */
const BURST = 6;
/** How often the silence is looked at, ms. */
const LOOK_EVERY_MS = 250;
/** The shortest silence taken for a stuck loop, ms (samples normally arrive every interval). */
const MIN_SILENCE_MS = 2000;

export class StuckWatch {
  /** `intervalS`: seconds between samples; `stats`: the page's stats object (written). */
  constructor({ intervalS, stats }) {
    this.silenceMs = Math.max(MIN_SILENCE_MS, 2 * intervalS * 1000 + 500);
    this.lastHeard = performance.now();
    this.nextAskAt = 0;
    this.failures = 0; // rounds of asks in a row that nobody answered
    this.answered = false; // the last round was answered: new connections reach the server
    this.asking = false;
    this.shown = null;
    this.stats = stats;
    stats.stuck = { asks: 0, answers: 0, aborted: 0, shown: false, where: null, for_s: null };
  }

  start() {
    setInterval(() => this.tick(), LOOK_EVERY_MS);
  }

  /** The stream delivered a snapshot: the loop runs. */
  heard() {
    this.lastHeard = performance.now();
    this.nextAskAt = 0;
    this.failures = 0;
    this.answered = false;
    if (this.shown) this.show(null);
  }

  silent() {
    return performance.now() - this.lastHeard >= this.silenceMs;
  }

  async tick() {
    if (this.asking || !this.silent() || performance.now() < this.nextAskAt) return;
    this.asking = true;
    try {
      // A burst until a round is answered: then new connections reach the stuck server.
      const snapshot = await this.ask(this.answered ? 1 : BURST);
      this.answered = snapshot !== null;
      if (snapshot === null) {
        this.failures += 1;
        const backoff = LOOK_EVERY_MS * 2 ** (this.failures - 1);
        this.nextAskAt = performance.now() + Math.min(MAX_BACKOFF_MS, backoff);
        return;
      }
      this.failures = 0;
      // Heard from the stream meanwhile: the loop runs again, whatever this answer says.
      if (!this.silent()) return;
      const stuck = snapshot.loop ? snapshot.loop.stuck || null : null;
      this.nextAskAt = performance.now() + (stuck ? ASK_EVERY_MS : CALM_ASK_EVERY_MS);
      this.show(stuck);
    } finally {
      this.asking = false;
    }
  }

  /** The first of `count` asks to be answered (the others aborted), or null. */
  async ask(count) {
    const controllers = [];
    const asks = [];
    for (let i = 0; i < count; i += 1) {
      const controller = new AbortController();
      controllers.push(controller);
      this.stats.stuck.asks += 1;
      asks.push(
        fetch("api/v1/snapshot", { cache: "no-store", signal: controller.signal }).then(
          (response) => {
            if (!response.ok) throw new Error(`answered ${response.status}`);
            return response.json();
          },
        ),
      );
    }
    const timer = setTimeout(() => controllers.forEach((c) => c.abort()), ASK_TIMEOUT_MS);
    try {
      const snapshot = await Promise.any(asks);
      this.stats.stuck.answers += 1;
      return snapshot;
    } catch {
      return null;
    } finally {
      clearTimeout(timer);
      for (const controller of controllers) {
        if (controller.signal.aborted) this.stats.stuck.aborted += 1;
        else controller.abort(); // answered already, or still waiting: not needed now
      }
      asks.forEach((a) => a.catch(() => {}));
    }
  }

  /** Show `stuck` (null: hide the banner). Text only, never markup. */
  show(stuck) {
    this.shown = stuck;
    const banner = document.getElementById("stuck");
    this.stats.stuck.shown = Boolean(stuck);
    this.stats.stuck.where = stuck ? stuck.where : null;
    this.stats.stuck.for_s = stuck ? stuck.for_s : null;
    if (!stuck) {
      banner.hidden = true;
      return;
    }
    const seconds = Math.floor(Number(stuck.for_s) || 0);
    const where = stuck.where || "an unknown frame";
    setText("stuck-title", `Stuck for ${seconds} s in ${where}`);
    setText("stuck-since", new Date(Number(stuck.since) * 1000).toLocaleTimeString());
    setText("stuck-stack", (stuck.stack || []).map(String).join("\n"));
    banner.hidden = false;
  }
}
