"""Purpose zones: the policy file, the read rule, label propagation and zone violations.

The model is section 5 of ``shared/design/purpose-zones.md`` with the decisions recorded at the top of
that note: the conservative rule (every output label includes the notebook's own zone), table-level
labels, reclassifications in the reviewed policy file, and ``log`` mode per zone.

This module is pure: it imports no Dagster API of its own and never touches a warehouse. The static
checker (``check_jobs``) and the run-time checks (``check_read`` before a fetch, ``check_write``
before an upload) share the same rules, so a definition-time verdict and a run-time verdict agree.

Vocabulary: a *label* is a set of zones. ``frozenset()`` means explicitly unrestricted, ``None``
means declared but unclassified, and ``UNKNOWN`` means the table is in neither the policy file nor
the label store. Unclassified and unknown tables are unreadable (fail closed).
"""

import collections
import dataclasses
import difflib
import enum
import fnmatch
import functools
import re
import types
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Final, Literal, Protocol, TypeAlias

import yaml
from yaml.constructor import SafeConstructor

from dagster_bento.errors import (
    PROJECT_PROBLEMS_HEADER,
    DagsterBentoPolicyError,
    DagsterBentoProjectError,
    Problem,
)

__all__ = [
    "DEFAULT_POLICY_FILE",
    "UNKNOWN",
    "WRITE_MODES",
    "Label",
    "LabelSource",
    "LabelState",
    "PurposePolicy",
    "PurposeZoneDefinitionError",
    "Reclassification",
    "ViolationCode",
    "Zone",
    "ZoneJob",
    "ZoneViolation",
    "check_jobs",
    "check_read",
    "check_write",
    "empty_policy",
    "label_source",
    "load_policy",
    "normalize_table_name",
    "output_label",
    "resolve_label",
    "violation_error",
]

DEFAULT_POLICY_FILE: Final = "purpose_zones.yaml"

Phase = Literal["definition", "pre_fetch", "pre_upload"]
ZoneMode = Literal["enforce", "log"]

#: Write modes: ``overwrite`` replaces the table (new label = C); the others keep old rows (S ∪ C).
WRITE_MODES: Final = ("overwrite", "append", "overwrite_partition")
_ZONE_MODES: Final = ("enforce", "log")
_GLOB_CHARS: Final = "*?["
_ZONE_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LabelState(enum.Enum):
    """Sentinel for a table that neither the policy file nor the label store knows."""

    UNKNOWN = "unknown"


UNKNOWN: Final = LabelState.UNKNOWN

#: The label of a table: zones, ``None`` (declared but unclassified) or ``UNKNOWN``.
Label: TypeAlias = frozenset[str] | None | Literal[LabelState.UNKNOWN]


class ViolationCode(str, enum.Enum):
    READ_NOT_PERMITTED = "PZ001"
    UNCLASSIFIED_TABLE = "PZ002"
    UNKNOWN_TABLE = "PZ003"
    OUTPUT_UNDERLABELED = "PZ004"
    UNCLASSIFIED_OUTPUT = "PZ005"
    UNDECLARED_INPUT = "PZ006"
    UNRESOLVABLE_TABLE_NAME = "PZ007"
    CONFLICTING_WRITERS = "PZ008"
    INVALID_POLICY = "PZ009"


# --------------------------------------------------------------------------------------------------
# Violations
# --------------------------------------------------------------------------------------------------


def _fmt_zones(zones: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(zones)) + "}"


