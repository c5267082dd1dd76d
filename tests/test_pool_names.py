"""pool_names: the names a user recognises for pools, and what they must never show."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from dashboard.probes import pool_names
from dashboard.probes.pool_names import adbapi_name, creation_site, database_of, host_label


def test_creation_site_skips_library_frames_and_says_via_whom(tmp_path: Path) -> None:
    # A "treq" package of our own: a function in it makes the pool for its caller.
    library = tmp_path / "treq"
    library.mkdir()
    source = "import sys\ndef make(then):\n    return then(sys._getframe(0))\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, str(library / "api.py"), "exec"), namespace)
    dirs = (os.path.join(str(library), ""),)
    made, line = namespace["make"](lambda f: creation_site(f, dirs)), sys._getframe().f_lineno
    name = "test_creation_site_skips_library_frames_and_says_via_whom"
    assert made == (f"{__file__}:{line} in {name}", "treq")
    # Outside any library: the frame itself, with its qualified name.
    outside, line = creation_site(sys._getframe(), ()), sys._getframe().f_lineno
    assert outside == (f"{__file__}:{line} in {name}", None)
    # The whole stack library code: the innermost frame.
    inner = namespace["make"](lambda f: creation_site(f, ("/",)))
    assert inner == (f"{library / 'api.py'}:3 in make", None)
    assert creation_site(None) == (None, None)


def test_an_installed_library_is_named_from_its_package() -> None:
    # What Scrapy's download handler shows: the path from the package, the qualified name,
    # and (a class's __init__) who made the object: here, this test. The site is read while
    # __init__ runs, as the pool hook reads it.
    filename = "/v/lib/python3.11/site-packages/scrapy/core/downloader/handlers/http11.py"
    source = "import sys\nclass HTTP11DownloadHandler:\n    def __init__(self):\n"
    source += "        self.site = creation_site(sys._getframe(0), ())\n"
    namespace: dict[str, Any] = {"creation_site": creation_site}
    exec(compile(source, filename, "exec"), namespace)
    line = sys._getframe().f_lineno + 1
    site = namespace["HTTP11DownloadHandler"]().site
    maker = test_an_installed_library_is_named_from_its_package.__code__
    assert site == (
        "scrapy/core/downloader/handlers/http11.py:4 in HTTP11DownloadHandler.__init__"
        f" (from {maker.co_filename}:{line} in {maker.co_name})",
        None,
    )


def make_client_pool() -> str | None:
    """A client class that makes its own pool, as Synapse's ``SimpleHttpClient`` does."""

    class Client:
        def __init__(self) -> None:
            self.site = creation_site(sys._getframe(0), ())[0]

    return Client().site


def test_pools_made_by_one_client_class_are_told_apart_by_who_made_the_client() -> None:
    first = make_client_pool()
    line = make_client_pool.__code__.co_firstlineno
    inner = f"{__file__}:{line + 5} in make_client_pool.<locals>.Client.__init__"
    assert first == f"{inner} (from {__file__}:{line + 7} in make_client_pool)"
    assert make_client_pool() == first  # the same maker: the registry numbers them #2


@pytest.mark.parametrize(
    ("connargs", "connkw", "expected"),
    [
        (("/var/lib/app.db",), {"check_same_thread": False}, ("/var/lib/app.db", None)),
        ((), {"database": "/tmp/x.db"}, ("/tmp/x.db", None)),
        ((b"/tmp/bytes.db",), {}, ("/tmp/bytes.db", None)),
        ((Path("/tmp/p.db"),), {}, ("/tmp/p.db", None)),
        (("dbname=app host=db.internal user=u password=hunter2",), {}, ("app", "db.internal")),
        (("host='db' dbname='app' password='hunter2'",), {}, ("app", "db")),
        (("postgresql://u:hunter2@db.internal:5433/app",), {}, ("app", "db.internal:5433")),
        ((), {"dsn": "dbname=app password=hunter2 host=h"}, ("app", "h")),
        ((), {"db": "shop", "host": "mysql", "passwd": "hunter2"}, ("shop", "mysql")),
        ((), {"dbname": "app", "password": "hunter2"}, ("app", None)),
        ((), {"password": "hunter2"}, (None, None)),
        ((), {}, (None, None)),
        (None, None, (None, None)),
        ((object(),), {"database": 42}, (None, None)),
    ],
)
def test_database_of_reads_database_and_host_only(
    connargs: object, connkw: object, expected: tuple[str | None, str | None]
) -> None:
    got = database_of(connargs, connkw)
    assert got == expected
    assert "hunter2" not in repr(got)


