// The "Profile" panel: asks api/v1/profile for N seconds of the reactor thread's stacks,
// draws them as a flame graph (flame.js), shows the idle share beside it, and offers the
// same profile as collapsed stacks (flamegraph.pl) and a speedscope file, built here from
// the answer shown (dashboard/web/profile_formats.py writes the same for the API's
// ?format=collapsed and ?format=speedscope).

import { drawFlame } from "./flame.js";
import { setText } from "./dom.js";

/** The one frame of the idle samples in the downloads (as profile_formats.IDLE_FRAME). */
const IDLE_FRAME = "[idle: waiting in the poller]";
const SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json";

function stacksWithIdle(profile) {
  const stacks = (profile.stacks || []).map((s) => ({ frames: s.frames, count: s.count }));
  if (profile.idle_samples > 0) stacks.push({ frames: [IDLE_FRAME], count: profile.idle_samples });
  return stacks;
}

/** Brendan Gregg's folded format: `outer;...;inner COUNT` per line. */
export function collapsedText(profile) {
  const clean = (name) => String(name).replace(/;/g, ":").replace(/[\r\n]/g, " ");
  return stacksWithIdle(profile)
    .map((s) => `${s.frames.map(clean).join(";")} ${s.count}\n`)
    .join("");
}

/** A speedscope file with one "sampled" profile (weights in seconds). */
export function speedscopeDocument(profile) {
  const frames = [];
  const index = new Map();
  const samples = [];
  const weights = [];
  const periodS = 1 / (Number(profile.hz_requested) || 100);
  for (const stack of stacksWithIdle(profile)) {
    samples.push(
      stack.frames.map((name) => {
        const key = String(name);
        if (!index.has(key)) {
          index.set(key, frames.length);
          const match = /^(.*) \((.*):(\d+)\)$/.exec(key);
          frames.push(match ? { name: match[1], file: match[2], line: Number(match[3]) } : { name: key });
        }
        return index.get(key);
      }),
    );
    weights.push(Math.round(stack.count * periodS * 1e6) / 1e6);
  }
  const end = Math.round(weights.reduce((a, b) => a + b, 0) * 1e6) / 1e6;
  return {
    $schema: SPEEDSCOPE_SCHEMA,
    version: "0.0.1",
    exporter: "reactor-dashboard",
    name: "reactor thread",
    activeProfileIndex: 0,
    shared: { frames },
    profiles: [
      { type: "sampled", name: "reactor thread", unit: "seconds", startValue: 0, endValue: end, samples, weights },
    ],
  };
}

const urls = [];

function offer(id, text, type, name) {
  const link = document.getElementById(id);
  const url = URL.createObjectURL(new Blob([text], { type }));
  urls.push(url);
  link.href = url;
  link.download = name;
  link.hidden = false;
}

function stamp() {
  return new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

/** What the panel did, for the browser tests (read-only use). */
export const profileStats = { asked: 0, drawn: 0, boxes: 0, error: null, idleShare: null };

function show(profile) {
  const samples = Number(profile.samples) || 0;
  const idle = samples ? profile.idle_samples / samples : null;
  profileStats.idleShare = idle;
  setText(
    "profile-idle",
    idle === null
      ? "no samples"
      : `idle ${(idle * 100).toFixed(1)}% · busy ${((1 - idle) * 100).toFixed(1)}% of ${samples} samples`,
  );
  const flame = document.getElementById("profile-flame");
  const drawn = drawFlame(flame, profile, (text) => setText("profile-hover", text));
  profileStats.boxes = drawn.boxes;
  const cut = profile.truncated || {};
  const notes = [];
  if (drawn.hidden) notes.push(`${drawn.hidden} boxes too narrow to draw`);
  if (cut.deep_samples) notes.push(`${cut.deep_samples} samples deeper than ${cut.max_depth} frames`);
  if (cut.other_samples) notes.push(`${cut.other_samples} samples beyond ${cut.max_stacks} stacks`);
  setText("profile-cut", notes.join("; "));
  for (const url of urls.splice(0)) URL.revokeObjectURL(url);
  const name = `reactor-profile-${stamp()}`;
  offer("profile-collapsed", collapsedText(profile), "text/plain", `${name}.collapsed.txt`);
  offer(
    "profile-speedscope",
    JSON.stringify(speedscopeDocument(profile)),
    "application/json",
    `${name}.speedscope.json`,
  );
  profileStats.drawn += 1;
}

/** Wire the panel's button; `live` false (a replayed recording) hides the panel. */
export function setUpProfile(live) {
  const panel = document.getElementById("panel-profile");
  if (!panel) return;
  if (!live) {
    panel.hidden = true;
    return;
  }
  const button = document.getElementById("profile-start");
  const input = document.getElementById("profile-seconds");
  button.addEventListener("click", async () => {
    const seconds = Math.round(Number(input.value));
    if (!(seconds >= 1 && seconds <= 30)) {
      setText("profile-status", "seconds: 1 to 30");
      return;
    }
    button.disabled = true;
    profileStats.asked += 1;
    profileStats.error = null;
    setText("profile-status", `sampling for ${seconds} s…`);
    try {
      const response = await fetch(`api/v1/profile?seconds=${seconds}`, { cache: "no-store" });
      const body = await response.json();
      if (!response.ok) throw new Error(body.message || `answered ${response.status}`);
      show(body);
      setText("profile-status", `${body.samples} samples in ${body.duration_s} s`);
    } catch (error) {
      profileStats.error = String(error);
      setText("profile-status", String(error.message || error));
    } finally {
      button.disabled = false;
    }
  });
}
