"""Table names: the one place that splits, folds, quotes and normalises them (SQL analysis, zones, warehouse).

A table name is written the way the warehouse reads it: parts separated by dots, each part either bare
(``users``) or double-quoted (``"Order Lines"``, a doubled ``""`` is one quote). How a part is *folded*
depends on the warehouse's identifier rules:

* ``postgres`` — a bare part is folded to lower case, a quoted part is kept as written:
  ``"Salaries"`` and ``salaries`` are two different tables.
* ``duckdb`` — identifiers are case-insensitive, quoted or not: every part is folded to lower case.
* ``None`` (dialect not known, e.g. a policy file that does not say) — folded like DuckDB. This merges
  the two PostgreSQL spellings into one name, so a policy that cannot tell them apart labels both the
  same (the conservative choice: a label never misses a spelling).

The *canonical* form of a name is its folded parts joined by dots, where a part is written bare if it is
a plain lower-case identifier (``[a-z_][a-z0-9_$]*``) and double-quoted otherwise — ``core.users``,
``public."Salaries"``, ``core."x.y"``. It is unambiguous (a dot inside a part is always quoted) and
normalising it again gives it back unchanged. A bare name gets the default schema; a ``catalog.`` part is
kept (``c.s.t`` stays three parts everywhere — SQL cells refuse catalog parts, the warehouse refuses to
write them).
"""

from __future__ import annotations

import functools
import re
from typing import Final

_BARE: Final = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_CLOSING_QUOTE: Final = {'"': '"', "`": "`", "[": "]"}
GLOB_CHARS: Final = "*?["
CASE_SENSITIVE_DIALECTS: Final = frozenset({"postgres"})


def case_sensitive(dialect: str | None) -> bool:
    """Whether quoted identifiers keep their case in ``dialect`` (PostgreSQL: yes; DuckDB: no)."""
    return (dialect or "").lower() in CASE_SENSITIVE_DIALECTS


def fold(part: str, *, quoted: bool, dialect: str | None) -> str:
    """One identifier part as the warehouse stores it."""
    return part if quoted and case_sensitive(dialect) else part.lower()


def split_name(name: str, dialect: str | None = None) -> list[str]:
    """Split ``a.b.c`` into folded parts, honouring ``"quoted"`` parts (and ```quoted```/``[quoted]``,
    accepted in policy files). Raises ``ValueError`` on anything that is not a dotted name."""
    s, n, i, parts = name, len(name), 0, []
    while True:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            raise ValueError(f"invalid table name {name!r}: empty part")
        if s[i] in _CLOSING_QUOTE:
            close, j, buf = _CLOSING_QUOTE[s[i]], i + 1, []
            while True:
                if j >= n:
                    raise ValueError(f"invalid table name {name!r}: unbalanced quote")
                if s[j] == close:
                    if j + 1 < n and s[j + 1] == close:  # doubled quote = escaped quote
                        buf.append(close)
                        j += 2
                        continue
                    j += 1
                    break
                buf.append(s[j])
                j += 1
            part, quoted = "".join(buf), True
        else:
            j = i
            while j < n and s[j] != "." and not s[j].isspace():
                if s[j] in '"`':
                    raise ValueError(f"invalid table name {name!r}: stray quote")
                j += 1
            part, quoted = s[i:j], False
        if not part:
            raise ValueError(f"invalid table name {name!r}: empty part")
        parts.append(fold(part, quoted=quoted, dialect=dialect))
        i = j
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            return parts
        if s[i] != ".":
            raise ValueError(f"invalid table name {name!r}: unexpected {s[i]!r}")
        i += 1


def canonical_part(part: str) -> str:
    """A folded part as written in a canonical name: bare if plain lower case, else double-quoted."""
    return part if _BARE.match(part) else quote_ident(part)


def join(parts: list[str] | tuple[str, ...]) -> str:
    """Folded parts → canonical name."""
    return ".".join(canonical_part(p) for p in parts)


def from_parts(table: str, schema: str | None, default_schema: str, catalog: str | None = None) -> str:
    """Canonical name from already-folded parts (as a SQL parser returns them)."""
    parts = [catalog] if catalog else []
    return join([*parts, schema or default_schema, table])


@functools.lru_cache(maxsize=65536)  # pure; the static checks normalise the same names many times
def normalise(name: str, default_schema: str = "main", dialect: str | None = None, *, max_parts: int = 3) -> str:
    """Canonical ``schema.table`` (or ``catalog.schema.table``); a bare ``table`` gets ``default_schema``.

    ``default_schema`` is itself read as a name (``"Core"`` keeps its case on PostgreSQL). Raises
    ``ValueError`` on a name that is not a table name or has more than ``max_parts`` parts.
    """
    if ("*" in name or "?" in name) and not any(q in name for q in "\"`"):
        return normalise_pattern(name, default_schema, dialect)  # a policy glob such as events.clicks_*
    parts = split_name(name, dialect)
    if len(parts) == 1:
        parts = [*split_name(default_schema, dialect), *parts]
    if len(parts) > max_parts:
        raise ValueError(
            f"invalid table name {name!r}: more than {'catalog.schema.table' if max_parts >= 3 else 'schema.table'}")
    return join(parts)


def parts_of(canonical: str) -> list[str]:
    """The folded parts of a canonical (or any) name, without quotes: ``public."A.b"`` → ``['public', 'A.b']``."""
    return split_name(canonical, "postgres")  # quoted parts of a canonical name are already folded


def schema_and_table(canonical: str) -> tuple[str, str]:
    """``(schema, table)`` of a two-part canonical name; ``ValueError`` otherwise."""
    parts = parts_of(canonical)
    if len(parts) != 2:
        raise ValueError(f"table name {canonical!r} is not of the form 'schema.table'")
    return parts[0], parts[1]


def quote_ident(part: str) -> str:
    """A folded part as a SQL identifier (always quoted, so the warehouse reads exactly this name)."""
    return '"' + part.replace('"', '""') + '"'


def quoted_sql(canonical: str) -> str:
    """``public."Salaries"`` → ``"public"."Salaries"`` (SQL text naming exactly that table)."""
    return ".".join(quote_ident(p) for p in parts_of(canonical))


def is_glob(name: str) -> bool:
    return any(c in name for c in GLOB_CHARS)


def normalise_pattern(key: str, default_schema: str = "main", dialect: str | None = None) -> str:
    """A policy key: a glob (``*``/``?``) is split on dots and lower-cased, else read like a table name."""
    if ("*" not in key and "?" not in key) or any(q in key for q in "\"`"):
        return normalise(key, default_schema, dialect)
    parts = [p.strip().lower() for p in key.split(".")]
    if not all(parts) or len(parts) > 3 or any(c.isspace() or c in '"`' for p in parts for c in p):
        raise ValueError(f"invalid table pattern {key!r}")
    schema = join(split_name(default_schema, dialect))
    return ".".join([schema, *parts] if len(parts) == 1 else parts)
