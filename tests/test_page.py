"""The HTML page and its static files over real HTTP on loopback (default and asyncio
reactor): the page under a deep prefix, escaping of hostile data, every referenced file
served with its type and cache headers, traversal refused with a JSON 404, and a built
wheel that carries and serves it all."""

from __future__ import annotations

import html.parser
import json
import re
import socket
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import jinja2
import pytest
import pytest_twisted
from twisted.internet import threads

from dashboard.monitor import Monitor
from dashboard.testing import global_reactor
from dashboard.web import page
from dashboard.web.page import PageAssets, find_asset_dir
from tests.browser_server import site_for

PREFIX = "/a/deep/prefix"
ROOT = Path(__file__).resolve().parent.parent

#: A pool name that closes the JSON script element and opens another if not escaped.
HOSTILE = "</script><script>window.pwned=1</script><!--&'\"\u2028"


class HostilePool:
    max = 2
    in_use = 1
    idle = 1
    waiting = 0


@attrs.frozen
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of each
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(port: int, path: str, method: str = "GET", headers: str = "") -> Answer:
    """One HTTP/1.0 request with ``path`` sent byte for byte (no client normalises it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), fields, body)


async def fetch(port: int, path: str, method: str = "GET", headers: str = "") -> Answer:
    """``raw_request`` on a thread, so the reactor under test keeps serving."""
    answer: Answer = await threads.deferToThread(raw_request, port, path, method, headers)
    return answer


@pytest_twisted.async_yield_fixture
async def port() -> AsyncIterator[int]:
    """A monitored process serving the dashboard at PREFIX on a free loopback port."""
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.2, history=50)
    monitor.start()
    monitor.track_pool(HostilePool(), HOSTILE)
    listening: Any = reactor.listenTCP(0, site_for(monitor, PREFIX), interface="127.0.0.1")
    try:
        yield listening.getHost().port
    finally:
        await listening.stopListening()
        monitor.stop()


class References(html.parser.HTMLParser):
    """Every src/href in a page, and the text of each JSON script element by id."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.json: dict[str, str] = {}
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "script" and found.get("type") == "application/json":
            self._script = found.get("id") or ""
            self.json[self._script] = ""

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.json[self._script] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None


def parse_page(body: bytes) -> References:
    refs = References()
    refs.feed(body.decode("utf-8"))
    return refs


@pytest_twisted.ensureDeferred
async def test_page_is_html_with_relative_urls_and_initial_data(port: int) -> None:
    answer = await fetch(port, f"{PREFIX}/")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert answer.headers["cache-control"] == "no-store"
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    refs = parse_page(answer.body)
    # Relative URLs only: no scheme, no host, no absolute path (any mount prefix works).
    assert refs.urls, answer.body[:500]
    for url in refs.urls:
        assert not re.match(r"^([a-z]+:|/)", url), url
    assert "static/js/main.js" in refs.urls
    assert "api/v1/snapshot" in refs.urls
    snapshot = json.loads(refs.json["initial-snapshot"])
    assert snapshot["seq"] >= 1
    assert set(snapshot) >= {"loop", "deferreds", "connections", "pools", "timeouts"}
    config = json.loads(refs.json["page-config"])
    assert config["windows_s"] == [60, 300, 900]
    assert config["history_seconds"] == 10  # 50 samples of 0.2 s
    # The live stream is opened by main.js, on a relative URL too.
    main = (ROOT / "static/js/stream.js").read_text() + (ROOT / "static/js/main.js").read_text()
    assert "new EventSource(this.url)" in main and '"api/v1/events"' in main


@pytest_twisted.ensureDeferred
async def test_hostile_text_in_the_data_stays_text(port: int) -> None:
    answer = await fetch(port, f"{PREFIX}/")
    body = answer.body.decode("utf-8")
    assert "window.pwned" in body  # the name is in the page ...
    assert "<script>window.pwned" not in body  # ... but never as markup
    assert "</script><script>" not in body
    refs = parse_page(answer.body)
    names = [p["name"] for p in json.loads(refs.json["initial-snapshot"])["pools"]]
    assert HOSTILE in names