@dataclasses.dataclass(frozen=True)
class ZoneViolation:
    """One purpose-zone violation. ``message()`` is one deterministic line: sorted zone sets, names only."""

    code: ViolationCode
    phase: Phase
    notebook: str  # schedule entry name (the unit of zones); the policy file path for PZ009 on the policy
    notebook_zone: str
    table: str | None  # offending table (input or output)
    table_zones: frozenset[str] | None  # current label of `table` (None: none / unclassified)
    required_zones: frozenset[str] | None  # for writes: the computed output label C(O)
    path: tuple[str, ...] = ()  # lineage path for multi-hop cases, e.g. ("msg.messages", "nb_a", "tmp.x")
    enforced: bool = True  # False when every zone involved is in `log` mode
    hint: str = ""
    cell: int | None = None
    notebook_path: str = ""  # e.g. "notebooks/revenue.ipynb"
    # PZ001: the label zones that refuse the read and what each permits (None: zone not defined).
    denied_by: tuple[tuple[str, frozenset[str] | None], ...] = ()
    # PZ008: the other overwriters of `table` and the labels they would give it.
    conflicting_writers: tuple[tuple[str, frozenset[str]], ...] = ()
    parameter: str | None = None  # PZ007: the free-string parameter in a table position
    detail: str = ""  # PZ005 / PZ009: what exactly is wrong
    line: int | None = None  # PZ009: line in the policy file

    def message(self) -> str:
        text = f"[{self.code.value} {self.code.name}] {self.phase}: {self._body()}."
        if self.hint:
            text += f" Hint: {self.hint}"
        return text

    def _subject(self) -> str:
        return f"notebook '{self.notebook}' (zone {self.notebook_zone})"

    def _via(self) -> str:
        return f" via {' -> '.join(self.path)}" if self.path else ""

    def _body(self) -> str:
        code = self.code
        if code is ViolationCode.INVALID_POLICY:
            if not self.notebook_zone:
                where = f"policy '{self.notebook}'" + (f" line {self.line}" if self.line else "")
                return f"{where}: {self.detail}"
            return f"{self._subject()} {self.detail}"
        subject = self._subject()
        table = f"'{self.table}'"
        if code is ViolationCode.READ_NOT_PERMITTED:
            kind = "computed zones" if self.path else "zones"
            text = f"{subject} may not read {table} ({kind} {_fmt_zones(self.table_zones or ())}){self._via()}"
            for zone, permits in self.denied_by:
                if permits is None:
                    text += f"; zone {zone} is not defined in the policy"
                else:
                    text += f"; zone {zone} permits {_fmt_zones(permits)}"
            return text
        if code is ViolationCode.UNCLASSIFIED_TABLE:
            return f"{subject} may not read {table} (declared without zones: unclassified tables are unreadable)"
        if code is ViolationCode.UNKNOWN_TABLE:
            return f"{subject} may not read {table} (in neither the policy nor the label store)"
        if code is ViolationCode.OUTPUT_UNDERLABELED:
            required = self.required_zones or frozenset()
            declared = self.table_zones or frozenset()
            return (
                f"{subject} may not write {table} (zones {_fmt_zones(declared)}); data requires "
                f"{_fmt_zones(required)}, missing {_fmt_zones(required - declared)}{self._via()}"
            )
        if code is ViolationCode.UNCLASSIFIED_OUTPUT:
            why = self.detail or "exists without a label"
            return f"{subject} may not write {table} ({why}); data requires {_fmt_zones(self.required_zones or ())}"
        if code is ViolationCode.UNDECLARED_INPUT:
            return f"{subject} reads {table}, which is not a declared input"
        if code is ViolationCode.UNRESOLVABLE_TABLE_NAME:
            return (
                f"{subject} reads a table named by free-string parameter '{self.parameter}'; "
                "its zones can only be checked at run time, before each fetch"
            )
        if code is ViolationCode.CONFLICTING_WRITERS:
            others = ", ".join(f"'{name}' {_fmt_zones(label)}" for name, label in self.conflicting_writers)
            return (
                f"{subject} overwrites {table} with zones {_fmt_zones(self.required_zones or ())}, "
                f"but other overwriters give it different zones: {others}"
            )
        raise AssertionError(f"unhandled violation code {code!r}")  # pragma: no cover

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for lineage facets, logs and run metadata."""

        def zones(z: frozenset[str] | None) -> list[str] | None:
            return None if z is None else sorted(z)

        return {
            "code": self.code.value,
            "name": self.code.name,
            "phase": self.phase,
            "notebook": self.notebook,
            "notebook_path": self.notebook_path,
            "cell": self.cell,
            "notebook_zone": self.notebook_zone,
            "table": self.table,
            "table_zones": zones(self.table_zones),
            "required_zones": zones(self.required_zones),
            "path": list(self.path),
            "enforced": self.enforced,
            "denied_by": {zone: zones(permits) for zone, permits in self.denied_by},
            "conflicting_writers": {name: sorted(label) for name, label in self.conflicting_writers},
            "parameter": self.parameter,
            "line": self.line,
            "detail": self.detail,
            "hint": self.hint,
            "message": self.message(),
        }

    def to_problem(self) -> Problem:
        return Problem(
            notebook=self.notebook_path or self.notebook,
            cell=self.cell,
            code=self.code.value,
            message=self.message(),
            table=self.table,
            line=self.line,
            severity="error" if self.enforced else "warning",
        )

    def sort_key(self) -> tuple[str, str, int, str, str]:
        cell = -1 if self.cell is None else self.cell
        return (self.notebook, self.code.value, cell, self.table or "", self.message())


class PurposeZoneDefinitionError(DagsterBentoProjectError):
    """Raised at load with every violation at once (sorted by notebook, code, cell, table)."""

    def __init__(self, violations: Iterable[ZoneViolation], header: str = PROJECT_PROBLEMS_HEADER):
        self.violations = sorted(violations, key=ZoneViolation.sort_key)
        super().__init__([v.to_problem() for v in self.violations], header)


def violation_error(v: ZoneViolation) -> DagsterBentoPolicyError:
    """The run-time error for one enforced violation (raised by the caller before a fetch or upload)."""
    return DagsterBentoPolicyError(
        v.message(), notebook=v.notebook_path or None, cell=v.cell, metadata={"violation": v.to_dict()}
    )


# --------------------------------------------------------------------------------------------------
# Table names
# --------------------------------------------------------------------------------------------------

def _split_identifier(name: str, dialect: str | None = None) -> list[str]:
    """Split ``a.b.c`` into folded parts (see :mod:`dagster_bento.tables`)."""
    from dagster_bento import tables

    return tables.split_name(name, dialect)


@functools.lru_cache(maxsize=65536)  # pure; the static check normalises the same names many times
def normalize_table_name(name: str, default_schema: str = "main", dialect: str | None = None) -> str:
    """Canonical ``schema.table`` (or ``catalog.schema.table``); a bare ``table`` gets ``default_schema``.

    ``'"CORE"."Users"'`` and ``'users'`` (default schema ``core``) both give ``'core.users'`` unless
    ``dialect`` is ``postgres``, where a quoted part keeps its case (``core."Users"``). Glob patterns such as
    ``events.clicks_*`` pass through (lower-cased). Raises ``ValueError`` on a name that is not a table name.
    One implementation for the SQL analysis, the zones and the warehouse: :func:`dagster_bento.tables.normalise`.
    """
    from dagster_bento import tables

    return tables.normalise(name, default_schema, dialect)


def _dialect_name(dialect: str | None) -> str | None:
    """``postgresql`` → ``postgres`` (the table-name module's spelling); other names pass lower-cased."""
    if not dialect:
        return None
    name = dialect.strip().lower()
    return "postgres" if name in ("postgres", "postgresql") else name


def _normalize_key(key: str, default_schema: str, dialect: str | None = None) -> str:
    """A policy ``tables:`` key: a glob (``*`` or ``?``) is split on dots as is, else like a table name."""
    from dagster_bento import tables

    return tables.normalise_pattern(key, default_schema, dialect)


def _is_glob(name: str) -> bool:
    return any(c in name for c in _GLOB_CHARS)


def _literal_prefix_len(pattern: str) -> int:
    return min((pattern.index(c) for c in _GLOB_CHARS if c in pattern), default=len(pattern))


def _glob_specificity(pattern: str) -> tuple[int, int, str]:
    """Sort key: longest literal prefix first, then most literal characters, then the pattern."""
    literal = sum(1 for c in pattern if c not in _GLOB_CHARS)
    return (-_literal_prefix_len(pattern), -literal, pattern)


_STAR: Final = ("*",)
_ANY: Final = ("?",)
_GlobToken: TypeAlias = tuple[str, ...]


def _glob_tokens(pattern: str) -> list[_GlobToken]:
    tokens: list[_GlobToken] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
        elif c == "?":
            tokens.append(_ANY)
        elif c == "[":
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j >= len(pattern):
                tokens.append(("lit", c))
            else:
                tokens.append(("class", pattern[i : j + 1]))
                i = j
        else:
            tokens.append(("lit", c))
        i += 1
    return tokens


def _token_matches(token: _GlobToken, ch: str) -> bool:
    if token == _ANY:
        return True
    if token[0] == "lit":
        return token[1] == ch
    return fnmatch.fnmatchcase(ch, token[1])


def _chars_intersect(a: _GlobToken, b: _GlobToken) -> bool:
    if a[0] == "lit":
        return _token_matches(b, a[1])
    if b[0] == "lit":
        return _token_matches(a, b[1])
    # '?' or character classes: test representative characters of both.
    text = "".join(t[1] for t in (a, b) if len(t) > 1) + "a0_.-"
    candidates = {chr(max(0, min(0x10FFFF, ord(c) + d))) for c in text for d in (-1, 0, 1)}
    return any(_token_matches(a, ch) and _token_matches(b, ch) for ch in sorted(candidates))


def _globs_overlap(a: str, b: str) -> bool:
    """Whether some table name matches both glob patterns (product of the two patterns)."""
    ta, tb = _glob_tokens(a), _glob_tokens(b)
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(ta) and j == len(tb):
            return True
        if i < len(ta) and ta[i] == _STAR:
            stack.append((i + 1, j))
        if j < len(tb) and tb[j] == _STAR:
            stack.append((i, j + 1))
        if i < len(ta) and j < len(tb):
            x, y = ta[i], tb[j]
            if x == _STAR and y != _STAR:
                stack.append((i, j + 1))
            elif y == _STAR and x != _STAR:
                stack.append((i + 1, j))
            elif x != _STAR and _chars_intersect(x, y):
                stack.append((i + 1, j + 1))
    return False


# --------------------------------------------------------------------------------------------------
# Policy model
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Zone:
    name: str
    permits: frozenset[str] | Literal["*"]  # purposes that may process data labelled with this zone
    mode: ZoneMode = "enforce"


@dataclasses.dataclass(frozen=True)
class Reclassification:
    """An approved exception: outputs of ``notebook`` written to ``output`` lose the zones in ``drop``."""

    notebook: str  # schedule entry name or notebook file stem
    output: str
    drop: frozenset[str]
    justification: str
    approved_by: str


@dataclasses.dataclass(frozen=True)
class PurposePolicy:
    """The validated policy file. Table keys are normalised; exact names win over globs.

    ``default_dialect`` decides the identifier rules of table names (the policy file's ``default_dialect``,
    else the project warehouse's): on ``postgres`` a quoted name keeps its case, so ``public."Salaries"`` and
    ``public.salaries`` are two tables; without a dialect both spellings fold into one (see
    :mod:`dagster_bento.tables`).
    """

    zones: Mapping[str, Zone]
    tables: Mapping[str, frozenset[str] | None]  # exact names and globs; None = declared but unclassified
    reclassifications: tuple[Reclassification, ...]
    default_schema: str = "main"
    default_dialect: str | None = None
    source: str = DEFAULT_POLICY_FILE  # where the policy came from; named in messages
    _globs: tuple[str, ...] = dataclasses.field(default=(), init=False, repr=False, compare=False)
    _declared: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema = self.default_schema.lower()
        dialect = _dialect_name(self.default_dialect)
        tables = {_normalize_key(k, schema, dialect): v for k, v in self.tables.items()}
        reclassifications = tuple(
            dataclasses.replace(r, output=normalize_table_name(r.output, schema, dialect))
            for r in self.reclassifications
        )
        object.__setattr__(self, "default_schema", schema)
        object.__setattr__(self, "default_dialect", dialect)
        object.__setattr__(self, "zones", types.MappingProxyType(dict(self.zones)))
        object.__setattr__(self, "tables", types.MappingProxyType(tables))
        object.__setattr__(self, "reclassifications", reclassifications)
        object.__setattr__(self, "_globs", tuple(sorted((t for t in tables if _is_glob(t)), key=_glob_specificity)))

    @property
    def file_name(self) -> str:
        return PurePath(self.source).name or DEFAULT_POLICY_FILE

    def normalize(self, table: str) -> str:
        return normalize_table_name(table, self.default_schema, self.default_dialect)

    def declared_label(self, table: str) -> Label:
        """The YAML label: exact match first, then the most specific glob, else ``UNKNOWN``."""
        memo: dict[str, Label] = self._declared  # memo: the policy is immutable
        if table not in memo:
            name = self.normalize(table)
            memo[table] = self.tables[name] if name in self.tables else next(
                (self.tables[p] for p in self._globs if fnmatch.fnmatchcase(name, p)), UNKNOWN)
        return memo[table]

    def permits(self, label_zone: str, notebook_zone: str) -> bool:
        """Whether data labelled ``label_zone`` may be processed for purpose ``notebook_zone``."""
        zone = self.zones.get(label_zone)
        if zone is None:
            return False  # fail closed on a zone the policy does not define
        return zone.permits == "*" or notebook_zone in zone.permits

    def mode_of(self, zone: str) -> ZoneMode:
        defined = self.zones.get(zone)
        return defined.mode if defined is not None else "enforce"

    def enforces_any(self, zones: Iterable[str]) -> bool:
        """The strictest zone decides: any ``enforce`` zone (or no zone at all) means block."""
        zones = list(zones)
        return not zones or any(self.mode_of(z) == "enforce" for z in zones)

    def reclassification_for(
        self, notebook: str, output: str, *, notebook_path: str | None = None
    ) -> Reclassification | None:
        """The approved reclassification of ``output`` for schedule entry ``notebook``.

        Entries name a schedule entry or a notebook file stem: pass ``notebook_path`` to match the
        stem too (the schedule entry name wins).
        """
        name = self.normalize(output)
        keys = [notebook] + ([PurePath(notebook_path).stem] if notebook_path else [])
        for key in keys:
            for r in self.reclassifications:
                if r.notebook == key and r.output == name:
                    return r
        return None


def empty_policy(default_schema: str = "main", dialect: str | None = None) -> PurposePolicy:
    """A policy with no zones and no tables: every table is unknown, so every read is refused."""
    return PurposePolicy(zones={}, tables={}, reclassifications=(), default_schema=default_schema,
                         default_dialect=dialect)


# --------------------------------------------------------------------------------------------------
# Loading and validating the policy file
# --------------------------------------------------------------------------------------------------

_TOP_KEYS: Final = ("version", "default_dialect", "default_schema", "zones", "tables", "reclassifications")
_ZONE_KEYS: Final = ("permits", "mode")
_TABLE_KEYS: Final = ("zones",)
_RECLASS_KEYS: Final = ("notebook", "output", "drop", "justification", "approved_by")


class _PolicyReader:
    """Walks the composed YAML node tree so every problem carries its line number."""

    def __init__(self, source: str, notebooks: Collection[str] | None, dialect: str | None = None):
        self.source = source
        self.notebooks = notebooks
        self.dialect = _dialect_name(dialect)  # the warehouse's, unless the file sets default_dialect
        self.violations: list[ZoneViolation] = []
        self._constructor = SafeConstructor()

    def error(self, node: yaml.Node | None, detail: str, *, hint: str = "", table: str | None = None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.violations.append(_policy_violation(self.source, detail, line=line, hint=hint, table=table))

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return node  # the caller reports the wrong type
        return self._constructor.construct_object(node, deep=True)

    def mapping(
        self, node: yaml.Node, what: str, allowed: Sequence[str] | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return {}
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                self.error(key_node, f"keys of {what} must be strings")
            elif key in out:
                first = out[key][0].start_mark.line + 1
                self.error(key_node, f"duplicate key '{key}' in {what} (first at line {first})")
            elif allowed is not None and key not in allowed:
                self.error(key_node, f"unknown key '{key}' in {what}; expected one of {', '.join(allowed)}")
            else:
                out[key] = (key_node, value_node)
        return out

    def string_list(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list")
            return None
        items = []
        for item in node.value:
            value = self.scalar(item)
            if not isinstance(value, str) or not value:
                self.error(item, f"{what} must contain names (strings)")
            else:
                items.append((value, item))
        return items

    def text(self, node: yaml.Node, what: str) -> str | None:
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            self.error(node, f"{what} must be a non-empty string")
            return None
        return value

    # -- sections ---------------------------------------------------------------------------------

    def read(self, root: yaml.Node | None) -> PurposePolicy | None:
        if root is None:
            self.error(None, "the policy file is empty", hint="start from `version: 1` with `zones:` and `tables:`.")
            return None
        top = self.mapping(root, "the policy file", _TOP_KEYS)
        if "version" not in top:
            self.error(root, "missing 'version'", hint="add `version: 1`.")
        else:
            version = self.scalar(top["version"][1])
            if version != 1 or isinstance(version, bool):
                self.error(top["version"][1], "unsupported version; expected 1")
        schema = "main"
        if "default_schema" in top:
            schema = self._schema(top["default_schema"][1]) or schema
        dialect = None
        if "default_dialect" in top:
            value = self.scalar(top["default_dialect"][1])
            if value is not None and not isinstance(value, str):
                self.error(top["default_dialect"][1], "default_dialect must be a string")
            else:
                dialect = value
        self.dialect = _dialect_name(dialect) or self.dialect  # table names follow the warehouse's rules
        if "zones" not in top:
            self.error(root, "missing 'zones'", hint="declare at least one zone under `zones:`.")
        zones = self._zones(top["zones"][1]) if "zones" in top else {}
        tables = self._tables(top["tables"][1], zones, schema) if "tables" in top else {}
        reclassifications = (
            self._reclassifications(top["reclassifications"][1], zones, schema) if "reclassifications" in top else ()
        )
        if self.violations:
            return None
        return PurposePolicy(
            zones=zones,
            tables=tables,
            reclassifications=reclassifications,
            default_schema=schema,
            default_dialect=self.dialect,
            source=self.source,
        )

    def _schema(self, node: yaml.Node) -> str | None:
        value = self.text(node, "default_schema")
        if value is None:
            return None
        try:
            parts = _split_identifier(value)
        except ValueError:
            parts = []
        if len(parts) != 1 or _is_glob(parts[0]):
            self.error(node, "default_schema must be a single schema name")
            return None
        return parts[0]

    def _zones(self, node: yaml.Node) -> dict[str, Zone]:
        entries = self.mapping(node, "'zones'", None)
        raw: dict[str, tuple[frozenset[str] | Literal["*"], ZoneMode, yaml.Node, list[tuple[str, yaml.Node]]]] = {}
        for name, (key_node, value_node) in entries.items():
            if not _ZONE_NAME_RE.match(name):
                self.error(key_node, f"zone name '{name}' must be an identifier (letters, digits, underscores)")
                continue
            spec = self.mapping(value_node, f"zone {name}", _ZONE_KEYS)
            if "permits" not in spec:
                hint = f'add `permits: [{name}]` or `permits: "*"`.'
                self.error(key_node, f"zone {name} has no 'permits'", hint=hint)
                continue
            permits_node = spec["permits"][1]
            items: list[tuple[str, yaml.Node]] = []
            permits: frozenset[str] | Literal["*"]
            if isinstance(permits_node, yaml.ScalarNode) and self.scalar(permits_node) == "*":
                permits = "*"
            else:
                listed = self.string_list(permits_node, f"permits of zone {name}")
                if listed is None:
                    continue
                items = listed
                permits = frozenset(z for z, _ in items)
            mode: ZoneMode = "enforce"
            if "mode" in spec:
                value = self.scalar(spec["mode"][1])
                if value not in _ZONE_MODES:
                    self.error(spec["mode"][1], f"mode of zone {name} must be 'enforce' or 'log'")
                    continue
                mode = value
            raw[name] = (permits, mode, key_node, items)
        for name, (permits, _mode, key_node, items) in raw.items():
            for permitted, item_node in items:
                if permitted == "*":
                    self.error(item_node, f'zone {name}: write `permits: "*"` instead of listing \'*\'')
                elif permitted not in entries:
                    self.error(item_node, f"zone {name} permits unknown zone '{permitted}'")
            if permits != "*" and name not in permits:
                self.error(key_node, f"zone {name} does not permit itself", hint=f"add {name} to its permits list.")
        return {name: Zone(name, permits, mode) for name, (permits, mode, _k, _i) in raw.items()}

    def _tables(self, node: yaml.Node, zones: Mapping[str, Zone], schema: str) -> dict[str, frozenset[str] | None]:
        tables: dict[str, frozenset[str] | None] = {}
        lines: dict[str, yaml.Node] = {}
        for key, (key_node, value_node) in self.mapping(node, "'tables'", None).items():
            try:
                name = _normalize_key(key, schema, self.dialect)
            except ValueError:
                self.error(key_node, f"'{key}' is not a table name or pattern")
                continue
            if name in tables:
                first = lines[name].start_mark.line + 1
                self.error(key_node, f"table '{name}' is declared twice (first at line {first})", table=name)
                continue
            spec = self.mapping(value_node, f"table {name}", _TABLE_KEYS)
            label: frozenset[str] | None = None
            if "zones" in spec:
                listed = self.string_list(spec["zones"][1], f"zones of table {name}")
                if listed is None:
                    continue
                for zone, zone_node in listed:
                    if zone not in zones:
                        self.error(zone_node, f"table {name} uses unknown zone '{zone}'", table=name)
                label = frozenset(z for z, _ in listed)
            tables[name] = label
            lines[name] = key_node
        globs = sorted(t for t in tables if _is_glob(t))
        for i, a in enumerate(globs):
            for b in globs[i + 1 :]:
                if tables[a] != tables[b] and _globs_overlap(a, b):
                    later = max(lines[a], lines[b], key=lambda n: n.start_mark.line)
                    self.error(
                        later,
                        f"globs '{a}' and '{b}' overlap but declare different zones",
                        hint="make the patterns disjoint or give them the same zones.",
                        table=b,
                    )
        return tables

    def _reclassifications(
        self, node: yaml.Node, zones: Mapping[str, Zone], schema: str
    ) -> tuple[Reclassification, ...]:
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "'reclassifications' must be a list")
            return ()
        out: list[Reclassification] = []
        seen: dict[tuple[str, str], int] = {}
        for item in node.value:
            spec = self.mapping(item, "a reclassification", _RECLASS_KEYS)
            missing = [k for k in _RECLASS_KEYS if k not in spec]
            if missing:
                self.error(item, f"reclassification is missing {', '.join(missing)}")
                continue
            notebook = self.text(spec["notebook"][1], "reclassification 'notebook'")
            output_text = self.text(spec["output"][1], "reclassification 'output'")
            justification = self.text(spec["justification"][1], "reclassification 'justification'")
            approved_by = self.text(spec["approved_by"][1], "reclassification 'approved_by'")
            drop = self.string_list(spec["drop"][1], "reclassification 'drop'")
            output = None
            if output_text is not None:
                try:
                    output = normalize_table_name(output_text, schema, self.dialect)
                except ValueError:
                    self.error(spec["output"][1], f"'{output_text}' is not a table name")
                else:
                    if _is_glob(output):
                        detail = f"reclassification output '{output}' must be one table, not a glob"
                        self.error(spec["output"][1], detail)
                        output = None
            if drop is not None:
                if not drop:
                    self.error(spec["drop"][1], "reclassification 'drop' must name at least one zone")
                for zone, zone_node in drop:
                    if zone not in zones:
                        self.error(zone_node, f"reclassification drops unknown zone '{zone}'", table=output)
            if notebook is not None and self.notebooks is not None and notebook not in self.notebooks:
                self.error(
                    spec["notebook"][1],
                    f"reclassification names unknown notebook '{notebook}'",
                    hint="use a schedule entry name or a notebook file stem.",
                    table=output,
                )
            if notebook is None or output is None or justification is None or approved_by is None or not drop:
                continue
            key = (notebook, output)
            if key in seen:
                self.error(
                    item,
                    f"second reclassification for notebook '{notebook}' and output '{output}' "
                    f"(first at line {seen[key]})",
                )
                continue
            seen[key] = item.start_mark.line + 1
            out.append(Reclassification(notebook, output, frozenset(z for z, _ in drop), justification, approved_by))
        return tuple(out)


def _policy_violation(
    source: str, detail: str, *, line: int | None = None, hint: str = "", table: str | None = None
) -> ZoneViolation:
    return ZoneViolation(
        code=ViolationCode.INVALID_POLICY,
        phase="definition",
        notebook=source,
        notebook_zone="",
        table=table,
        table_zones=None,
        required_zones=None,
        hint=hint,
        notebook_path=source,
        detail=detail,
        line=line,
    )


def load_policy(path: Path, *, notebooks: Collection[str] | None = None, dialect: str | None = None
                ) -> PurposePolicy:
    """Load and validate ``purpose_zones.yaml``.

    ``dialect``: the project warehouse's, used for table names when the file sets no ``default_dialect``
    (on PostgreSQL ``"Salaries"`` and ``salaries`` are two tables and the policy may label them differently).

    Every problem (YAML syntax, unknown keys, zones that do not permit themselves, unknown zones,
    conflicting globs, bad reclassifications) becomes a PZ009 violation; all of them are raised
    together as ``PurposeZoneDefinitionError``. ``notebooks`` (schedule entry names and notebook
    stems) enables the check that reclassifications name a real notebook.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        raise PurposeZoneDefinitionError(
            [_policy_violation(source, f"cannot read the policy file ({reason})")]
        ) from err
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when present
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or type(err).__name__
        line = mark.line + 1 if mark is not None else None
        raise PurposeZoneDefinitionError(
            [_policy_violation(source, f"invalid YAML: {problem}", line=line)]
        ) from err
    reader = _PolicyReader(source, notebooks, dialect)
    policy = reader.read(root)
    if policy is None:
        raise PurposeZoneDefinitionError(reader.violations)
    return policy


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


class LabelSource(Protocol):
    """Resolves a table's current label: declared (YAML) wins over stored (label store)."""

    def __call__(self, table: str) -> Label: ...


def resolve_label(policy: PurposePolicy, table: str, stored: Mapping[str, frozenset[str]]) -> Label:
    declared = policy.declared_label(table)
    if declared is not UNKNOWN:
        return declared
    name = policy.normalize(table)
    if name in stored:
        return frozenset(stored[name])
    return UNKNOWN


def label_source(policy: PurposePolicy, stored: Mapping[str, frozenset[str]]) -> LabelSource:
    """A ``LabelSource`` over the policy and a snapshot of the label store."""
    normalised = {policy.normalize(k): frozenset(v) for k, v in stored.items()}

    def resolve(table: str) -> Label:
        return resolve_label(policy, table, normalised)

    return resolve


def output_label(
    read_labels: Iterable[frozenset[str]], notebook_zone: str, *, reclassification: Reclassification | None
) -> frozenset[str]:
    """C(O) = (⋃ labels read) ∪ {notebook zone} − the drop-set of an approved reclassification."""
    label = frozenset({notebook_zone}).union(*read_labels)
    if reclassification is not None:
        label -= reclassification.drop
    return label


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


def _did_you_mean(table: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(table, sorted(set(known)), n=1, cutoff=0.8)
    return f"did you mean '{close[0]}'? Otherwise declare" if close else "check the name, or declare"


def check_read(
    policy: PurposePolicy,
    *,
    notebook: str,
    notebook_path: str,
    notebook_zone: str,
    cell: int | None,
    table: str,
    label: Label,
    phase: Phase,
    path: tuple[str, ...] = (),
    known_tables: Iterable[str] = (),
) -> ZoneViolation | None:
    """The read rule (§5(b)): ``None`` if ``notebook_zone`` may read ``table`` labelled ``label``.

    Unknown (PZ003) and unclassified (PZ002) tables are always refused (there is no zone whose mode
    could soften it). For PZ001 the violation is enforced unless every refusing zone is in ``log`` mode.
    ``path`` is the lineage path of a computed label; ``known_tables`` feeds the "did you mean" hint.
    """
    common = dict(
        phase=phase, notebook=notebook, notebook_path=notebook_path, notebook_zone=notebook_zone, cell=cell, table=table
    )
    file_name = policy.file_name
    if label is UNKNOWN:
        known = [*policy.tables, *known_tables]
        return ZoneViolation(
            code=ViolationCode.UNKNOWN_TABLE,
            table_zones=None,
            required_zones=None,
            hint=f"{_did_you_mean(table, (t for t in known if not _is_glob(t)))} it in {file_name}.",
            **common,  # type: ignore[arg-type]
        )
    if label is None:
        return ZoneViolation(
            code=ViolationCode.UNCLASSIFIED_TABLE,
            table_zones=None,
            required_zones=None,
            hint=f"classify {table} in {file_name} (`zones: []` marks it unrestricted).",
            **common,  # type: ignore[arg-type]
        )
    refusing = sorted(z for z in label if not policy.permits(z, notebook_zone))
    if not refusing:
        return None
    denied_by = tuple((z, _permits_of(policy, z)) for z in refusing)
    undefined = [z for z, permits in denied_by if permits is None]
    aggregates = _readable_aggregates(policy, refusing, notebook_zone)
    if undefined:
        hint = f"define zone {', '.join(undefined)} in {file_name}, or stop reading {table}."
    elif aggregates:
        hint = f"read an approved aggregate (e.g. {', '.join(aggregates)}) or change the notebook's zone."
    else:
        hint = f"read only tables whose zones permit {notebook_zone}, or change the notebook's zone."
    return ZoneViolation(
        code=ViolationCode.READ_NOT_PERMITTED,
        table_zones=frozenset(label),
        required_zones=None,
        path=path,
        enforced=policy.enforces_any(refusing),
        hint=hint,
        denied_by=denied_by,
        **common,  # type: ignore[arg-type]
    )


def _readable_aggregates(policy: PurposePolicy, refusing: Iterable[str], notebook_zone: str) -> list[str]:
    """Reclassified outputs that drop a refusing zone and that ``notebook_zone`` may read."""
    refusing = frozenset(refusing)
    found = set()
    for r in policy.reclassifications:
        label = policy.declared_label(r.output)
        if r.drop & refusing and isinstance(label, frozenset) and all(policy.permits(z, notebook_zone) for z in label):
            found.add(r.output)
    return sorted(found)


def _permits_of(policy: PurposePolicy, zone: str) -> frozenset[str] | None:
    defined = policy.zones.get(zone)
    if defined is None:
        return None
    return frozenset({"*"}) if defined.permits == "*" else defined.permits


def _check_mode(mode: str) -> None:
    if mode not in WRITE_MODES:
        raise ValueError(f"unknown write mode {mode!r}; expected one of {', '.join(WRITE_MODES)}")


def check_write(
    policy: PurposePolicy,
    *,
    notebook: str,
    notebook_path: str,
    notebook_zone: str,
    cell: int | None,
    table: str,
    required: frozenset[str],
    stored: frozenset[str] | None,
    exists_unlabeled: bool,
    mode: str,
    phase: Phase,
) -> tuple[ZoneViolation | None, frozenset[str]]:
    """The write rule (§5(c)): returns (violation or None, the label the table carries after the write).

    - declared ``D``: allowed iff ``required ⊆ D``; the label stays ``D`` (never auto-widened);
    - declared without zones: PZ005 (an unclassified table cannot receive data);
    - derived with stored ``S``: ``overwrite`` → ``required``; ``append``/``overwrite_partition`` → ``S ∪ required``;
    - exists in the warehouse without any label: PZ005;
    - new table: ``required``.

    PZ004 is enforced unless every missing zone is in ``log`` mode; PZ005 is always enforced.
    """
    _check_mode(mode)
    name = policy.normalize(table)
    required = frozenset(required)
    common = dict(
        phase=phase, notebook=notebook, notebook_path=notebook_path, notebook_zone=notebook_zone, cell=cell, table=name
    )
    declared = policy.declared_label(name)
    if isinstance(declared, frozenset):
        missing = required - declared
        if not missing:
            return None, declared
        violation = ZoneViolation(
            code=ViolationCode.OUTPUT_UNDERLABELED,
            table_zones=declared,
            required_zones=required,
            enforced=policy.enforces_any(missing),
            hint=(
                f"add {', '.join(sorted(missing))} to {name} in {policy.file_name} "
                "(this restricts existing readers) or write to a new table."
            ),
            **common,  # type: ignore[arg-type]
        )
        return violation, declared
    if declared is None or (stored is None and exists_unlabeled):
        if declared is None:
            detail = f"declared in {policy.file_name} without zones"
            hint = f"classify {name} in {policy.file_name}, or write to a new table."
        else:
            detail = "exists without a label"
            hint = f"declare {name} in {policy.file_name}, or drop it so the system can label it on first write."
        violation = ZoneViolation(
            code=ViolationCode.UNCLASSIFIED_OUTPUT,
            table_zones=None,
            required_zones=required,
            hint=hint,
            detail=detail,
            **common,  # type: ignore[arg-type]
        )
        return violation, required
    if stored is not None and mode != "overwrite":
        return None, frozenset(stored) | required
    return None, required


# --------------------------------------------------------------------------------------------------
# Definition-time check over all schedule entries
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ZoneJob:
    """One schedule entry of one notebook, as the static checker sees it."""

    name: str  # schedule entry name (unique)
    notebook_path: str  # e.g. "notebooks/revenue.ipynb"
    zone: str
    reads: tuple[tuple[int, str], ...]  # (cell index, table) for every table any SQL cell reads
    writes: tuple[tuple[int, str, str], ...]  # (cell index, table, mode)
    unresolvable: tuple[tuple[int, str], ...] = ()  # (cell, parameter) for a free-string table parameter
    declared_inputs: tuple[str, ...] | None = None  # None: the notebook declares no input list (no PZ006)

    @property
    def stem(self) -> str:
        return PurePath(self.notebook_path).stem


def _normalise_job(policy: PurposePolicy, job: ZoneJob) -> ZoneJob:
    for _cell, _table, mode in job.writes:
        _check_mode(mode)
    norm = policy.normalize
    return dataclasses.replace(
        job,
        reads=tuple(sorted({(cell, norm(t)) for cell, t in job.reads})),
        writes=tuple(sorted({(cell, norm(t), mode) for cell, t, mode in job.writes})),
        unresolvable=tuple(sorted(set(job.unresolvable))),
        declared_inputs=None if job.declared_inputs is None else tuple(norm(t) for t in job.declared_inputs),
    )


def _job_reclassification(policy: PurposePolicy, job: ZoneJob, output: str) -> Reclassification | None:
    return policy.reclassification_for(job.name, output, notebook_path=job.notebook_path)


def _path_key(path: tuple[str, ...]) -> tuple[bool, int, tuple[str, ...]]:
    """Prefer a path from an upstream table over "the writer's own zone" (job, table); then shortest."""
    return (len(path) == 2, len(path), path)


@dataclasses.dataclass
class _Propagation:
    """Static labels of every table the jobs touch, computed to a fixed point."""

    policy: PurposePolicy
    jobs: list[ZoneJob]
    stored: Mapping[str, frozenset[str]]
    derived: dict[str, frozenset[str]]  # tables written by jobs and not declared: computed label
    outputs: dict[tuple[str, str], frozenset[str]]  # (job, table) -> C(O)
    provenance: dict[tuple[str, str], tuple[str, ...]]  # (derived table, zone) -> shortest lineage path

    def label(self, table: str) -> Label:
        declared = self.policy.declared_label(table)
        if declared is not UNKNOWN:
            return declared
        if table in self.derived:
            return self.derived[table]
        return self.stored.get(table, UNKNOWN)

    def reads_label(self, job: ZoneJob) -> frozenset[str]:
        labels = (self.label(t) for _cell, t in job.reads)
        return frozenset().union(*(lab for lab in labels if isinstance(lab, frozenset)))

    def source_path(self, table: str, zone: str) -> tuple[str, ...] | None:
        if table in self.derived:
            return self.provenance.get((table, zone))
        return (table,)

    def zone_path(self, job: ZoneJob, table: str, zone: str) -> tuple[str, ...] | None:
        """The lineage path explaining why ``zone`` is in ``job``'s output ``table`` (see ``_path_key``)."""
        candidates = [(job.name, table)] if zone == job.zone else []
        for _cell, read in job.reads:
            lab = self.label(read)
            if isinstance(lab, frozenset) and zone in lab:
                prefix = self.source_path(read, zone)
                if prefix is not None and table not in prefix:  # simple paths only (cycles, self-appends)
                    candidates.append(prefix + (job.name, table))
        return min(candidates, key=_path_key) if candidates else None


def _propagate(policy: PurposePolicy, jobs: list[ZoneJob], stored: Mapping[str, frozenset[str]]) -> _Propagation:
    writers: dict[str, list[tuple[ZoneJob, str]]] = {}
    for job in jobs:
        for _cell, table, mode in job.writes:
            writers.setdefault(table, []).append((job, mode))
    derived: dict[str, frozenset[str]] = {}
    for table, ws in writers.items():
        if policy.declared_label(table) is UNKNOWN:
            keeps_rows = any(mode != "overwrite" for _job, mode in ws)
            derived[table] = stored.get(table, frozenset()) if keeps_rows else frozenset()
    prop = _Propagation(policy, jobs, stored, derived, {}, {})
    changed = True
    while changed:  # labels only grow over a finite set of zones: terminates
        changed = False
        for job in jobs:
            read = prop.reads_label(job)
            for _cell, table, _mode in job.writes:
                c = output_label([read], job.zone, reclassification=_job_reclassification(policy, job, table))
                prop.outputs[(job.name, table)] = c
                if table in derived and not c <= derived[table]:
                    derived[table] = derived[table] | c
                    changed = True
    for table, label in derived.items():
        for zone in label - frozenset().union(*(prop.outputs[(j.name, table)] for j, _m in writers[table])):
            prop.provenance[(table, zone)] = (table,)  # carried over from the stored label (kept rows)
    for _ in range(len(derived) + 1):  # Bellman-Ford over shortest paths
        changed = False
        for job in jobs:
            for _cell, table, _mode in job.writes:
                if table not in derived:
                    continue
                for zone in sorted(prop.outputs[(job.name, table)]):
                    best = prop.zone_path(job, table, zone)
                    current = prop.provenance.get((table, zone))
                    if best is not None and (current is None or _path_key(best) < _path_key(current)):
                        prop.provenance[(table, zone)] = best
                        changed = True
        if not changed:
            break
    return prop


def _longest(paths: Mapping[str, tuple[str, ...] | None]) -> tuple[str, ...]:
    """The most informative path: the zone whose origin is furthest upstream (ties: first zone)."""
    best: tuple[str, ...] = ()
    for zone in sorted(paths):
        path = paths[zone]
        if path is not None and len(path) > len(best):
            best = path
    return best


def _undefined_zone(policy: PurposePolicy, job: ZoneJob) -> ZoneViolation:
    defined = ", ".join(sorted(policy.zones)) or "none"
    return ZoneViolation(
        code=ViolationCode.INVALID_POLICY,
        phase="definition",
        notebook=job.name,
        notebook_zone=job.zone,
        table=None,
        table_zones=None,
        required_zones=None,
        notebook_path=job.notebook_path,
        detail=f"uses a zone that {policy.file_name} does not define",
        hint=f"use a defined zone ({defined}) or add {job.zone} under `zones:` in {policy.file_name}.",
    )


def _check_job_reads(policy: PurposePolicy, prop: _Propagation, job: ZoneJob) -> list[ZoneViolation]:
    out: list[ZoneViolation] = []
    known = [*prop.derived, *prop.stored]
    own_writes = {t for _c, t, _m in job.writes}
    for cell, table in job.reads:
        label = prop.label(table)
        path: tuple[str, ...] = ()
        if table in prop.derived and isinstance(label, frozenset):
            refusing = [z for z in label if not policy.permits(z, job.zone)]
            path = _longest({z: prop.provenance.get((table, z)) for z in refusing})
        v = check_read(
            policy,
            notebook=job.name,
            notebook_path=job.notebook_path,
            notebook_zone=job.zone,
            cell=cell,
            table=table,
            label=label,
            phase="definition",
            path=path,
            known_tables=known,
        )
        if v is not None:
            out.append(v)
        if job.declared_inputs is not None and table not in job.declared_inputs and table not in own_writes:
            out.append(
                ZoneViolation(
                    code=ViolationCode.UNDECLARED_INPUT,
                    phase="definition",
                    notebook=job.name,
                    notebook_zone=job.zone,
                    table=table,
                    table_zones=None,
                    required_zones=None,
                    cell=cell,
                    notebook_path=job.notebook_path,
                    hint=f"add {table} to the notebook's declared inputs.",
                )
            )
    return out


def _check_job_writes(policy: PurposePolicy, prop: _Propagation, job: ZoneJob) -> list[ZoneViolation]:
    out: list[ZoneViolation] = []
    for cell, table, mode in job.writes:
        required = prop.outputs[(job.name, table)]
        v, _label = check_write(
            policy,
            notebook=job.name,
            notebook_path=job.notebook_path,
            notebook_zone=job.zone,
            cell=cell,
            table=table,
            required=required,
            stored=None,
            exists_unlabeled=False,
            mode=mode,
            phase="definition",
        )
        if v is not None and v.code is ViolationCode.OUTPUT_UNDERLABELED:
            missing = required - (v.table_zones or frozenset())
            path = _longest({z: prop.zone_path(job, table, z) for z in missing})
            if len(path) > 3:  # multi-hop only: a direct read (source -> job -> output) is obvious
                v = dataclasses.replace(v, path=path)
        if v is not None:
            out.append(v)
    return out


def _unresolvable(job: ZoneJob, cell: int, parameter: str, *, strict: bool) -> ZoneViolation:
    return ZoneViolation(
        code=ViolationCode.UNRESOLVABLE_TABLE_NAME,
        phase="definition",
        notebook=job.name,
        notebook_zone=job.zone,
        table=None,
        table_zones=None,
        required_zones=None,
        cell=cell,
        notebook_path=job.notebook_path,
        parameter=parameter,
        enforced=strict,
        hint=f"give '{parameter}' a finite domain (an enum or Literal choices) so every value is checked here.",
    )


def _conflicting_writers(policy: PurposePolicy, prop: _Propagation) -> list[ZoneViolation]:
    overwriters: dict[str, dict[str, tuple[ZoneJob, int]]] = {}
    for job in prop.jobs:
        for cell, table, mode in job.writes:
            if mode == "overwrite" and table in prop.derived:
                overwriters.setdefault(table, {}).setdefault(job.name, (job, cell))
    out: list[ZoneViolation] = []
    for table, by_job in sorted(overwriters.items()):
        labels = {name: prop.outputs[(name, table)] for name in by_job}
        if len(set(labels.values())) < 2:
            continue
        involved = frozenset().union(*labels.values())
        for name, (job, cell) in sorted(by_job.items()):
            others = tuple((o, labels[o]) for o in sorted(labels) if labels[o] != labels[name])
            out.append(
                ZoneViolation(
                    code=ViolationCode.CONFLICTING_WRITERS,
                    phase="definition",
                    notebook=name,
                    notebook_zone=job.zone,
                    table=table,
                    table_zones=None,
                    required_zones=labels[name],
                    enforced=policy.enforces_any(involved),
                    cell=cell,
                    notebook_path=job.notebook_path,
                    conflicting_writers=others,
                    hint=(
                        f"write to separate tables, use append mode, or declare {table} in "
                        f"{policy.file_name} with zones covering every writer."
                    ),
                )
            )
    return out


def _check_reclassifications(policy: PurposePolicy, prop: _Propagation) -> list[ZoneViolation]:
    out: list[ZoneViolation] = []
    for r in policy.reclassifications:
        matching = [j for j in prop.jobs if r.notebook in (j.name, j.stem)]
        if not matching:
            detail = f"reclassification of '{r.output}' names unknown notebook '{r.notebook}'"
            hint = "use a schedule entry name or a notebook file stem."
            out.append(_policy_violation(policy.source, detail, table=r.output, hint=hint))
            continue
        writers = [j for j in matching if any(t == r.output for _c, t, _m in j.writes)]
        if not writers:
            detail = f"reclassification: notebook '{r.notebook}' does not write '{r.output}'"
            out.append(_policy_violation(policy.source, detail, table=r.output))
            continue
        present = frozenset().union(*(prop.reads_label(j) | {j.zone} for j in writers))
        absent = r.drop - present
        if absent:
            detail = (
                f"reclassification of '{r.output}' by '{r.notebook}' drops {_fmt_zones(absent)}, "
                f"which the output does not carry (it carries {_fmt_zones(present)})"
            )
            hint = "drop only zones the output carries."
            out.append(_policy_violation(policy.source, detail, table=r.output, hint=hint))
    return out


def check_jobs(
    policy: PurposePolicy,
    jobs: Sequence[ZoneJob],
    *,
    stored: Mapping[str, frozenset[str]] = types.MappingProxyType({}),
    strict: bool = False,
) -> tuple[list[ZoneViolation], dict[str, frozenset[str]]]:
    """The definition-time check over the whole project.

    Propagates labels over the DAG of jobs to a fixed point (cycles and self-appends included),
    checks every read against current labels (declared, else computed, else stored), every write
    against declared labels, conflicting overwriters, reclassification references and free-string
    table parameters (PZ007: an error when ``strict``, else a warning).

    Every read contributes its label to the output, including refused reads, so the computed label
    is what the output would carry if the run went ahead (as in ``log`` mode).

    Returns the violations sorted by notebook, code, cell, table, and the label every written table
    carries: the declared label for declared tables, the computed one for derived tables (tables
    declared without zones are left out: nothing may be written to them).
    """
    duplicates = sorted(name for name, n in collections.Counter(j.name for j in jobs).items() if n > 1)
    if duplicates:
        raise ValueError(f"schedule entry names must be unique: {', '.join(duplicates)}")
    normalised = sorted((_normalise_job(policy, j) for j in jobs), key=lambda j: j.name)
    stored_labels = {policy.normalize(k): frozenset(v) for k, v in stored.items()}
    prop = _propagate(policy, normalised, stored_labels)

    violations: list[ZoneViolation] = []
    for job in normalised:
        if job.zone not in policy.zones:
            violations.append(_undefined_zone(policy, job))
            continue
        violations.extend(_check_job_reads(policy, prop, job))
        violations.extend(_check_job_writes(policy, prop, job))
        violations.extend(_unresolvable(job, cell, parameter, strict=strict) for cell, parameter in job.unresolvable)
    violations.extend(_conflicting_writers(policy, prop))
    violations.extend(_check_reclassifications(policy, prop))

    labels: dict[str, frozenset[str]] = {}
    for job in normalised:
        for _cell, table, _mode in job.writes:
            current = prop.label(table)
            if isinstance(current, frozenset):
                labels[table] = current
    return sorted(violations, key=ZoneViolation.sort_key), dict(sorted(labels.items()))

