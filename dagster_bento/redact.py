"""Credentials never leave in what we show: redact them from URLs and from text that holds URLs.

One place decides what a credential looks like, for every URL the project handles (warehouse, lineage
endpoint, webhook) and every text that may quote one (errors, logs, lineage events, run metadata):

* the password of ``scheme://user:password@host`` (the user name is kept), also when the password
  holds unescaped ``@``, ``/`` or ``:``;
* the value of every query or connection-string parameter whose name says it is a secret —
  ``password``, ``sslpassword``, ``passwd``, ``pwd``, ``secret``, ``token``, ``api_key``, ``access_key``,
  ``signature``, ``sig``, ``auth``, ``credential``, ``private_key``... — in ``?a=b&c=d``, ``;a=b`` (JDBC/ODBC)
  and libpq ``key=value`` form (quoted values too), whatever the case or percent-encoding of the name;
* path segments that look like tokens (webhook URLs such as ``https://hooks.slack.com/services/T0/B0/XXXX``
  carry their secret in the path): 16+ letters/digits mixing both, or 24+, UUIDs (run ids) excepted;
  ``secret_path=True`` drops the whole path of a URL that is a credential as a whole (a webhook).

Redaction fails closed: what cannot be parsed is redacted more, never less. ``bento_fetch_role`` and
other names that do not say "secret" are kept, so a redacted URL still tells an operator where it points.
"""

import re
from urllib.parse import unquote_plus

__all__ = ["REDACTED", "is_secret_key", "redact_url", "redact_text"]

REDACTED = "***"

_SECRET_PARTS = ("pass", "pwd", "secret", "token", "apikey", "api_key", "api-key", "accesskey", "access_key",
                 "access-key", "credential", "signature", "private", "session", "cookie", "bearer")
_SECRET_NAMES = {"sig", "auth", "key", "code", "jwt", "x-amz-security-token"}

# a URL-like run: scheme://... up to whitespace or a quote/bracket that usually ends a quoted URL
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")
# key=value pairs anywhere (query strings, conninfo, JDBC ;k=v): value quoted or up to a separator
_PAIR = re.compile(r"""(?P<key>[A-Za-z0-9_.%\-]+)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&;,'")]*)""")
# a token-looking path segment: long, letters and digits
_TOKEN_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]{16,}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_secret_key(name: str) -> bool:
    """True when a parameter called ``name`` holds a credential (case and percent-encoding ignored)."""
    key = unquote_plus(name).strip().lower()
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def _redact_pairs(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        if not is_secret_key(m["key"]) or not m["value"]:
            return m[0]
        return f"{m['key']}{m['eq']}{REDACTED}"

    return _PAIR.sub(repl, text)


def redact_url(url: str, *, secret_path: bool = False) -> str:
    """``url`` with every credential replaced by ``***`` (see the module docstring).

    ``secret_path=True`` is for URLs that are credentials as a whole (webhooks): everything after the
    host is replaced.
    """
    if "://" not in url:
        return _redact_pairs(url)
    scheme, rest = url.split("://", 1)
    at = _userinfo_end(rest)
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        if ":" in userinfo:  # user:password (a user name alone is kept)
            userinfo = f"{userinfo.split(':', 1)[0]}:{REDACTED}"
        rest = f"{userinfo}@{rest}"
    split = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#"), rest.find(";")) if i >= 0),
                default=len(rest))
    if secret_path:
        return f"{scheme}://{rest[:split]}" + (f"/{REDACTED}" if rest[split:] else "")
    query = min((i for i in (rest.find("?"), rest.find("#"), rest.find(";")) if i >= 0), default=len(rest))
    segments = rest[:query].split("/")
    head = "/".join(REDACTED if i > 0 and _is_token(s) else s for i, s in enumerate(segments))
    return f"{scheme}://{head}{_redact_pairs(rest[query:])}"


def _userinfo_end(rest: str) -> int:
    """Index of the '@' that ends ``user:password`` in ``rest`` (the URL after ``scheme://``), or -1.
    A password may hold unescaped '@', '/', '?' or '#': the last '@' wins when what precedes it reads as
    ``user:password``; else the last '@' before the path/query."""
    last = rest.rfind("@")
    if last < 0:
        return -1
    if ":" in rest[:last] and not any(c in rest[:last] for c in "=&"):
        return last
    authority_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return rest.rfind("@", 0, authority_end)


def _is_token(segment: str) -> bool:
    if not _TOKEN_SEGMENT.match(segment) or _UUID.match(segment):
        return False
    return len(segment) >= 24 or (any(c.isdigit() for c in segment) and any(c.isalpha() for c in segment))


def redact_text(text: str) -> str:
    """``text`` with every URL redacted by :func:`redact_url` and every ``secret=value`` pair masked."""
    if not text:
        return text
    return _redact_pairs(_URL.sub(lambda m: redact_url(m[0]), str(text)))
