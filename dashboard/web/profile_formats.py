"""A finished profile in the formats other tools open: JSON (the API's own), collapsed stacks
for flamegraph.pl and speedscope's file format. Pure functions of a
:class:`~dashboard.probes.profiler.Profile`; any thread may call them.

In both downloads the idle samples are one stack of one frame, :data:`IDLE_FRAME`, so the
tools' percentages are shares of the wall time sampled, as the page's are.
"""

from __future__ import annotations

import json
from typing import Any

from dashboard.probes.profiler import Profile

#: The one frame of the idle samples in the downloads.
IDLE_FRAME = "[idle: waiting in the poller]"
SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def _stacks_with_idle(profile: Profile) -> list[tuple[tuple[str, ...], int]]:
    stacks = list(profile.stacks)
    if profile.idle_samples:
        stacks.append(((IDLE_FRAME,), profile.idle_samples))
    return stacks


def _collapsed_frame(name: str) -> str:
    # ";" separates frames; a line ends at a newline; the count follows the last space.
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ")


def as_json(profile: Profile) -> bytes:
    return json.dumps(profile.as_json(), separators=(",", ":")).encode()


def as_collapsed(profile: Profile) -> bytes:
    """One line per stack, ``outer;...;inner COUNT`` (Brendan Gregg's folded format)."""
    lines = [
        ";".join(_collapsed_frame(name) for name in frames) + f" {count}\n"
        for frames, count in _stacks_with_idle(profile)
    ]
    return "".join(lines).encode()


def as_speedscope(profile: Profile, *, name: str = "reactor thread") -> bytes:
    """A speedscope file (``$schema`` file-format-schema.json) with one "sampled" profile:
    each merged stack is one sample (frame indexes, outermost first) weighted by its
    samples' time in seconds (count / the rate asked for)."""
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[float] = []
    period_s = 1.0 / profile.hz_requested
    for stack, count in _stacks_with_idle(profile):
        indexes = []
        for frame in stack:
            at = index.get(frame)
            if at is None:
                at = index[frame] = len(frames)
                frames.append(_speedscope_frame(frame))
            indexes.append(at)
        samples.append(indexes)
        weights.append(round(count * period_s, 6))
    document = {
        "$schema": SPEEDSCOPE_SCHEMA,
        "version": "0.0.1",
        "exporter": "reactor-dashboard",
        "name": name,
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": name,
                "unit": "seconds",
                "startValue": 0,
                "endValue": round(sum(weights), 6),
                "samples": samples,
                "weights": weights,
            }
        ],
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _speedscope_frame(frame: str) -> dict[str, Any]:
    """``qualname (path.py:LINE)`` as speedscope's ``{name, file, line}``."""
    head, sep, tail = frame.rpartition(" (")
    if sep and tail.endswith(")"):
        file, colon, line = tail[:-1].rpartition(":")
        if colon and line.isdigit():
            return {"name": head, "file": file, "line": int(line)}
    return {"name": frame}
