"""Step 2: the reviewed schedule spec (``notebooks/<stem>.bento.yaml``) and the frozen per-schedule spec.

A notebook without a sidecar spec is a draft: it is listed by ``check`` and skipped by the factory.
Every field is documented in the README ("Schedule spec").
"""

import dataclasses
import datetime as _dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from dagster_bento.errors import Problem
from dagster_bento.notebook import WriteMode

SPEC_SUFFIX = ".bento.yaml"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = {"owners", "zone", "partitioned", "start_date", "schedules", "description", "timeout_seconds",
             "memory_limit_mb", "retries", "exemptions", "tags", "sandbox", "data_format"}
_ENTRY_KEYS = {"name", "parameters", "cron", "timezone", "trigger", "description"}
TRIGGERS = ("upstream_landed",)


@dataclasses.dataclass(frozen=True)
class ScheduleEntry:
    name: str
    parameters: Mapping[str, Any]
    cron: str | None = None
    timezone: str = "UTC"
    trigger: Literal["upstream_landed"] | None = None
    description: str | None = None


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    path: str
    sha256: str
    owners: tuple[str, ...]
    zone: str
    schedules: tuple[ScheduleEntry, ...]
    partitioned: Literal["daily"] | None = None
    start_date: str | None = None
    description: str | None = None
    timeout_seconds: float | None = None
    memory_limit_mb: int | None = None
    retries: int = 0
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    sandbox: str | None = None
    data_format: Literal["parquet", "arrow", "csv"] | None = None
    exemptions: tuple[Any, ...] = ()  # raw entries; eligibility.parse_exemptions validates them


def spec_path_for(notebook: Path) -> Path:
    return notebook.with_name(notebook.stem + SPEC_SUFFIX)


def load_schedule_spec(path: Path, display: str, notebook: str) -> tuple[ScheduleSpec | None, list[Problem]]:
    """Parse and validate a sidecar spec. Problems are reported against the notebook (cell None)."""
    import hashlib

    problems: list[Problem] = []

    def bad(msg: str) -> None:
        problems.append(Problem(notebook, None, "BENTO009", f"{display}: {msg}"))

    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        bad(f"is not valid YAML{where}: {getattr(err, 'problem', err)}")
        return None, problems
    except OSError as err:
        bad(f"cannot be read: {err}")
        return None, problems
    if not isinstance(data, dict):
        bad("must be a mapping with owners, zone and schedules")
        return None, problems
    for key in sorted(set(data) - _TOP_KEYS):
        bad(f"unknown field {key!r}; allowed fields: {', '.join(sorted(_TOP_KEYS))}")
    owners = data.get("owners")
    if not isinstance(owners, list) or not owners or not all(isinstance(o, str) and o for o in owners):
        bad("'owners' is required: a list of emails or team:<name> entries, notified when a run fails")
        owners = []
    zone = data.get("zone")
    if not isinstance(zone, str) or not zone:
        bad("'zone' is required: the purpose zone this notebook runs in (see purpose_zones.yaml)")
        zone = ""
    partitioned = data.get("partitioned")
    if partitioned not in (None, "daily"):
        bad(f"'partitioned' is {partitioned!r}; the supported value is 'daily'")
        partitioned = None
    start_date = data.get("start_date")
    if isinstance(start_date, _dt.date):
        start_date = start_date.isoformat()
    if start_date is not None:
        try:
            _dt.date.fromisoformat(str(start_date))
        except ValueError:
            bad(f"'start_date' {start_date!r} is not a YYYY-MM-DD date")
            start_date = None
    if partitioned and not start_date:
        bad("'start_date' (YYYY-MM-DD) is required when 'partitioned' is set")
    entries = _schedule_entries(data.get("schedules"), bad)
    timeout = data.get("timeout_seconds")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        bad("'timeout_seconds' must be a positive number")
        timeout = None
    memory = data.get("memory_limit_mb")
    if memory is not None and (not isinstance(memory, int) or memory < 128):
        bad("'memory_limit_mb' must be an integer ≥ 128")
        memory = None
    retries = data.get("retries", 0)
    if not isinstance(retries, int) or retries < 0:
        bad("'retries' must be a non-negative integer")
        retries = 0
    tags = data.get("tags") or {}
    if not isinstance(tags, dict):
        bad("'tags' must be a mapping of strings")
        tags = {}
    # Owners and tags become Dagster asset owners and tags: judge them by Dagster's own rules here, so
    # `check` reports what would otherwise fail the definitions.
    for problem in _dagster_rules(owners if isinstance(owners, list) else [], tags):
        bad(problem)
    sandbox = data.get("sandbox")
    if sandbox == "none":
        bad("'sandbox: none' cannot be set by a notebook's spec; an operator sets it for local development "
            "(bento.yaml sandbox: none or BENTO_SANDBOX=none)")
        sandbox = None
    elif sandbox not in (None, "bwrap", "docker"):
        bad(f"'sandbox' is {sandbox!r}; use bwrap or docker")
        sandbox = None
    data_format = data.get("data_format")
    if data_format not in (None, "parquet", "arrow", "csv"):
        bad(f"'data_format' is {data_format!r}; use parquet (default), arrow or csv")
        data_format = None
    exemptions = data.get("exemptions") or []
    if not isinstance(exemptions, list):
        bad("'exemptions' must be a list of {rule, reason, cells}")
        exemptions = []
    if problems:
        return None, problems
    spec = ScheduleSpec(
        path=display, sha256=hashlib.sha256(raw).hexdigest(), owners=tuple(owners), zone=zone,
        schedules=tuple(entries), partitioned=partitioned, start_date=start_date,
        description=data.get("description"), timeout_seconds=timeout, memory_limit_mb=memory,
        retries=retries, tags={str(k): str(v) for k, v in tags.items()}, sandbox=sandbox,
        data_format=data_format, exemptions=tuple(exemptions))
    return spec, problems


