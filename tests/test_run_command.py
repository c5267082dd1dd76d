"""``reactor-dashboard run``: unmodified programs run with the dashboard attached.

Every program runs in a subprocess on loopback; ports are free ones (0, or bound and released
just before); every wait has a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from dashboard.attach import RunOptions, RunUsageError, main, parse_run_args, program_package
from dashboard.probes.loop import HANDLERS_BY_DEFAULT

BIN = Path(sys.executable).parent
DASHBOARD_LINE = re.compile(r"dashboard on http://127\.0\.0\.1:(\d+)/ \((\w+); running (.+)\)")
REACTOR_CLASSES = {"default": "EPollReactor", "asyncio": "AsyncioSelectorReactor"}


# helpers (also used by test_examples.py) ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class Child:
    """A subprocess whose stdout and stderr lines are collected by reader threads."""

    process: subprocess.Popen[str]
    lines: queue.Queue[tuple[str, str | None]] = attrs.field(factory=queue.Queue)
    out: dict[str, list[str]] = attrs.field(factory=lambda: {"stdout": [], "stderr": []})
    readers: list[threading.Thread] = attrs.field(factory=list)

    @classmethod
    def start(cls, argv: Sequence[str], **popen: Any) -> Child:
        process = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )
        child = cls(process)
        for name in ("stdout", "stderr"):
            reader = threading.Thread(target=child._read, args=(name,), daemon=True)
            reader.start()
            child.readers.append(reader)
        return child

    def _read(self, name: str) -> None:
        stream = getattr(self.process, name)
        for line in stream:
            self.out[name].append(line)
            self.lines.put((name, line))
        self.lines.put((name, None))

    def text(self, name: str) -> str:
        return "".join(self.out[name])

    def wait_for(
        self, pattern: re.Pattern[str], stream: str, timeout_s: float = 20
    ) -> re.Match[str]:
        """The first line of ``stream`` matching ``pattern``; fails at the deadline or EOF."""
        for line in self.out[stream]:
            if found := pattern.search(line):
                return found
        deadline = time.monotonic() + timeout_s
        closed: set[str] = set()
        while time.monotonic() < deadline and stream not in closed:
            try:
                name, text = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if text is None:
                closed.add(name)
            elif name == stream and (found := pattern.search(text)):
                return found
        pytest.fail(f"no line matching {pattern.pattern!r} on {stream}:\n{self.report()}")

    def stop(self, timeout_s: float = 15) -> int:
        """SIGTERM, then wait (kill at the deadline); the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.wait(timeout_s)

    def wait(self, timeout_s: float = 15) -> int:
        try:
            status = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            pytest.fail(f"the process did not exit within {timeout_s} s:\n{self.report()}")
        for reader in self.readers:  # the last lines are read before anyone looks at them
            reader.join(timeout=5)
        return status

    def report(self) -> str:
        return f"--- stdout\n{self.text('stdout')}\n--- stderr\n{self.text('stderr')}"


