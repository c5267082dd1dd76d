// Replay of a recording (`reactor-dashboard replay PATH`): a time range picker and a
// scrubber instead of the live stream. The charts show the chosen range (api/v1/series with
// from= and to=, thinned by the server to at most a few thousand points); the tables, the
// figures and the verdict show the chosen moment (api/v1/snapshot?at=). An answer that
// arrives after a later request was made is dropped (the page shows what was asked last).
// "Latest" moves "To" to the recording's newest sample (a file still being recorded grows).
// Every URL is relative, as everywhere in the page.

import { setText } from "./dom.js";

/** Seconds the scrubber waits after the last move before it asks for that moment. */
const SCRUB_DELAY_MS = 120;

/** "YYYY-MM-DDTHH:MM:SS" in local time, what a datetime-local input takes. */
function localInput(t) {
  const d = new Date(t * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}` +
    `T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

function fromInput(value) {
  const ms = new Date(value).getTime();
  return Number.isFinite(ms) ? ms / 1000 : null;
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.message || `answered ${response.status}`);
  return body;
}

/**
 * Drive the page from the recording described by `replay` ({from, to, samples}):
 * `showRange(samples, from, to)` puts the charts on a range, `showMoment(snapshot)` the rest
 * of the page on one sample. `stats` is the page's test-visible record; `replay` is added.
 */
export function startReplay(replay, { showRange, showMoment, stats, recentS }) {
  const bar = document.getElementById("replay");
  const fromBox = document.getElementById("replay-from");
  const toBox = document.getElementById("replay-to");
  const scrubber = document.getElementById("replay-scrubber");
  const state = {
    from: replay.from,
    to: replay.to,
    at: replay.to,
    shownAt: null, // time of the sample the tables show
    ranges: 0,
    moments: 0,
    stale: 0, // answers dropped because a later request was made
    latest: 0,
    error: null,
  };
  stats.replay = state;
  bar.hidden = false;

  function setScrubber() {
    scrubber.min = String(state.from);
    scrubber.max = String(state.to);
    scrubber.step = "any";
    scrubber.value = String(Math.min(state.to, Math.max(state.from, state.at)));
  }

  let rangesAsked = 0;
  async function loadRange() {
    const span = Math.max(0, state.to - state.from);
    const sitesS = Math.min(Math.floor(span), Math.floor(recentS));
    const { from, to } = state;
    const ticket = (rangesAsked += 1);
    try {
      const body = await getJSON(`api/v1/series?from=${from}&to=${to}&sites_seconds=${sitesS}`);
      if (ticket !== rangesAsked) {
        state.stale += 1; // a later range was asked: this one is not shown
        return;
      }
      showRange(body.samples, from, to);
      state.ranges += 1;
      state.error = null;
    } catch (error) {
      state.error = String(error);
    }
  }

  let asked = 0;
  async function loadMoment(t) {
    state.at = t;
    const ticket = (asked += 1);
    setText("replay-at", new Date(t * 1000).toLocaleString());
    try {
      const snapshot = await getJSON(`api/v1/snapshot?at=${t}`);
      if (ticket !== asked) {
        state.stale += 1; // a later move won
        return;
      }
      showMoment(snapshot);
      state.shownAt = snapshot.time;
      // "Download snapshot" downloads the moment shown, not the newest sample
      const download = document.querySelector("a.download");
      if (download) download.setAttribute("href", `api/v1/snapshot?at=${snapshot.time}`);
      state.moments += 1;
      state.error = null;
      setText("replay-at", new Date(snapshot.time * 1000).toLocaleString());
    } catch (error) {
      state.error = String(error);
    }
  }

  function applyRange() {
    const from = fromInput(fromBox.value);
    const to = fromInput(toBox.value);
    if (from === null || to === null || to < from) {
      state.error = "the range's end is before its start";
      setText("replay-at", state.error);
      return;
    }
    state.from = from;
    state.to = to + 0.999; // the inputs are whole seconds: keep the last second's samples
    state.at = Math.min(state.to, Math.max(state.from, state.at));
    setScrubber();
    loadRange();
    loadMoment(state.at);
  }

  /** "To" at the recording's newest sample now (its span is read again), the moment too. */
  async function toLatest() {
    try {
      const body = await getJSON("api/v1/history?seconds=1");
      state.to = Math.max(state.from, body.to);
      toBox.value = localInput(state.to);
      state.at = state.to;
      state.latest += 1;
      setScrubber();
      await Promise.all([loadRange(), loadMoment(state.at)]);
    } catch (error) {
      state.error = String(error);
    }
  }

  const latest = document.createElement("button");
  latest.type = "button";
  latest.id = "replay-latest";
  latest.textContent = "Latest";
  latest.title = "Move To to the newest sample recorded (a file still being recorded grows)";
  document.getElementById("replay-apply").after(latest);
  latest.addEventListener("click", toLatest);

  let timer = null;
  scrubber.addEventListener("input", () => {
    clearTimeout(timer);
    const t = Number(scrubber.value);
    setText("replay-at", new Date(t * 1000).toLocaleString());
    timer = setTimeout(() => loadMoment(t), SCRUB_DELAY_MS);
  });
  document.getElementById("replay-apply").addEventListener("click", applyRange);
  setText("replay-count", `${replay.samples} samples recorded`);
  fromBox.value = localInput(state.from);
  toBox.value = localInput(state.to);
  setScrubber();
  loadRange();
  loadMoment(state.at);
  /** For the browser tests and the curious: move to a moment, or to a range. */
  return {
    seek: (t) => {
      scrubber.value = String(t);
      return loadMoment(t);
    },
    range: (from, to) => {
      state.from = from;
      state.to = to;
      setScrubber();
      return Promise.all([loadRange(), loadMoment(Math.min(to, Math.max(from, state.at)))]);
    },
    latest: toLatest,
  };
}
