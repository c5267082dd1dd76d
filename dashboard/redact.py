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

Names of words joined without a boundary (``authtoken``, ``dbpass``, ``AUTHTOKEN``) are
caught by their ending: a name is also secret when its compacted lower-case form ends with
a secret name of four letters or more (``token``, ``password``, ``passwd``, ``pass``,
``secret``, ``auth``, ``session``, ``code``, ``cookie``, ``signature``...; every extra
name of four letters or more too), or with ``pwd``, ``otp`` or ``jwt`` (no word ends so).
Shorter names (``key``, ``sig``, ``sid``) are matched as whole words only, so ``monkey``,
``turkey`` and ``keyboard`` stay; a name ending in ``key`` is secret when what comes before
``key`` is (``secretkey``, ``authkey``, ``sessionkey``, ``passkey``) or names a secret
key's kind (``apikey``, ``accesskey``, ``privatekey``, ``signingkey``, ``masterkey``; not
``publickey`` nor ``hotkey``). Words that merely end in a secret name's letters are listed
and stay: ``bypass``, ``compass``, ``overpass``, ``underpass``, ``trespass``, ``surpass``,
``obsession``, ``possession``, ``encode``, ``decode``, ``unicode``.

A value may hold a URL, a query or user info of its own (``next=http://alice:pw@evil/``,
``u=https://h/?access_token=X``, also percent-encoded, ``http%3A%2F%2F...%3Ftoken%3DX``):
such a value (one with ``=``, ``@`` or ``%``) is redacted in turn and the rest of it stays
readable; an encoded value that hid a secret is encoded again, keeping plain the
characters it had left plain. Four levels are followed (a value inside a value is one
level, a percent-decoding another); a value still holding a query or user info at the
fifth is hidden whole. An e-mail address (``bob@example.com``, a user name without a
password) in a value is left as it is.

Cost: nothing on any hot path; called when a snapshot is built, for what is shown (a few
microseconds per URI with a query, a membership test for one without; a value holding a
URL costs that URL's redaction again, at most twice per level: about 10 us for an encoded
``next=`` URL, 0.2 ms for a pathological 800-character URI of twice-encoded URLs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote, unquote_plus

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
#: Secret names under four letters that are still matched at the end of a joined name
#: (no word ends with them).
_SHORT_ENDINGS = ("pwd", "otp", "jwt")
#: Words that end with a secret name's letters and are no secret (``by-pass``, ``com-pass``).
_NOT_SECRET_ENDINGS = (
    "bypass",
    "compass",
    "overpass",
    "underpass",
    "trespass",
    "surpass",
    "obsession",
    "possession",
    "encode",
    "decode",
    "unicode",
)
#: What makes ``...key`` a secret key when it comes just before ``key`` (besides a secret
#: name: ``secretkey``, ``authkey``).
_KEY_KINDS = (
    "api",
    "app",
    "access",
    "private",
    "signing",
    "master",
    "encryption",
    "hmac",
    "shared",
    "client",
    "consumer",
    "license",
)
#: An encoded ``=``, ``@`` or ``%`` (twice encoded): only then can decoding reveal more.
_ENCODED_MARKER = re.compile(r"%(?:3[dD]|40|25)")
#: Levels of values inside values followed (a percent-decoding counts as one).
_MAX_DEPTH = 4
#: A lower-case letter or digit followed by a capital: a camelCase word boundary.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
#: Query and fragment separators (kept as they are).
_SEPARATORS = re.compile(r"([&;])")
#: Separators in a value that holds a query but is no URL (``a/b?token=X``, ``token=X``).
_LOOSE_SEPARATORS = re.compile(r"([&;?#])")
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

    __slots__ = ("_cache", "_endings", "_names", "params")

    def __init__(self, extra_params: Iterable[str] = ()) -> None:
        extra = tuple(extra_params)
        for name in extra:
            if not isinstance(name, str) or not _compact(name):
                raise ValueError(f"a secret parameter name needs a letter or digit: {name!r}")
        #: every secret name, defaults first
        self.params: tuple[str, ...] = DEFAULT_SECRET_PARAMS + extra
        self._names = frozenset(_compact(name) for name in self.params)
        long_names = sorted(name for name in self._names if len(name) >= 4)
        self._endings: tuple[str, ...] = (*long_names, *_SHORT_ENDINGS)
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
        return self._ends_secret("".join([*words[:-1], bare_last]))

    def _ends_secret(self, compact: str) -> bool:
        # authtoken, dbpass; never bypass. Words are joined: no boundary to go by.
        while True:
            if compact.endswith(self._endings) and not compact.endswith(_NOT_SECRET_ENDINGS):
                return True
            if len(compact) <= 3 or not compact.endswith("key"):
                return False
            compact = compact[:-3]  # authkey, apikey: what kind of key? never monkey
            if compact.endswith(_KEY_KINDS):
                return True

    # strings --------------------------------------------------------------------------------

    def uri(self, uri: str) -> str:
        """A request target or URL (absolute, scheme-relative or relative) with every secret
        parameter value (query, fragment, ``;`` path parameters) and any password in its
        user info replaced by ``<redacted>``. A bare ``user:pw@host`` is :meth:`netloc`'s.
        Values holding URLs are redacted in turn (see the module's docstring)."""
        if _MARKERS.search(uri) is None:
            return uri
        return self._uri(uri, 0)

    def query(self, query: str) -> str:
        """``a=1&token=x;b`` -> ``a=1&token=<redacted>;b`` (separators ``&`` and ``;``)."""
        if "=" not in query:
            return query
        return self._params(query, _SEPARATORS, 0)

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

    def _uri(self, uri: str, depth: int) -> str:
        head, hash_mark, fragment = uri.partition("#")
        head, question, query = head.partition("?")
        head = self._user_info(head)
        if ";" in head:
            head = _PATH_PARAM.sub(self._path_param, head)
        if query and "=" in query:
            query = self._params(query, _SEPARATORS, depth)
        if fragment and "=" in fragment:
            fragment = self._params(fragment, _SEPARATORS, depth)
        return f"{head}{question}{query}{hash_mark}{fragment}"

    def _params(self, query: str, separators: re.Pattern[str], depth: int) -> str:
        """``query``'s parameters (at nesting ``depth``) with secret values hidden and
        values that hold more (``=``, ``@``, ``%``) redacted in turn."""
        parts = separators.split(query)
        for i in range(0, len(parts), 2):  # odd indexes are the separators
            name, equals, value = parts[i].partition("=")
            if not (equals and value):
                continue
            if self.is_secret(name):
                parts[i] = f"{name}={REDACTED}"
            elif "=" in value or "@" in value or "%" in value:
                shown = self._value(value, depth + 1)
                if shown is not value:
                    parts[i] = f"{name}={shown}"
        return "".join(parts)

    def _value(self, value: str, depth: int) -> str:
        """A parameter value (``depth`` levels down) that may hold a URL, a query or user
        info, redacted; ``value`` itself when nothing in it is hidden."""
        if depth > _MAX_DEPTH:
            return REDACTED if _holds_more(value) else value
        shown = value
        if "=" in value or "@" in value:
            if value.startswith("/") or _AUTHORITY_START.match(value) is not None:
                shown = self._uri(value, depth)
            else:  # token=X, a/b?token=X, alice:pw@host/p, token=X?next=http://h/
                shown = self._params(value, _LOOSE_SEPARATORS, depth)
                if "@" in shown:
                    shown = _bare_user_info(shown)
        if "%" in shown and _ENCODED_MARKER.search(shown) is not None:
            decoded = unquote(shown)
            if "=" in decoded or "@" in decoded:
                redacted = self._value(decoded, depth + 1)
                if redacted != decoded:
                    shown = _encoded_like(redacted, value)
        return value if shown == value else shown

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


def _holds_more(value: str) -> bool:
    """Whether a value holds a query or user info, plain or percent-encoded."""
    if "=" in value or "@" in value:
        return True
    return "%" in value and _ENCODED_MARKER.search(value) is not None


def _bare_user_info(value: str) -> str:
    """``alice:pw@host/p`` -> ``alice:<redacted>@host/p`` (a URL without its scheme);
    ``bob@example.com`` (no password: an e-mail address) stays."""
    end = len(value)
    for stop in "/?#&;":
        found = value.find(stop)
        if 0 <= found < end:
            end = found
    user_info, at, host = value[:end].rpartition("@")
    user, colon, _password = user_info.partition(":")
    if not (at and colon):
        return value
    return f"{user}:{REDACTED}@{host}{value[end:]}"


def _encoded_like(redacted: str, original: str) -> str:
    """``redacted`` (a decoded value) percent-encoded again, keeping plain the characters
    ``original`` had left plain, and ``<redacted>`` readable. Never raises: a character
    UTF-8 cannot encode (a lone surrogate) is shown as ``%3F``."""
    plain = "".join(set(original)).replace("%", "")  # quote() always encodes non-ASCII
    pieces = redacted.split(REDACTED)
    return REDACTED.join(quote(piece, safe=plain, errors="replace") for piece in pieces)


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