def test_adbapi_name() -> None:
    assert adbapi_name("sqlite3", "/tmp/app.db", None) == "sqlite3 /tmp/app.db"
    assert adbapi_name("psycopg2", "app", "db") == "psycopg2 app@db"
    assert adbapi_name("psycopg2", None, "db") == "psycopg2 @db"
    assert adbapi_name("MySQLdb", None, None) == "MySQLdb"


class Endpoint:
    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ((b"http", b"example.test", 80), "http://example.test:80"),
        (("https", "example.test", 443), "https://example.test:443"),
        ((b"http", b"::1", 8080), "http://::1:8080"),
        # Scrapy: destination, then the proxy's host, port and Proxy-Authorization header.
        (
            (b"https", b"example.test", 443, "proxy.test", 3128, b"Basic dXNlcjpodW50ZXIy"),
            "https://example.test:443 via proxy proxy.test:3128",
        ),
        # Scrapy with a bind address
        ((b"http", b"example.test", 80, ("0.0.0.0", 0)), "http://example.test:80"),
        # Twisted's ProxyAgent
        (("http-proxy", Endpoint("proxy.test", 3128)), "http-proxy proxy.test:3128"),
        (("http-proxy", object()), "http-proxy (object)"),
        ((b"http", b"user:hunter2@host", 80), "<tuple key>"),
        ("secret-string-key", "<str key>"),
    ],
)
def test_host_label_shows_destination_never_credentials(key: object, label: str) -> None:
    assert host_label(key) == label
    assert "hunter2" not in host_label(key) and "dXNlcjpodW50ZXIy" not in host_label(key)


def test_library_dirs_cover_twisted_treq_klein() -> None:
    import klein
    import treq
    import twisted

    for module in (twisted, treq, klein):
        assert module.__file__ is not None
        assert module.__file__.startswith(pool_names.LIBRARY_DIRS)
    assert not __file__.startswith(pool_names.LIBRARY_DIRS)


def site_of_caller() -> str | None:
    """The creation site a pool made by this function's caller would get."""
    return creation_site(sys._getframe(1))[0]


def test_remembered_sites_are_bounded_and_never_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_names, "MAX_FILES_REMEMBERED", 3)
    monkeypatch.setattr(pool_names, "_LABEL_AT", {})
    name = "test_remembered_sites_are_bounded_and_never_stale"
    this_code = sys._getframe().f_code
    seen = []
    for _ in range(2):
        seen.append(site_of_caller())
        line = sys._getframe().f_lineno - 1
        # What a call site of another code object at this one's id would have left behind.
        for key, (code, _label) in list(pool_names._LABEL_AT.items()):
            if code is this_code:
                pool_names._LABEL_AT[key] = (site_of_caller.__code__, "stale")
    assert seen == [f"{__file__}:{line} in {name}"] * 2
    first = sys._getframe().f_lineno + 1
    many = [
        site_of_caller(),
        site_of_caller(),
        site_of_caller(),
        site_of_caller(),
    ]
    assert many == [f"{__file__}:{first + i} in {name}" for i in range(1, 5)]
    assert 0 < len(pool_names._LABEL_AT) <= 3
    # What a file is, is remembered for the default library directories only.
    mine = (os.path.join(os.path.dirname(__file__), ""),)
    for _ in range(2):
        site, line = creation_site(sys._getframe()), sys._getframe().f_lineno
        assert site == (f"{__file__}:{line} in {name}", None)
        elsewhere = creation_site(sys._getframe(), mine)[0]  # this file is library code there
        assert elsewhere is not None and not elsewhere.startswith(__file__)