@pytest_twisted.ensureDeferred
async def test_prefix_without_slash_redirects_relatively(port: int) -> None:
    answer = await fetch(port, f"{PREFIX}?window=5")
    assert answer.status == 301
    assert answer.headers["location"] == "./prefix/?window=5"


def module_imports(source: str) -> list[str]:
    return re.findall(r'^import .*? from "(\./[\w./-]+)";$', source, re.MULTILINE)


@pytest_twisted.ensureDeferred
async def test_every_referenced_file_is_served_with_its_type(port: int) -> None:
    refs = parse_page((await fetch(port, f"{PREFIX}/")).body)
    expected_type = {
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
    }
    todo = [u for u in refs.urls if u.startswith("static/")]
    seen: set[str] = set()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        answer = await fetch(port, f"{PREFIX}/{url}")
        assert answer.status == 200, url
        assert answer.headers["content-type"] == expected_type[Path(url).suffix], url
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.body == (ROOT / url).read_bytes()
        if url.endswith(".js") and "/vendor/" not in url:
            base = url.rsplit("/", 1)[0]
            todo += [f"{base}/{name[2:]}" for name in module_imports(answer.body.decode())]
    modules = {u for u in seen if u.startswith("static/js/")}
    on_disk = {f"static/js/{p.name}" for p in (ROOT / "static/js").glob("*.js")}
    assert modules == on_disk  # every module is reached from main.js
    assert "static/vendor/uPlot-1.6.32.iife.min.js" in seen
    licence = await fetch(port, f"{PREFIX}/static/vendor/uPlot-1.6.32.LICENSE.txt")
    assert licence.status == 200 and b"MIT License" in licence.body


