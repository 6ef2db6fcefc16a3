"""Credentials never leave in what we show: redact them from URLs and from text that holds URLs.

One place decides what a credential looks like, for every URL the project handles (warehouse, lineage
endpoint, webhook) and every text that may quote one (errors, logs, lineage events, run metadata):

* the password of ``scheme://user:password@host`` (the user name is kept), also when the password
  holds unescaped ``@``, ``/`` or ``:``, and in text also when it holds spaces (up to the last ``@``
  before the first ``/`` after it);
* the value of every query or connection-string parameter whose name says it is a secret —
  ``password``, ``sslpassword``, ``passwd``, ``pwd``, ``secret``, ``token``, ``api_key``, ``access_key``,
  ``signature``, ``sig``, ``auth``, ``authorization``, ``credential``, ``private_key``... — in ``?a=b&c=d``,
  ``;a=b`` (JDBC/ODBC) and libpq ``key=value`` form (quoted values too), whatever the case or
  percent-encoding of the name;
* the same names as ``key: value`` (YAML, logs), ``"key": "value"`` (JSON) and ``{'key': 'value'}``
  (Python reprs, escaped quotes too); an unquoted value after ``:`` runs to the end of the line (or a
  ``,;&)}]``), and ``Authorization: Bearer …`` loses its token. ``key`` and ``code`` alone are secret only
  as ``key=value`` parameters: ``partition key: 2026-01-01`` and ``exit code: 1`` are not credentials;
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
                 "access-key", "credential", "signature", "private", "session", "cookie", "bearer",
                 "authorization")
_SECRET_NAMES = {"sig", "auth", "key", "code", "jwt", "x-amz-security-token"}

# a URL-like run: scheme://... up to whitespace or a quote/bracket that usually ends a quoted URL; the scheme
# starts a word (a long run like a.b.c... is tried once, not from every letter)
_URL = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")
# key=value and key: value pairs anywhere (query strings, conninfo, JDBC ;k=v, YAML, JSON, Python reprs):
# the key optionally quoted (also \"escaped\"), starting a word (so a long run of letters is tried once);
# the value is read only after a secret key (_VALUE), so a pair inside another value is found too and
# the scan stays linear
_PAIR = re.compile(
    r"""(?<![A-Za-z0-9_.%\-])(?P<kq>\\?["']|)(?P<key>[A-Za-z0-9_.%\-]+)(?P=kq)(?P<eq>\s*=\s*|[ \t]*:[ \t]*)""")
# the value: quoted (an unclosed quote runs to the end) or up to a separator; "Bearer <token>" is one value
_VALUE = re.compile(r"""
        (?P<vq>\\["'])(?:(?!(?P=vq))[^\n])*(?P=vq)?            # \"escaped quotes\" (JSON inside a string)
      | '(?:[^'\\]|\\.)*'? | "(?:[^"\\]|\\.)*"?
      | (?i:bearer|basic|token|digest)[ \t]+[^\s&;,'")}\]]+
      | (?P<bare>[^\s&;,'")]*)""", re.VERBOSE)
# scheme://user:pass word@host — a password with spaces, which the URL pattern below stops at
_SPACED_USERINFO = re.compile(
    r"""(?<![A-Za-z0-9+.\-])(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'"<>`]*:)(?P<password>[^\n/]*)@""")
_COLON_NOT_SECRET = {"key", "code"}  # "partition key: 2026-01-01", "exit code: 1"
# a token-looking path segment: long, letters and digits
_TOKEN_SEGMENT = re.compile(r"^[A-Za-z0-9_\-]{16,}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def is_secret_key(name: str) -> bool:
    """True when a parameter called ``name`` holds a credential (case and percent-encoding ignored)."""
    key = unquote_plus(name).strip().lower()
    return key in _SECRET_NAMES or any(part in key for part in _SECRET_PARTS)


def _masked(m: re.Match[str], text: str) -> tuple[str, int] | None:
    """The replacement for ``key=`` / ``key:`` (``m``) and its value when the key names a secret, and where
    it ends in ``text``; None to keep it."""
    key, eq = m["key"], m["eq"]
    colon = "=" not in eq
    if not is_secret_key(key):
        return None
    if colon and (unquote_plus(key).strip().lower() in _COLON_NOT_SECRET or text.endswith("://", 0, m.start())):
        return None  # "exit code: 1", or the user name of scheme://user:password@ (redact_url's)
    v = _VALUE.match(text, m.end())
    value, end = v[0], v.end()
    if not value:
        return None
    if colon and v["bare"] is not None:  # YAML/log style: an unquoted value runs to the end of the line
        end += len(re.match(r"[^\n,;&)}\]]*", text[end:])[0].rstrip())
    quote = v["vq"] or (value[0] if value[0] in "'\"" else "")
    masked = f"{quote}{REDACTED}{quote}" if quote and colon else REDACTED  # JSON/dict keep their quotes
    return f"{m['kq']}{key}{m['kq']}{eq}{masked}", end


def _redact_pairs(text: str) -> str:
    out, done = [], 0
    for m in _PAIR.finditer(text):
        if m.start() < done:  # inside a value already redacted
            continue
        masked = _masked(m, text)
        if masked is not None:
            replacement, done_at = masked
            out += [text[done:m.start()], replacement]
            done = done_at
    out.append(text[done:])
    return "".join(out)


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

    def spaced(m: re.Match[str]) -> str:  # only passwords with spaces: the others are redact_url's
        return f"{m['head']}{REDACTED}@" if re.search(r"\s", m["password"]) else m[0]

    text = _SPACED_USERINFO.sub(spaced, str(text))
    return _redact_pairs(_URL.sub(lambda m: redact_url(m[0]), text))
