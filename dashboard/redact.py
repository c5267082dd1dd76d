"""Credentials out of every output: secret query parameters and passwords in URLs.

A pure module (the standard library only): probes, faces and tools may all import it, from
any thread. Nothing is lost but the secret: a parameter keeps its name and its separators,
its value becomes ``<redacted>``; ``user:password@`` becomes ``user:<redacted>@``::

    >>> redact_uri("/sync?access_token=SECRET&x=1;sig=abc")
    '/sync?access_token=<redacted>&x=1;sig=<redacted>'
    >>> redact_uri("http://alice:pw@host/")
    'http://alice:<redacted>@host/'

A parameter is secret when its name, or the tail of its name at a word boundary, is one of
the secret names: ``api_key``, ``x_api_key``, ``X-Api-Key``, ``apiKey``, ``client[secret]``
and ``access%5Ftoken`` all are (names are percent-decoded, split into words at
punctuation and at camelCase, compared without case or punctuation; a trailing index such
as ``password[0]`` or ``token2`` is ignored). The rule leans towards hiding: ``zip_code``
is hidden too (``code``), which costs a value and never a secret.

Cost: nothing on any hot path; called when a snapshot is built, for what is shown (a few
microseconds per URI with a query, a membership test for one without).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

__all__ = [
    "DEFAULT_SECRET_PARAMS",
    "REDACTED",
    "Redactor",
    "default_redactor",
    "is_secret_param",
    "param_names",
    "redact_netloc",
    "redact_text",
    "redact_uri",
]

#: What a secret value is replaced with.
REDACTED = "<redacted>"

#: Parameter names whose values are hidden (also as the tail of a longer name).
DEFAULT_SECRET_PARAMS: tuple[str, ...] = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "secret",
    "client_secret",
    "key",
    "api_key",
    "apikey",
    "private_key",
    "signature",
    "sig",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "session",
    "sessionid",
    "jsessionid",
    "phpsessid",
    "sid",
    "code",
    "otp",
    "jwt",
    "ticket",
    "cookie",
)

#: Characters without which a string cannot hold a parameter value or a URL password.
_MARKERS = re.compile(r"[=@]")
#: A lower-case letter or digit followed by a capital: a camelCase word boundary.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
#: Query and fragment separators (kept as they are).
_SEPARATORS = re.compile(r"([&;])")
#: ``;name=value`` parameters inside a path segment (``/a;jsessionid=X/b``).
_PATH_PARAM = re.compile(r";([^;/=?#]*)=([^;/?#]*)")
#: ``scheme://`` (or a scheme-relative ``//``) at the start of an absolute URL.
_AUTHORITY_START = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:)?//")
#: A run of text with no white space or quotes: the unit ``redact_text`` looks at.
_WORD = re.compile(r"[^\s\"'<>`]+")
#: Distinct names remembered by ``is_secret`` (then it starts again).
_CACHE_SIZE = 1024


def _compact(name: str) -> str:
    return _NOT_ALNUM.sub("", name.lower())


class Redactor:
    """Hides the values of secret parameters and URL passwords.

    ``extra_params``: more secret names, added to :data:`DEFAULT_SECRET_PARAMS` (matched the
    same way). Immutable once made; any thread (the name cache is a plain dict: a lost entry
    under a race is recomputed, never wrong).
    """

    __slots__ = ("_cache", "_names", "params")

    def __init__(self, extra_params: Iterable[str] = ()) -> None:
        extra = tuple(extra_params)
        for name in extra:
            if not isinstance(name, str) or not _compact(name):
                raise ValueError(f"a secret parameter name needs a letter or digit: {name!r}")
        #: every secret name, defaults first
        self.params: tuple[str, ...] = DEFAULT_SECRET_PARAMS + extra
        self._names = frozenset(_compact(name) for name in self.params)
        self._cache: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"Redactor({len(self.params)} secret parameter names)"

    # names ----------------------------------------------------------------------------------

    def is_secret(self, name: str) -> bool:
        """Whether a parameter of this (raw, possibly percent-encoded) name is secret."""
        known = self._cache.get(name)
        if known is not None:
            return known
        secret = self._judge(name)
        cache = self._cache
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[name] = secret
        return secret

    def _judge(self, name: str) -> bool:
        decoded = unquote_plus(name)
        words = [w for w in _NOT_ALNUM.split(_CAMEL.sub("_", decoded).lower()) if w]
        while words and words[-1].isdigit():  # password[0], token_2
            words.pop()
        if not words:
            return False
        names = self._names
        bare_last = words[-1].rstrip("0123456789")  # token2
        for start in range(len(words)):
            tail = words[start:]
            if "".join(tail) in names or "".join([*tail[:-1], bare_last]) in names:
                return True
        return False

    # strings --------------------------------------------------------------------------------

    def uri(self, uri: str) -> str:
        """A request target or URL (absolute, scheme-relative or relative) with every secret
        parameter value (query, fragment, ``;`` path parameters) and any password in its
        user info replaced by ``<redacted>``. A bare ``user:pw@host`` is :meth:`netloc`'s."""
        if _MARKERS.search(uri) is None:
            return uri
        head, hash_mark, fragment = uri.partition("#")
        head, question, query = head.partition("?")
        head = self._user_info(head)
        if ";" in head:
            head = _PATH_PARAM.sub(self._path_param, head)
        if query:
            query = self.query(query)
        if fragment and "=" in fragment:
            fragment = self.query(fragment)
        return f"{head}{question}{query}{hash_mark}{fragment}"

    def query(self, query: str) -> str:
        """``a=1&token=x;b`` -> ``a=1&token=<redacted>;b`` (separators ``&`` and ``;``)."""
        if "=" not in query:
            return query
        parts = _SEPARATORS.split(query)
        for i in range(0, len(parts), 2):  # odd indexes are the separators
            name, equals, value = parts[i].partition("=")
            if equals and value and self.is_secret(name):
                parts[i] = f"{name}={REDACTED}"
        return "".join(parts)

    def netloc(self, netloc: str) -> str:
        """``user:pw@host:80`` -> ``user:<redacted>@host:80``; ``token@host`` ->
        ``<redacted>@host`` (a lone user name in a URL is usually a token). Without ``@``
        the string is returned as it is."""
        user_info, at, host = netloc.rpartition("@")
        if not at:
            return netloc
        user, colon, _password = user_info.partition(":")
        return f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"

    def text(self, text: str) -> str:
        """Free text (an error message, a repr): every URL, request target and
        ``name=value&...`` run in it redacted as :meth:`uri` and :meth:`query` do."""
        if _MARKERS.search(text) is None:
            return text
        return _WORD.sub(self._word, text)

    # helpers --------------------------------------------------------------------------------

    def _user_info(self, head: str) -> str:
        if "@" not in head:
            return head
        start = _AUTHORITY_START.match(head)
        if start is None:
            return head
        begin = start.end()
        slash = head.find("/", begin)
        end = len(head) if slash < 0 else slash
        return head[:begin] + self.netloc(head[begin:end]) + head[end:]

    def _path_param(self, match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if value and self.is_secret(name):
            return f";{name}={REDACTED}"
        return match.group(0)

    def _word(self, match: re.Match[str]) -> str:
        word = match.group(0)
        if "://" in word or word.startswith("/") or "?" in word:
            return self.uri(word)
        if "=" in word:
            return self.query(word)
        return word


def param_names(names: str | Iterable[str]) -> tuple[str, ...]:
    """``"a"`` or ``["a", "b"]`` as a tuple of names (a Monitor option's converter)."""
    return (names,) if isinstance(names, str) else tuple(names)


#: The redactor with the default names only.
default_redactor = Redactor()


def redact_uri(uri: str) -> str:
    """:meth:`Redactor.uri` with the default names."""
    return default_redactor.uri(uri)


def redact_netloc(netloc: str) -> str:
    """:meth:`Redactor.netloc` (the same for every redactor)."""
    return default_redactor.netloc(netloc)


def redact_text(text: str) -> str:
    """:meth:`Redactor.text` with the default names."""
    return default_redactor.text(text)


def is_secret_param(name: str) -> bool:
    """:meth:`Redactor.is_secret` with the default names."""
    return default_redactor.is_secret(name)