@pytest_twisted.ensureDeferred
async def test_cache_headers_and_revalidation(port: int) -> None:
    vendor = await fetch(port, f"{PREFIX}/static/vendor/uPlot-1.6.32.min.css")
    assert vendor.headers["cache-control"] == "public, max-age=31536000, immutable"
    own = await fetch(port, f"{PREFIX}/static/dashboard.css")
    assert own.headers["cache-control"] == "no-cache"
    etag = own.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{20}"', etag)
    again = await fetch(
        port, f"{PREFIX}/static/dashboard.css", headers=f"If-None-Match: {etag}\r\n"
    )
    assert again.status == 304 and again.body == b""
    stale = await fetch(port, f"{PREFIX}/static/dashboard.css", headers='If-None-Match: "x"\r\n')
    assert stale.status == 200 and stale.body == own.body
    head = await fetch(port, f"{PREFIX}/static/js/main.js", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"] == "text/javascript; charset=utf-8"


@pytest.mark.parametrize(
    "path",
    [
        "/static/../dashboard/monitor.py",
        "/static/../../pyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static/..%2f..%2fpyproject.toml",
        "/static/js/..%2f..%2fdashboard%2fweb%2fpage.py",
        "/static/vendor/../../templates/page.html",
        "/static/%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/.hidden.js",
        "/static/README.md",
        "/static/js/",
        "/static/",
        "/static/js/nothing.js",
        "/static/js/main.js%00.css",
        "/static/js/%C3%A9.js",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_static_paths_get_a_json_404(port: int, path: str) -> None:
    answer = await fetch(port, PREFIX + path)
    assert answer.status == 404, (path, answer)
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    error = answer.json()
    assert error["error"] == "not_found" and error["status"] == 404


@pytest_twisted.ensureDeferred
async def test_page_refuses_writes_as_json(port: int) -> None:
    answer = await fetch(port, f"{PREFIX}/", method="POST")
    assert answer.status == 405
    assert answer.json()["allowed"] == ["GET", "HEAD"]


@pytest_twisted.ensureDeferred
async def test_first_page_after_resource_compiles_no_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13: the first render compiled the templates on the reactor thread (165 ms on a
    busy machine, reported as the program's block). resource() prepares them instead."""
    page.page_assets.cache_clear()  # a fresh install: nothing compiled, nothing read
    compiled: list[str] = []
    original = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: Any, name: Any = None, *a: Any, **k: Any) -> Any:
        compiled.append(str(name))
        return original(self, source, name, *a, **k)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    reactor = global_reactor()
    monitor = Monitor(reactor, interval=0.2, history=50)
    monitor.start()
    listening: Any = await monitor.listen(0)
    try:
        assert sorted(compiled) == ["page.html", "panels.html"]  # while building the resource
        assets = page.page_assets()
        assert {name for _, name in assets.environment.cache or {}} >= {
            "page.html",
            "panels.html",
        }
        assert len(assets._static) >= 10  # every static file read once, up front
        compiled.clear()
        answer = await fetch(listening.getHost().port, "/")
        assert answer.status == 200 and b'id="initial-snapshot"' in answer.body
        assert compiled == []  # the first request compiled nothing
    finally:
        await listening.stopListening()
        monitor.stop()


def test_static_lookup_refuses_what_leaves_the_folder(tmp_path: Path) -> None:
    static = tmp_path / "static"
    (static / "js").mkdir(parents=True)
    (static / "js" / "ok.js").write_text("export {};")
    (tmp_path / "secret.js").write_text("secret")
    (static / "js" / "link.js").symlink_to(tmp_path / "secret.js")
    (static / "big.js").write_bytes(b" " * (4 * 1024 * 1024 + 1))
    assets = PageAssets(ROOT / "templates", static)
    found = assets.static_file("js/ok.js")
    assert found is not None and found.body == b"export {};"
    assert found.cache_control == b"no-cache"
    for name in ["js/link.js", "big.js", "../secret.js", "js", "", "js//ok.js", "js/ok.js/"]:
        assert assets.static_file(name) is None, name


def test_asset_folders_are_found_in_the_package_first(tmp_path: Path) -> None:
    # The checkout's top-level folders, when the package has none (this repository) ...
    assert find_asset_dir("templates") == ROOT / "templates"
    assert find_asset_dir("static") == ROOT / "static"
    # ... and a wheel's dashboard/templates when it has them.
    package = tmp_path / "dashboard"
    (package / "templates").mkdir(parents=True)
    assert find_asset_dir("templates", package) == package / "templates"
    with pytest.raises(FileNotFoundError):
        find_asset_dir("static", package)


WHEEL_CHECK = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import urllib.request
    from twisted.internet import reactor, threads
    import dashboard
    from dashboard.web.page import page_assets
    assert dashboard.__file__.startswith(sys.argv[1]), dashboard.__file__
    assert str(page_assets().templates_dir).startswith(sys.argv[1])
    monitor = dashboard.Monitor(reactor, interval=0.2)
    monitor.start()
    results = []

    def get(url):
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()

    def check(port):
        base = f"http://127.0.0.1:{port.getHost().port}/"
        d = threads.deferToThread(get, base)
        d.addCallback(results.append)
        d.addCallback(lambda _: threads.deferToThread(get, base + "static/js/main.js"))
        d.addCallback(results.append)
        d.addBoth(lambda r: (results.append(r), reactor.stop()))

    monitor.listen(0).addCallback(check)
    reactor.callLater(20, reactor.stop)
    reactor.run()
    monitor.stop()
    (page_status, page), (js_status, js) = results[0], results[1]
    assert page_status == 200 and b"static/js/main.js" in page, page[:300]
    assert js_status == 200 and b'"api/v1/events"' in js, js[:300]
    print("wheel ok")
    """
)


PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]


def test_built_wheel_carries_and_serves_the_page(tmp_path: Path) -> None:
    subprocess.run(
        [*PIP_WHEEL, "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp_path / "dist").glob("reactor_dashboard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for name in [
        "dashboard/templates/page.html",
        "dashboard/static/js/main.js",
        "dashboard/static/vendor/uPlot-1.6.32.iife.min.js",
        "dashboard/static/vendor/uPlot-1.6.32.LICENSE.txt",
    ]:
        assert name in names, name
    result = subprocess.run(
        [sys.executable, "-c", WHEEL_CHECK, str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and "wheel ok" in result.stdout, result.stdout + result.stderr
