"""Hostile strings and access control in a real browser (Debian's Chromium via Playwright).

A watched app (tests/hostile_server.py, a subprocess) receives requests whose URIs, query
strings and headers are markup; its pool name, a Deferred's creation site, a block's stack and
a timed-out protocol's class name are markup too. The dashboard shows all of them, and no
script runs: not with the page's Content-Security-Policy, and not without it either (the
escaping alone holds). With a token, the page signs in once through ``?token=`` and then
lives on its cookie (the EventSource included); without it, 401.

The server is another process, so these tests do not depend on the test reactor: they run in
both passes of the suite (about 10 s each).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page

from tests.browser_support import BrowserThread, ServerProcess, new_page, text, wait_for
from tests.hostile_server import CODE_FILE, LONG_FUNCTION, POOL_NAME, PROTOCOL_NAME

HOSTILE_SERVER = Path(__file__).resolve().parent / "hostile_server.py"
TOKEN = "browser-test-token-0123456789abcdef"

#: Request lines sent byte for byte to the watched app: each would set window.__xss (and
#: open a dialog) if the dashboard ever let it be markup.
HOSTILE_TARGETS = [
    "/<img/src=x/onerror=window.__xss='uri';alert(4)>",
    "/</script><script>window.__xss='script';alert(5)</script>",
    "/search?q=\"><svg/onload=window.__xss='query';alert(6)>",
    "/%3Cimg%20src=x%20onerror=alert(7)%3E?x=<b>bold</b>",
    "/javascript:window.__xss='scheme'",
]
HOSTILE_USER_AGENT = "<img src=x onerror=\"window.__xss='ua';alert(8)\">"

#: Elements a payload would create if it became markup.
INJECTED = ", ".join(
    [
        "#connections-table img",
        "#connections-table svg",
        "#connections-table script",
        "main img",
        "main script",
        "main b",
    ]
)

DETECT = (
    "() => ({"
    " xss: window.__xss === undefined ? null : String(window.__xss),"
    " control: window.__control === undefined ? null : window.__control,"
    f" injected: document.querySelectorAll({json.dumps(INJECTED)}).length,"
    " })"
)


class HostileServer(ServerProcess):
    """tests/hostile_server.py: ``port`` serves the dashboard, ``app_port`` the watched app."""

    def __init__(self, token: str | None = None) -> None:
        self.prefix = ""
        command = [sys.executable, str(HOSTILE_SERVER)]
        if token is not None:
            command += ["--token", token]
        self.port, self.app_port = (int(word) for word in self._start(command))


def hold_hostile_requests(port: int) -> list[socket.socket]:
    """Send every hostile request to the watched app and keep the connections open (the app
    never answers, so they stay in flight)."""
    held = []
    for target in HOSTILE_TARGETS:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"User-Agent: {HOSTILE_USER_AGENT}\r\nX-Evil: <script>alert(9)</script>\r\n\r\n"
        )
        sock.sendall(head.encode())
        held.append(sock)
    return held


def open_live(page: Page, url: str) -> Any:
    response = page.goto(url)
    wait_for(page, "() => window.__dashboardStats && window.__dashboardStats.renders >= 1")
    return response


def watch_dialogs(page: Page) -> list[str]:
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return dialogs


def test_hostile_strings_are_shown_as_text_and_never_run(browser: BrowserThread) -> None:
    server = HostileServer()
    held = hold_hostile_requests(server.app_port)

    def scenario(browser: Browser) -> dict[str, Any]:
        found: dict[str, Any] = {}
        # With the page's own policy, then with the policy switched off: escaping alone holds.
        for bypass in (False, True):
            page, watch = new_page(browser, bypass_csp=bypass)
            dialogs = watch_dialogs(page)
            open_live(page, server.url)
            # Every hostile URI is in flight on the watched app: wait until all are listed.
            wait_for(
                page,
                "(targets) => targets.every((t) => document.getElementById("
                "'connections-table').textContent.includes('GET ' + t))",
                HOSTILE_TARGETS,
            )
            wait_for(
                page,
                "(names) => names.every((n) => document.querySelector('main').textContent"
                ".includes(n))",
                [POOL_NAME, CODE_FILE, PROTOCOL_NAME],
            )
            # The block comes 0.5 s after the server runs: wait for it too, not only for renders.
            wait_for(
                page,
                "(code) => document.getElementById('blocks-list').textContent.includes(code)",
                CODE_FILE,
            )
            wait_for(page, "(n) => window.__dashboardStats.renders >= n + 3", 1)
            # Long unbroken text wraps inside its cell: these tables never scroll sideways.
            found[f"overflow_bypass={bypass}"] = page.evaluate(
                "(ids) => ids.map((id) => { const w = document.getElementById(id)"
                ".closest('.table-wrap'); return [id, w.scrollWidth - w.clientWidth]; })",
                ["sites-table", "oldest-table"],
            )
            found[f"tables_bypass={bypass}"] = {
                "connections": text(page, "#connections-table"),
                "pools": text(page, "#pools-table"),
                "sites": text(page, "#sites-table"),
                "blocks": text(page, "#blocks-list"),
                "timeouts": text(page, "#timeouts-table"),
            }
            found[f"detect_bypass={bypass}"] = page.evaluate(DETECT)
            wait_for(page, "() => window.__dashboardSession !== undefined")
            found[f"sign_out_bypass={bypass}"] = page.evaluate(
                "() => [document.getElementById('sign-out').hidden, window.__dashboardSession]"
            )
            found[f"dialogs_bypass={bypass}"] = list(dialogs)
            found[f"errors_bypass={bypass}"] = [e for e in watch.errors if "favicon" not in e]
            if bypass:
                # The detector works: markup that does become markup runs, and is seen.
                page.evaluate(
                    "() => document.body.insertAdjacentHTML('beforeend',"
                    " '<img src=x onerror=\"window.__control=1\">')"
                )
                wait_for(page, "() => window.__control === 1")
                found["control"] = page.evaluate(DETECT)
            page.context.close()
        return found

    try:
        found = browser.run(scenario, timeout_s=90)
    finally:
        for sock in held:
            sock.close()
        server.stop()
    for bypass in (False, True):
        tables = found[f"tables_bypass={bypass}"]
        for target in HOSTILE_TARGETS:
            assert f"GET {target}" in tables["connections"], target
        assert POOL_NAME in tables["pools"]
        assert CODE_FILE in tables["sites"] and LONG_FUNCTION in tables["sites"]
        assert found[f"overflow_bypass={bypass}"] == [["sites-table", 0], ["oldest-table", 0]]
        assert CODE_FILE in tables["blocks"]
        assert PROTOCOL_NAME in tables["timeouts"]
        assert found[f"detect_bypass={bypass}"] == {"xss": None, "control": None, "injected": 0}
        assert found[f"dialogs_bypass={bypass}"] == []
        # No token, nothing to sign out of: the control stays hidden.
        assert found[f"sign_out_bypass={bypass}"] == [True, {"by": None}]
        assert found[f"errors_bypass={bypass}"] == []
    assert found["control"]["control"] == 1 and found["control"]["injected"] >= 0


def test_with_a_token_the_page_signs_in_once_and_lives_on_its_cookie(
    browser: BrowserThread,
) -> None:
    server = HostileServer(token=TOKEN)

    def scenario(browser: Browser) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first, _ = new_page(browser)
        refused = first.goto(server.url)
        assert refused is not None
        out["without"] = (refused.status, refused.headers.get("www-authenticate"))
        out["without_body"] = json.loads(refused.body())
        first.context.close()
        page, watch = new_page(browser)
        # Sign in once: the token leaves the address bar, the cookie stays.
        signed = open_live(page, server.url + "?token=" + TOKEN)
        out["signed_status"] = signed.status if signed is not None else None
        out["url"] = page.url
        wait_for(page, "() => window.__dashboardStats.status === 'live'")
        start = page.evaluate("() => window.__dashboardStats.applied")
        wait_for(page, "(n) => window.__dashboardStats.applied >= n + 3", start)
        out["stats"] = page.evaluate(
            "() => ({ applied: window.__dashboardStats.applied,"
            " historyError: window.__dashboardStats.historyError,"
            " historySamples: window.__dashboardStats.historySamples })"
        )
        out["document_cookie"] = page.evaluate("() => document.cookie")
        out["cookies"] = page.context.cookies()
        # Signed in by cookie: the page offers to sign out (static/js/session.js).
        wait_for(page, "() => !document.getElementById('sign-out').hidden")
        out["session"] = page.evaluate("() => window.__dashboardSession")
        out["errors"] = list(watch.errors)
        out["requests"] = list(watch.requests)
        with page.expect_navigation() as navigation:
            page.click("#sign-out")
        after = navigation.value
        out["after_sign_out"] = (after.status, after.json()["error"]) if after else None
        out["cookies_after"] = page.context.cookies()
        page.context.close()
        # Another browser (no cookie) gets nothing from the stream or the API.
        other, _ = new_page(browser)
        events = other.request.get(server.url + "api/v1/events")
        out["other_events"] = events.status
        snapshot = other.request.get(server.url + "api/v1/snapshot")
        out["other_snapshot"] = (snapshot.status, snapshot.json()["error"])
        # The signed-out cookie, replayed (as any local service that read it could): refused.
        (old,) = out["cookies"]
        replay = other.request.get(
            server.url + "api/v1/snapshot", headers={"Cookie": f"{old['name']}={old['value']}"}
        )
        out["replayed"] = (replay.status, replay.json()["error"])
        other.context.close()
        return out

    try:
        out = browser.run(scenario, timeout_s=90)
    finally:
        server.stop()
    assert out["without"] == (401, 'Bearer realm="reactor-dashboard"')
    assert out["without_body"]["error"] == "unauthorized"
    assert out["signed_status"] == 200
    assert out["url"] == server.url  # the token is gone from the address bar
    assert out["stats"]["applied"] >= 3 and out["stats"]["historyError"] is None
    assert out["stats"]["historySamples"] >= 1
    assert out["document_cookie"] == ""  # HttpOnly: scripts never see it
    (cookie,) = out["cookies"]
    assert cookie["name"].startswith("rd_session_") and TOKEN not in cookie["value"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert out["errors"] == []
    # The stream ran on the cookie: the page asked for it without any token in the URL.
    assert any(u.endswith("/api/v1/events") for u in out["requests"])
    assert [u for u in out["requests"] if TOKEN in u] == [server.url + "?token=" + TOKEN]
    assert out["other_events"] == 401
    assert out["other_snapshot"] == (401, "unauthorized")
    # A session with a lifetime, and a sign-out that ends it.
    assert cookie["expires"] > 0  # Max-Age: not a browser-session cookie that lives forever
    assert out["session"] == {"by": "cookie"}
    assert any(u == server.url + "session" for u in out["requests"])
    assert out["after_sign_out"] == (401, "unauthorized")
    assert out["cookies_after"] == []
    assert out["replayed"] == (401, "unauthorized")
