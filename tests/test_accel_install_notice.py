"""The one-line fallback notice reaches a user who runs a plain ``pip install`` (no ``-v``),
which hides a build backend's own output (issue 14).

A real pip builds a real wheel of this project with a compiler that does not exist, once on a
pseudo-terminal (as a user's shell) and once with no terminal at all (as CI): the line is on
the terminal, and pip's own output does not carry it."""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTICE = (
    "reactor-dashboard: the optional C accelerator dashboard._accel could not be compiled "
    "(pip install -v shows why); the probes run pure Python (same figures, slower hot paths)"
)
TIMEOUT_S = 300.0


def pip_wheel(out: Path) -> list[str]:
    """pip's plain (``-q``, no ``-v``) wheel build of this tree with no usable compiler."""
    return [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-cache-dir",
        "-w",
        str(out),
        str(ROOT),
    ]


def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PIP_VERBOSE", "LDSHARED"}}
    env["CC"] = str(tmp_path / "no-such-compiler")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _take_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_a_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``command`` in its own session whose controlling terminal is a new pseudo-terminal;
    everything written to that terminal, and the exit status."""
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=_take_terminal,  # the child runs no threads before exec
        )
    finally:
        os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not chunk:
                break
            seen += chunk
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), seen.decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)


def test_a_plain_pip_install_on_a_terminal_shows_the_one_line(tmp_path: Path) -> None:
    status, seen = run_on_a_terminal(pip_wheel(tmp_path / "wheels"), environment(tmp_path))
    assert status == 0, seen  # the build never fails because of the accelerator
    assert [line for line in seen.replace("\r\n", "\n").splitlines() if line] == [NOTICE]
    [wheel] = (tmp_path / "wheels").iterdir()
    assert wheel.name.endswith("-py3-none-any.whl")  # pure, as the line says


def test_without_a_terminal_pip_shows_nothing_of_it(tmp_path: Path) -> None:
    """Why the line is written to the terminal: pip's own output, without ``-v``, drops it."""
    done = subprocess.run(
        pip_wheel(tmp_path / "wheels"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environment(tmp_path),
        timeout=TIMEOUT_S,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
    )
    assert done.returncode == 0, done.stderr
    assert "accelerator" not in done.stdout + done.stderr
    [wheel] = (tmp_path / "wheels").iterdir()
    assert wheel.name.endswith("-py3-none-any.whl")
