"""The HTML dashboard: the page shell through Jinja2 and its static files, served safely.

The ``templates/`` and ``static/`` folders sit at the top of a checkout and inside the
package (``dashboard/templates``, ``dashboard/static``) in a wheel; :func:`page_assets`
finds them in either place. Everything here runs on the reactor thread.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import jinja2
from twisted.web.server import Request

from dashboard.web.guard import CONTENT_SECURITY_POLICY

#: Chart windows offered by the page, in seconds (15 minutes is the default history).
WINDOWS_S = (60, 300, 900)
DEFAULT_WINDOW_S = 300

#: Thresholds of the health verdict, sent to the page with the first snapshot.
VERDICT_THRESHOLDS: Mapping[str, float] = {
    "recent_s": 60,  # a block within this many seconds makes the verdict "blocked"
    "lag_p99_ms": 50,  # loop lag p99 above this: degraded
    "pending_growth_min": 10,  # pending Deferreds grown by at least this much over recent_s
    "pending_growth_ratio": 0.1,  # ... and by at least this share of where they started
    "timeouts_min_per_s": 0.2,  # timeouts rising: the recent rate is at least this ...
    "timeouts_rise_ratio": 2,  # ... and this many times the rate of the period before
    "lost_recent_min": 2,  # a site lost at least this many Deferreds (unfired) in 60 s
}

#: Static files are small; anything larger is refused rather than read into memory.
MAX_STATIC_BYTES = 4 * 1024 * 1024

CONTENT_TYPES: Mapping[str, bytes] = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".txt": b"text/plain; charset=utf-8",
    ".json": b"application/json; charset=utf-8",
}

#: One path segment of a static file: no leading dot (no ``..``, no hidden files).
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")

#: Vendored files carry their version in their name, so they never change under one URL.
IMMUTABLE = b"public, max-age=31536000, immutable"
REVALIDATE = b"no-cache"

#: The page loads its own scripts and styles and talks to its own origin only (the guard in
#: front of the dashboard sets the same policy on every answer; it is defined there).
PAGE_POLICY = CONTENT_SECURITY_POLICY


@attrs.frozen
class StaticFile:
    """One static file as served: its bytes, type and cache validators."""

    body: bytes
    content_type: bytes
    etag: bytes
    cache_control: bytes
    mtime_ns: int


def find_asset_dir(name: str, package: Path | None = None) -> Path:
    """``<package>/<name>`` (a wheel's ``dashboard/templates``), else ``<checkout>/<name>``
    beside the package. ``package`` defaults to this ``dashboard`` package."""
    package = package or Path(__file__).resolve().parent.parent
    for candidate in (package / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the dashboard's {name}/ folder is missing (looked in {package})")


class PageAssets:
    """The Jinja2 environment (autoescape on) and the static files of one install."""

    def __init__(self, templates_dir: Path, static_dir: Path) -> None:
        self.templates_dir = templates_dir
        self.static_dir = static_dir.resolve()
        self.environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Bounded by the number of files under static/: only existing files are cached.
        self._static: dict[Path, StaticFile] = {}

    def prepare(self) -> None:
        """Compile every template and read every static file now, so that no request pays
        for it: the first page render compiled ``page.html`` and ``panels.html`` on the
        reactor thread (tens of ms, 165 ms on a busy machine), which the loop probe then
        reported as a block. Called when the resource is built; later calls find the
        templates in Jinja's cache and the files in ours (a stat each). Reactor thread."""
        for name in self.environment.list_templates(extensions=["html"]):
            self.environment.get_template(name)
        for path in sorted(self.static_dir.rglob("*")):
            if path.is_file():
                self.static_file(path.relative_to(self.static_dir).as_posix())

    def render_page(self, snapshot: Mapping[str, Any], config: Mapping[str, Any]) -> bytes:
        """The dashboard page with ``snapshot`` and ``config`` as its initial JSON data."""
        template = self.environment.get_template("page.html")
        return template.render(snapshot=snapshot, config=config).encode("utf-8")

    def static_file(self, name: str) -> StaticFile | None:
        """The file at ``name`` (a ``/``-separated path) under static/, or None when the
        name is malformed, leaves the folder, is hidden, not a regular file, of an unknown
        type or too large."""
        segments = name.split("/")
        if not name or len(segments) > 8 or not all(_SEGMENT.fullmatch(s) for s in segments):
            return None
        content_type = CONTENT_TYPES.get(Path(segments[-1]).suffix.lower())
        if content_type is None:
            return None
        try:
            path = self.static_dir.joinpath(*segments).resolve(strict=True)
            if not path.is_relative_to(self.static_dir) or not path.is_file():
                return None
            stat = path.stat()
        except OSError:
            return None
        if stat.st_size > MAX_STATIC_BYTES:
            return None
        cached = self._static.get(path)
        if cached is not None and cached.mtime_ns == stat.st_mtime_ns:
            return cached
        try:
            body = path.read_bytes()
        except OSError:
            return None
        digest = hashlib.sha256(body).hexdigest()[:20]
        entry = StaticFile(
            body=body,
            content_type=content_type,
            etag=b'"%s"' % digest.encode(),
            cache_control=IMMUTABLE if segments[0] == "vendor" else REVALIDATE,
            mtime_ns=stat.st_mtime_ns,
        )
        self._static[path] = entry
        return entry


@functools.cache
def page_assets() -> PageAssets:
    """The assets of this install, found once."""
    return PageAssets(find_asset_dir("templates"), find_asset_dir("static"))


def page_config(history_seconds: int, interval_s: float) -> dict[str, Any]:
    """What the page needs besides the snapshot: history span, windows and thresholds.

    Every window is offered whatever the history length: the page keeps the samples it
    receives, so a longer window fills while the page stays open."""
    return {
        "history_seconds": history_seconds,
        "interval_s": interval_s,
        "windows_s": list(WINDOWS_S),
        "default_window_s": DEFAULT_WINDOW_S,
        "verdict": dict(VERDICT_THRESHOLDS),
    }


def slash_redirect(request: Request) -> bytes | None:
    """Redirect ``.../prefix`` to ``.../prefix/`` (relative URLs in the page need the
    slash); None when the path already ends with one."""
    path = request.path
    if path.endswith(b"/"):
        return None
    last = path.rsplit(b"/", 1)[-1]
    query = request.uri.partition(b"?")[2]
    # "./" keeps a last segment such as "a:b" from reading as a URL scheme.
    location = b"./" + last + b"/" + (b"?" + query if query else b"")
    request.setResponseCode(301)
    request.setHeader(b"Location", location)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"moved to " + location + b"\n"


def serve_page(request: Request, snapshot: Mapping[str, Any], config: Mapping[str, Any]) -> bytes:
    """Answer with the page (never cached: it carries a live snapshot)."""
    body = page_assets().render_page(snapshot, config)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    return body


def serve_static(request: Request, entry: StaticFile) -> bytes:
    """Answer with a static file, or 304 when the client's copy is current."""
    request.setHeader(b"Content-Type", entry.content_type)
    request.setHeader(b"Cache-Control", entry.cache_control)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if request.setETag(entry.etag):  # sets ETag; 304 when If-None-Match has it
        return b""
    return entry.body