def _schedule_entries(raw: Any, bad: Any) -> list[ScheduleEntry]:
    if not isinstance(raw, list) or not raw:
        bad("'schedules' is required: a list with at least one entry {name, parameters, cron | trigger}")
        return []
    entries: list[ScheduleEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            bad(f"schedules[{i}] must be a mapping")
            continue
        for key in sorted(set(item) - _ENTRY_KEYS):
            bad(f"schedules[{i}] has unknown field {key!r}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            bad(f"schedules[{i}].name {name!r} must be an identifier (letters, digits, underscores)")
            continue
        if name in seen:
            bad(f"schedule name {name!r} is used twice in this file")
        seen.add(name)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            bad(f"schedule {name!r}: 'parameters' must be a mapping")
            params = {}
        for key, value in params.items():
            if not _plain_value(value):
                bad(f"schedule {name!r}: parameter {key!r} = {value!r} is a {type(value).__name__}; parameters are "
                    "strings, numbers, booleans, null or lists/mappings of them (quote dates: '2026-01-01')")
        cron, trigger = item.get("cron"), item.get("trigger")
        if cron is not None and trigger is not None:
            bad(f"schedule {name!r} sets both 'cron' and 'trigger'; choose one")
        if cron is not None and not _valid_cron(str(cron)):
            bad(f"schedule {name!r}: cron {cron!r} is not a valid 5-field cron expression")
        if trigger is not None and trigger not in TRIGGERS:
            bad(f"schedule {name!r}: trigger {trigger!r} is not supported; use {', '.join(TRIGGERS)}")
        tz = item.get("timezone", "UTC")
        if not _valid_timezone(str(tz)):
            bad(f"schedule {name!r}: timezone {tz!r} is not an IANA time zone (e.g. Europe/London)")
        entries.append(ScheduleEntry(name, dict(params), str(cron) if cron else None, str(tz), trigger,
                                     item.get("description")))
    return entries


def _plain_value(value: Any) -> bool:
    """JSON-like values only: they are injected into the notebook as Python literals."""
    import math

    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_value(v) for k, v in value.items())
    return False


_CRON_ATOM = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
_CRON_FIELD = re.compile(rf"^{_CRON_ATOM}(,{_CRON_ATOM})*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _valid_cron(expr: str) -> bool:
    """A 5-field cron expression with numbers (or month/day names) inside each field's range."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, _CRON_RANGES):
        if not _CRON_FIELD.match(field):
            return False
        for number in re.findall(r"(?<![/0-9])[0-9]+", field):
            if not low <= int(number) <= high:
                return False
    return True


def _valid_timezone(tz: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class ResolvedSqlCell:
    index: int
    output: str
    template: str
    sql: str  # rendered with the schedule's parameters (definition-time ds)
    tables: tuple[str, ...]
    column_lineage: Mapping[str, tuple[tuple[str, str], ...]]
    output_columns: tuple[str, ...]
    dialect: str | None = None


@dataclasses.dataclass(frozen=True)
class ResolvedWriteCell:
    index: int
    input: str
    table_template: str
    table: str  # rendered, normalised "schema.table"
    mode: WriteMode
    partition_column: str = "ds"


@dataclasses.dataclass(frozen=True)
class BentoJob:
    """One schedule entry of one notebook: what runs, what it reads, what it writes. Immutable."""

    name: str
    notebook_path: str  # relative to the project dir
    notebook_sha256: str
    spec: ScheduleSpec
    entry: ScheduleEntry
    parameters: Mapping[str, Any]  # notebook defaults overridden by the entry's parameters
    sql_cells: tuple[ResolvedSqlCell, ...]
    write_cells: tuple[ResolvedWriteCell, ...]
    parameters_cell: int | None
    code_version: str
    default_schema: str = "main"  # used to normalise table names; the run renders with the same
    dialect: str | None = None

    @property
    def tables_read(self) -> tuple[str, ...]:
        return tuple(sorted({t for c in self.sql_cells for t in c.tables}))

    @property
    def tables_written(self) -> tuple[str, ...]:
        return tuple(w.table for w in self.write_cells)

    @property
    def zone(self) -> str:
        return self.spec.zone

    @property
    def display_parameters(self) -> dict[str, Any]:
        """Parameters for metadata and lineage (computed defaults shown as '<computed>')."""
        return {k: (v if _plain_value(v) else repr(v)) for k, v in self.parameters.items()}

    @property
    def owners(self) -> tuple[str, ...]:
        return self.spec.owners


def _dagster_rules(owners: list[Any], tags: Mapping[Any, Any]) -> list[str]:
    import dagster as dg

    problems = []
    for owner in owners:
        try:
            dg.AssetSpec("bento_spec_check", owners=[str(owner)])
        except Exception as err:  # noqa: BLE001 -- Dagster's message says what a valid owner is
            problems.append(f"owner {owner!r} is not valid in Dagster ({str(err).splitlines()[0]}); use an e-mail "
                            "address or team:<name>")
    for key, value in tags.items():
        try:
            dg.AssetSpec("bento_spec_check", tags={str(key): str(value)})
        except Exception as err:  # noqa: BLE001
            problems.append(f"tag {key!r}: {value!r} is not valid in Dagster ({str(err).splitlines()[0]}); keys and "
                            "values are letters, digits, '-', '_' and '.', at most 63 characters")
    return problems