def http_get(url: str, timeout_s: float = 5) -> tuple[int, bytes]:
    """Status and body of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_serving(url: str, timeout_s: float = 20) -> tuple[int, bytes]:
    """Poll ``url`` until something answers (connection refused means not yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return http_get(url)
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within {timeout_s} s: {exc}")
            time.sleep(0.05)


def fresh_snapshot(base: str) -> dict[str, Any]:
    """A snapshot collected now from the dashboard at ``base`` (no trailing slash)."""
    status, body = http_get(f"{base}/api/v1/snapshot?fresh=1")
    assert status == 200, body[:300]
    data: dict[str, Any] = json.loads(body)
    return data


def listening_addresses(snap: dict[str, Any]) -> set[str]:
    return {row["address"] for row in snap["connections"]["listening"]}


def no_traceback(child: Child) -> None:
    for name in ("stdout", "stderr"):
        assert "Traceback" not in child.text(name), child.report()


@pytest.fixture
def reactor_name(request: pytest.FixtureRequest) -> str:
    """The reactor this pytest run uses (``--reactor=default|asyncio``): ``run`` gets it too."""
    name = str(request.config.getoption("reactor"))
    assert name in REACTOR_CLASSES, name
    return name


def run_command(reactor_name: str, *args: str) -> list[str]:
    """``reactor-dashboard run`` (the installed console script) on this run's reactor."""
    command = [str(BIN / "reactor-dashboard"), "run", "--port", "0"]
    if reactor_name != "default":
        command += ["--reactor", reactor_name]
    return [*command, *args]


# twist's web plugin, unmodified --------------------------------------------------------------


def test_run_module_twisted_web_shows_its_port_and_connection(
    tmp_path: Path, reactor_name: str
) -> None:
    content = b"served by twist web\n" * 50
    (tmp_path / "hello.txt").write_bytes(content)
    web_port = free_port()
    listen = f"tcp:{web_port}:interface=127.0.0.1"
    child = Child.start(
        run_command(
            reactor_name, "-m", "twisted", "web", "--path", str(tmp_path), "--listen", listen
        )
    )
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        dashboard = f"http://127.0.0.1:{found[1]}"
        assert found[2] == REACTOR_CLASSES[reactor_name]
        assert found[3] == "twisted"
        wait_until_serving(f"http://127.0.0.1:{web_port}/")

        client = http.client.HTTPConnection("127.0.0.1", web_port, timeout=5)
        try:
            client.request("GET", "/hello.txt")
            response = client.getresponse()
            assert response.status == 200
            assert response.read() == content
            client_port = client.sock.getsockname()[1]  # kept alive: HTTP/1.1
            snap = fresh_snapshot(dashboard)
        finally:
            client.close()

        assert snap["reactor"] == REACTOR_CLASSES[reactor_name]
        web = f"127.0.0.1:{web_port}"
        own = f"127.0.0.1:{found[1]}"
        # The program's port is the program's; the dashboard's is shown apart, as its own.
        assert web in listening_addresses(snap)
        assert own not in listening_addresses(snap)
        assert snap["connections"]["own"]["listening"] == [own]
        row = next(r for r in snap["connections"]["listening"] if r["address"] == web)
        assert row["factory"] == "twisted.web.server.Site"
        assert row["accepted_total"] >= 1
        served = [
            item
            for item in snap["connections"]["items"]
            if item["local"] == web and item["peer"] == f"127.0.0.1:{client_port}"
        ]
        assert len(served) == 1, snap["connections"]["items"]
        assert served[0]["kind"] == "tcp_server"
        assert served[0]["protocol"] == "twisted.web.http.HTTPChannel"
        assert served[0]["bytes_out"] > len(content)  # the file and its headers
        assert served[0]["bytes_in"] >= len(b"GET /hello.txt HTTP/1.1\r\n")
        assert snap["errors"]["total"] == 0, snap["errors"]
    finally:
        status = child.stop()
    no_traceback(child)
    # twist stops the reactor on SIGTERM, then ends itself with that signal.
    assert status == -15, child.report()


# a script of our own ---------------------------------------------------------------------------

SERVING_SCRIPT = """
    import json, sys
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    def patched():
        # True when every patch is in place, False when none is (the Deferred probe's;
        # run's own: Twisted's installReactor, and the watch for trial's janitor).
        from twisted.internet import main
        signs = [
            hasattr(Deferred._startRunCallbacks, "__wrapped__"),
            not main.installReactor.__code__.co_filename.endswith("main.py"),
            any(type(f).__name__ == "_ImportWatch" for f in sys.meta_path),
        ]
        return all(signs) if all(signs) or not any(signs) else signs

    def watchdog_threads():
        import threading
        return sum("dashboard" in t.name for t in threading.enumerate())

    print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0]}), flush=True)
    root = Resource()
    root.putChild(b"hello", Data(b"from the script", "text/plain"))
    quit = Resource()
    quit.render_GET = lambda request: reactor.callLater(0.05, reactor.stop) and b"bye"
    root.putChild(b"quit", quit)
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    print("serving", port.getHost().port, "patched", patched(), watchdog_threads(), flush=True)
    reactor.run()
    print("after run: patched", patched(), watchdog_threads(), flush=True)
    raise SystemExit(int(sys.argv[1]))
"""


def write_script(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def test_run_script_with_args_serves_shows_up_and_keeps_its_exit_status(
    tmp_path: Path, reactor_name: str
) -> None:
    script = write_script(tmp_path, "serve.py", SERVING_SCRIPT)
    child = Child.start(run_command(reactor_name, str(script), "3", "--port", "x y"))
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        dashboard = f"http://127.0.0.1:{found[1]}"
        serving = child.wait_for(re.compile(r"serving (\d+) patched True 1"), "stdout")
        info = json.loads(child.out["stdout"][0])
        assert info == {"argv": [str(script), "3", "--port", "x y"], "name": "__main__",
                        "path0": str(tmp_path.resolve())}  # fmt: skip
        base = f"http://127.0.0.1:{serving[1]}"
        assert http_get(f"{base}/hello") == (200, b"from the script")
        snap = fresh_snapshot(dashboard)
        assert snap["reactor"] == REACTOR_CLASSES[reactor_name]
        assert f"127.0.0.1:{serving[1]}" in listening_addresses(snap)
        assert http_get(f"{base}/quit") == (200, b"bye")
        status = child.wait()
    finally:
        child.stop()
    # The monitor stopped at reactor shutdown: patches undone, watchdog thread gone.
    assert "after run: patched False 0" in child.text("stdout"), child.report()
    assert status == 3, child.report()
    no_traceback(child)


def test_system_exit_and_exceptions_of_the_script_pass_through(tmp_path: Path) -> None:
    exits = write_script(tmp_path, "exits.py", "raise SystemExit(3)\n")
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "run", "--port", "0", str(exits)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr

    fails = write_script(tmp_path, "fails.py", "def f():\n    raise ValueError('boom')\nf()\n")
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "run", "--port", "0", str(fails)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    # The traceback starts at the program, as ``python fails.py`` prints it.
    trace = result.stderr.split("Traceback (most recent call last):\n", 1)[1]
    assert trace.startswith(f'  File "{fails}", line 3, in <module>'), result.stderr
    assert trace.rstrip().endswith("ValueError: boom")
    assert "runpy" not in trace and "attach.py" not in trace


def test_run_module_gets_python_dash_m_argv_and_path(tmp_path: Path) -> None:
    source = "import json, os, sys\nprint(json.dumps([sys.argv, __name__, sys.path[0]]))\n"
    module = write_script(tmp_path, "tool_of_mine.py", source)
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "run", "--port", "0", "-m", "tool_of_mine", "-x", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    argv, name, path0 = json.loads(result.stdout)
    assert argv == [str(module), "-x", "1"]
    assert name == "__main__"
    assert os.path.realpath(path0) == os.path.realpath(tmp_path)


# programs that choose their reactor (Scrapy installs the asyncio one) -----------------------

OWN_REACTOR_SCRIPT = (
    """
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    """
    + SERVING_SCRIPT
)
MOVED_LINE = re.compile(
    r"the program installed (\w+): the dashboard moved to it on http://127\.0\.0\.1:(\d+)/"
)


def test_a_program_that_installs_its_own_reactor_gets_it_and_the_dashboard_follows(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, "own_reactor.py", OWN_REACTOR_SCRIPT)
    child = Child.start([sys.executable, "-m", "dashboard", "run", "--port", "0", str(script), "4"])
    try:
        found = child.wait_for(DASHBOARD_LINE, "stderr")
        assert found[2] == "EPollReactor"  # installed first, before the program's first line
        moved = child.wait_for(MOVED_LINE, "stderr")
        assert moved[1] == "AsyncioSelectorReactor"
        assert moved[2] == found[1]  # the same dashboard address
        # Every patch in place but the hook on installReactor: its work is done.
        patched = r"serving (\d+) patched \[True, False, True\] 1"
        serving = child.wait_for(re.compile(patched), "stdout")
        snap = fresh_snapshot(f"http://127.0.0.1:{moved[2]}")
        assert snap["reactor"] == "AsyncioSelectorReactor"
        assert f"127.0.0.1:{serving[1]}" in listening_addresses(snap)
        assert snap["errors"]["total"] == 0, snap["errors"]
        assert http_get(f"http://127.0.0.1:{serving[1]}/quit") == (200, b"bye")
        status = child.wait()
    finally:
        child.stop()
    assert "after run: patched False 0" in child.text("stdout"), child.report()
    assert status == 4, child.report()
    no_traceback(child)


USES_THE_REACTOR_FIRST = """
    from twisted.internet import reactor
    reactor.callLater(60, print)
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
"""
# Scrapy's way: the error is swallowed, the program ends "successfully".
SWALLOWS_THE_ERROR = """
    from contextlib import suppress
    from twisted.internet import asyncioreactor, error
    with suppress(error.ReactorAlreadyInstalledError):
        asyncioreactor.install()
    print("carried on")
"""


@pytest.mark.parametrize(
    ("options", "source", "reason"),
    [
        (["--reactor", "select"], OWN_REACTOR_SCRIPT, "given with --reactor"),
        ([], USES_THE_REACTOR_FIRST, "the program has timers on it"),
        (["--reactor", "poll"], SWALLOWS_THE_ERROR, "given with --reactor"),
    ],
    ids=["reactor-given", "reactor-used", "error-swallowed"],
)
def test_a_program_whose_reactor_cannot_be_installed_is_told_what_to_pass(
    options: list[str], source: str, reason: str, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "own_reactor.py", source)
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "run", "--port", "0", *options, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The program's own status: 2 from run when the error ends it, else the program's.
    assert result.returncode == (0 if source is SWALLOWS_THE_ERROR else 2), result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # the dashboard's address, then the one line
    assert lines[1] == (
        "reactor-dashboard run: the program installs its own reactor"
        f" (AsyncioSelectorReactor), but {lines[0].split('(')[1].split(';')[0]} was installed"
        f" before it ran ({reason}): run it with --reactor asyncio"
    )
    assert result.stdout == ("carried on\n" if source is SWALLOWS_THE_ERROR else "")


#: A program whose reactor choice meets an error of the dashboard's: {patch} breaks one step.
BROKEN_STEP_SCRIPT = """
    import sys
    import dashboard.attachment, dashboard.reactor_choice

    def broken(*args, **kwargs):
        raise RuntimeError("forced")

    {patch} = broken
    from twisted.internet import asyncioreactor, error
    try:
        asyncioreactor.install()
    except error.ReactorAlreadyInstalledError:
        print("refused")
        sys.exit(3)
    from twisted.internet import reactor
    print("installed", type(reactor).__name__)
"""


@pytest.mark.parametrize(
    ("patch", "outcome", "line"),
    [
        (
            "dashboard.reactor_choice.ReactorChoice._why_not_follow",
            ("refused", 3),
            "reactor-dashboard run: the program installs its own reactor"
            " (AsyncioSelectorReactor), but {old} was installed before it ran (the dashboard"
            " could not tell whether the program used it: RuntimeError: forced):"
            " run it with --reactor asyncio",
        ),
        (
            "dashboard.attachment.uninstall_reactor",
            ("installed AsyncioSelectorReactor", 0),
            "reactor-dashboard run: the dashboard could not move to the program's reactor"
            " (AsyncioSelectorReactor): RuntimeError: forced; the program runs without it",
        ),
        (
            "dashboard.attachment.Attachment.start",
            ("installed AsyncioSelectorReactor", 0),
            "reactor-dashboard run: the dashboard could not move to the program's reactor"
            " (AsyncioSelectorReactor): RuntimeError: forced; the program runs without it",
        ),
    ],
    ids=["deciding", "leaving", "starting-again"],
)
def test_an_error_of_ours_in_the_reactor_choice_is_one_line_and_plain_pythons_outcome(
    patch: str, outcome: tuple[str, int], line: str, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "broken.py", BROKEN_STEP_SCRIPT.replace("{patch}", patch))
    result = subprocess.run(
        [sys.executable, "-m", "dashboard", "run", "--port", "0", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.stdout, result.returncode) == (f"{outcome[0]}\n", outcome[1]), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr  # the dashboard's address, then the one line
    old = lines[0].split("(")[1].split(";")[0]
    assert lines[1] == line.format(old=old)


# bad usage: one line, exit status 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing the program to run"),
        (["--port", "80000", "x.py"], "--port: port must be from 0 to 65535, got 80000"),
        (["--port", "http", "x.py"], "--port: not a port number: 'http'"),
        (["--port"], "--port needs a value"),
        (["--reactor"], "--reactor needs a value"),
        (["--verbose", "x.py"], "unknown option '--verbose'"),
        (["-m"], "-m needs a value"),
        (["does-not-exist.py"], "no such script: 'does-not-exist.py'"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("reactor-dashboard run: ")
    assert message in lines[0]


def test_options_stop_at_the_program() -> None:
    parsed = parse_run_args(["--port=0", "--reactor", "asyncio", "-m", "twisted", "web", "--port"])
    assert parsed == RunOptions(0, "asyncio", module="twisted", args=("web", "--port"))
    assert parse_run_args(["-mtwisted"]) == RunOptions(module="twisted")
    assert parse_run_args(["--", "-odd.py", "-m"]) == RunOptions(script="-odd.py", args=("-m",))
    assert parse_run_args(["app.py", "--reactor", "x"]) == RunOptions(
        script="app.py", args=("--reactor", "x")
    )
    assert parse_run_args(["--help", "x.py"]) is None
    with pytest.raises(RunUsageError, match="-m needs a module name"):
        parse_run_args(["-m", "--port"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "no_such_module_anywhere"], "no module named 'no_such_module_anywhere'"),
        (["-m", "twisted.web"], "'twisted.web' is a package without a __main__ module"),
        (["--reactor", "no-such-reactor", "{script}"], "no reactor called 'no-such-reactor'"),
    ],
)
def test_bad_target_or_reactor_in_a_real_process(
    args: list[str], message: str, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "fine.py", "print('never runs')\n")
    argv = [a.format(script=script) for a in args]
    result = subprocess.run(
        [str(BIN / "reactor-dashboard"), "run", "--port", "0", *argv],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


def test_dashboard_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    script = write_script(tmp_path, "fine.py", "print('never runs')\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "dashboard", "run", "--port", str(port), str(script)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert result.stdout == ""  # the program never ran
    assert result.stderr == (
        f"reactor-dashboard run: cannot serve the dashboard on 127.0.0.1:{port}:"
        " Address already in use (choose another with --port)\n"
    )


def test_the_package_run_with_m_is_the_users_code_for_blocks() -> None:
    """``run -m synapse.app.homeserver``: Synapse is installed in site-packages (library code
    by default), so no frame of its would name a block; the package run is claimed back."""
    assert program_package("synapse.app.homeserver") == "synapse"
    assert program_package("mytool") == "mytool"
    assert program_package("twisted.trial") is None  # Twisted's entry points stay library
    assert program_package("twisted") is None
    assert program_package(None) is None  # a script: its own directory is not a library
    from dashboard.probes.stack_owner import StackOwner

    site_packages = "/venv/lib/python3.11/site-packages/synapse/app/_base.py"
    code = compile("def start():\n    return sys._getframe(0)\n", site_packages, "exec")
    namespace: dict[str, Any] = {"sys": sys, "__name__": "synapse.app._base"}
    exec(code, namespace)
    frame = namespace["start"]()
    claimed = StackOwner(user_paths=[str(program_package("synapse.app.homeserver"))])
    assert claimed.judge(frame)[0] == "synapse/app/_base.py:2 in start"
    assert StackOwner().classify(frame)[1] is True  # library without the claim


LOOPING_SCRIPT = """
    import time
    from twisted.internet import reactor, task

    def grind():
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass

    task.LoopingCall(grind).start(0.05)
    print("looping", flush=True)
    reactor.run()
"""


def test_run_handlers_and_no_handlers(tmp_path: Path, reactor_name: str) -> None:
    assert parse_run_args(["--handlers", "app.py"]) == RunOptions(script="app.py", handlers=True)
    assert parse_run_args(["app.py", "--handlers"]) == RunOptions(  # the program's argument
        script="app.py", args=("--handlers",)
    )
    script = write_script(tmp_path, "grind.py", LOOPING_SCRIPT)
    assert parse_run_args(["--no-handlers", "app.py"]) == RunOptions(
        script="app.py", handlers=False
    )
    assert parse_run_args(["app.py"]) == RunOptions(script="app.py", handlers=None)
    for flags, asked in (((), None), (("--handlers",), True), (("--no-handlers",), False)):
        child = Child.start(run_command(reactor_name, *flags, str(script)))
        try:
            found = child.wait_for(DASHBOARD_LINE, "stderr")
            child.wait_for(re.compile("looping"), "stdout")
            dashboard = f"http://127.0.0.1:{found[1]}"
            deadline = time.monotonic() + 20
            loop = fresh_snapshot(dashboard)["loop"]
            # the default: on where the child (this Python) runs the compiled path and its
            # cost was measured within budget
            by_default = sys.version_info[:2] in HANDLERS_BY_DEFAULT
            on = asked if asked is not None else loop["hot_path"] == "compiled" and by_default
            while True:
                loop = fresh_snapshot(dashboard)["loop"]
                names = [row["handler"] for row in loop["handlers"] or ()]
                if not on or any("grind" in name for name in names):
                    break
                assert time.monotonic() < deadline, loop["handlers"]
                time.sleep(0.2)
        finally:
            child.stop()
        if on:
            row = next(row for row in loop["handlers"] if "grind" in row["handler"])
            assert row["handler"] == "__main__.grind (LoopingCall)"
            assert row["calls"] >= 1 and row["max_ms"] >= 9.0, row
        else:
            assert loop["handlers"] is None and loop["handlers_off_reason"]
        no_traceback(child)
