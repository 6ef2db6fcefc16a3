"""Load a dagster-bento project: notebooks + sidecar specs + policy → `BentoJob`s and every problem.

Nothing here imports Dagster definitions machinery; the factory (`assets.py`) only wires the result.
Parsing is cached by file hash (``.bento/cache``), so a large project loads in the time it takes to
hash its files.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dagster_bento import eligibility, zones
from dagster_bento.errors import DagsterBentoProjectError, Problem
from dagster_bento.notebook import ComputedDefault, ParsedNotebook, parse_notebook
from dagster_bento.spec import (
    BentoJob,
    ResolvedSqlCell,
    ResolvedWriteCell,
    ScheduleEntry,
    ScheduleSpec,
    load_schedule_spec,
    spec_path_for,
)

NOTEBOOKS_DIR = "notebooks"
POLICY_FILE = "purpose_zones.yaml"
CONFIG_FILE = "bento.yaml"
CACHE_VERSION = "3"
# Schemas no write cell may target: our bookkeeping (labels, landings) and the warehouses' catalogs.
RESERVED_SCHEMAS = frozenset({"bento_meta", "information_schema", "pg_catalog", "pg_toast", "system", "temp"})
# `ds` at definition time: a fixed date so rendering (and the code version) is stable.
STATIC_DS = "2000-01-01"
_CONFIG_KEYS = {"warehouse_url", "default_schema", "dialect", "artifacts_dir", "sandbox", "data_format",
                "timeout_seconds", "memory_limit_mb", "lineage", "strict_zones", "notebooks_dir", "notifications",
                "introspect_schema", "kernel_pool", "run_root", "max_output_mb", "max_output_decoded_mb", "strict_loading"}


@dataclasses.dataclass(frozen=True)
class ProjectConfig:
    """``bento.yaml`` at the project root; every field is optional (README "Project config")."""

    warehouse_url: str | None = None
    default_schema: str | None = None
    dialect: str | None = None
    artifacts_dir: str = ".bento/artifacts"
    sandbox: str = "bwrap"
    data_format: str = "parquet"
    timeout_seconds: float = 1800.0
    memory_limit_mb: int = 4096
    lineage: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    strict_zones: bool = False
    notebooks_dir: str = NOTEBOOKS_DIR
    notifications: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    introspect_schema: bool = False  # read column names/types from the warehouse at load (for lineage)
    kernel_pool: str = "auto"  # pre-started kernels: auto (the project's pool if running), a socket path, off
    run_root: str | None = None  # parent of the per-run work directories (default: the system temp dir)
    max_output_mb: int | None = None  # largest output file on disk (None: 10240)
    max_output_decoded_mb: int | None = None  # largest output once decoded (None: 4096)
    strict_loading: bool = False  # any problem fails the whole code location (default: broken notebooks contained)


@dataclasses.dataclass(frozen=True)
class BentoProject:
    project_dir: Path
    config: ProjectConfig
    default_schema: str
    dialect: str | None
    notebooks: tuple[ParsedNotebook, ...]
    jobs: tuple[BentoJob, ...]
    drafts: tuple[str, ...]
    policy: Any  # zones.PurposePolicy | None
    problems: tuple[Problem, ...]
    computed_labels: Mapping[str, frozenset[str]]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def raise_on_errors(self) -> None:
        if self.errors:
            raise DagsterBentoProjectError(self.errors)

    @property
    def upstream_tables(self) -> tuple[str, ...]:
        written = {t for j in self.jobs for t in j.tables_written}
        return tuple(sorted({t for j in self.jobs for t in j.tables_read} - written))

    def job(self, name: str) -> BentoJob:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)


def load_config(project_dir: Path) -> tuple[ProjectConfig, list[Problem]]:
    path = project_dir / CONFIG_FILE
    if not path.exists():
        return ProjectConfig(), []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        return ProjectConfig(), [Problem(CONFIG_FILE, None, "BENTO009", f"is not valid YAML: {err}")]
    if not isinstance(data, dict):
        return ProjectConfig(), [Problem(CONFIG_FILE, None, "BENTO009", "must be a mapping")]
    problems = [Problem(CONFIG_FILE, None, "BENTO009",
                        f"unknown field {k!r}; allowed: {', '.join(sorted(_CONFIG_KEYS))}")
                for k in sorted(set(data) - _CONFIG_KEYS)]
    known = {k: v for k, v in data.items() if k in _CONFIG_KEYS}
    for key, allowed in (("sandbox", ("bwrap", "docker", "none")), ("data_format", ("parquet", "arrow", "csv"))):
        if key in known and known[key] not in allowed:
            problems.append(Problem(CONFIG_FILE, None, "BENTO009",
                                    f"{key} is {known[key]!r}; use one of {', '.join(allowed)}"))
            del known[key]
    for key, kinds, what in (("timeout_seconds", (int, float), "a positive number of seconds"),
                             ("memory_limit_mb", (int,), "a positive whole number of MB"),
                             ("max_output_mb", (int,), "a positive whole number of MiB"),
                             ("max_output_decoded_mb", (int,), "a positive whole number of MiB"),
                             ("run_root", (str,), "a directory path"),
                             ("strict_loading", (bool,), "true or false"),
                             ("strict_zones", (bool,), "true or false")):
        value = known.get(key)
        if value is None:
            continue
        bad = not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)
        if not bad and kinds != (bool,) and kinds != (str,):
            bad = not value > 0
        if bad:
            problems.append(Problem(CONFIG_FILE, None, "BENTO009", f"{key} is {value!r}; use {what}"))
            del known[key]
    if isinstance(known.get("kernel_pool"), bool):  # YAML reads `off`/`on` as booleans
        known["kernel_pool"] = "auto" if known["kernel_pool"] else "off"
    elif "kernel_pool" in known and not isinstance(known["kernel_pool"], str):
        problems.append(Problem(CONFIG_FILE, None, "BENTO009",
                                "kernel_pool must be auto, off or the path of a kernel pool socket"))
        del known["kernel_pool"]
    return ProjectConfig(**known), problems


def dialect_for_url(url: str | None) -> str | None:
    if not url:
        return "duckdb"
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    return {"duckdb": "duckdb", "postgresql": "postgres", "postgres": "postgres"}.get(scheme, scheme)


# ---------------------------------------------------------------------------------------------
# rendering


# Bounds of template rendering (the orchestrator renders every template at each definitions load):
# output size, wall-clock time and loop iterations. A template beyond them is refused (BENTO005).
MAX_RENDERED_CHARS = 1_000_000
MAX_RENDER_SECONDS = 2.0
MAX_LOOP_ITERATIONS = 100_000
MAX_LOOP_DEPTH = 3
# Filters whose output is bounded by their input; ``replace`` and ``join`` are size-checked wrappers.
_SAFE_FILTERS = frozenset({
    "lower", "upper", "title", "capitalize", "trim", "default", "d", "int", "float", "string", "length",
    "count", "first", "last", "join", "replace", "list", "sort", "unique", "reverse", "abs", "round", "tojson",
    "min", "max", "sum", "select", "reject", "map", "dictsort", "items", "urlencode", "striptags",
})


@functools.cache
def _jinja() -> Any:
    """Templates come from notebooks and are rendered by the orchestrator (which holds credentials): the
    sandboxed environment refuses attribute access to internals (``cycler.__init__.__globals__...``), and
    `_check_template` keeps templates to constructs whose cost is bounded (`render` bounds the rest).

    jinja2, sqlglot and nbformat are imported only when a notebook is parsed or rendered: loading
    definitions from a warm parse cache (every Dagster process does, twice per run) needs none of them."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                        keep_trailing_newline=True)
    plain_replace, plain_join = env.filters["replace"], env.filters["join"]

    def bounded_replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        s, old, new = str(s), str(old), str(new)
        hits = (len(s) + 1) if not old else s.count(old)
        _check_size(len(s) + hits * max(0, len(new) - len(old)), "replace")
        return plain_replace(eval_ctx, s, old, new, count)

    def bounded_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        items = list(value)
        _check_size(sum(len(str(i)) for i in items) + len(str(d)) * len(items), "join")
        return plain_join(eval_ctx, items, d, attribute)

    bounded_replace.jinja_pass_arg = plain_replace.jinja_pass_arg  # type: ignore[attr-defined]
    bounded_join.jinja_pass_arg = plain_join.jinja_pass_arg  # type: ignore[attr-defined]
    env.filters = {k: v for k, v in env.filters.items() if k in _SAFE_FILTERS}
    env.filters.update(replace=bounded_replace, join=bounded_join)
    env.globals = {}  # no range(), lipsum(), dict(), cycler(), joiner(), namespace()
    return env


class RenderError(ValueError):
    pass


def _check_size(size: int, what: str) -> None:
    if size > MAX_RENDERED_CHARS:
        raise RenderError(f"template refused: {what} would produce {size:,} characters, more than the "
                          f"{MAX_RENDERED_CHARS:,} a rendered SQL cell or table name may have")


def _check_template(ast: Any) -> None:
    """Refuse constructs whose cost is not bounded by the template and parameters: calls (methods,
    ``range``), ``*``/``**``/``%`` (``'x' * 10**9``), assignments (doubling in a loop), macros, includes,
    loops over anything but a parameter, and loops nested deeper than `MAX_LOOP_DEPTH`."""
    from jinja2 import nodes

    allowed = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const, nodes.Filter,
               nodes.Concat, nodes.For, nodes.If, nodes.Compare, nodes.Operand, nodes.And, nodes.Or, nodes.Not,
               nodes.Getattr, nodes.Getitem, nodes.CondExpr, nodes.List, nodes.Tuple, nodes.Test, nodes.Keyword,
               nodes.Add, nodes.Sub, nodes.Neg, nodes.Pos, nodes.Dict, nodes.Pair, nodes.Div, nodes.FloorDiv,
               nodes.Slice)
    names = {nodes.Mul: "'*'", nodes.Pow: "'**'", nodes.Mod: "'%'", nodes.Call: "a function or method call",
             nodes.Assign: "{% set %}", nodes.AssignBlock: "{% set %}", nodes.Macro: "{% macro %}",
             nodes.CallBlock: "{% call %}", nodes.Include: "{% include %}", nodes.Import: "{% import %}",
             nodes.FromImport: "{% from %}", nodes.Extends: "{% extends %}", nodes.FilterBlock: "{% filter %}"}

    def visit(node: Any, depth: int) -> None:
        if not isinstance(node, allowed):
            what = next((v for k, v in names.items() if isinstance(node, k)), type(node).__name__)
            raise RenderError(f"template refused: {what} is not allowed in a placeholder; use parameters, "
                              "filters such as {{ name | lower }}, and {% for %}/{% if %} over parameters")
        if isinstance(node, nodes.Filter) and node.name not in _SAFE_FILTERS:
            raise RenderError(f"template refused: filter '{node.name}' is not allowed; allowed filters: "
                              f"{', '.join(sorted(_SAFE_FILTERS))}")
        if isinstance(node, nodes.For):
            if not _is_parameter(node.iter):
                raise RenderError("template refused: a {% for %} loop may only iterate over a parameter "
                                  "(e.g. {% for r in regions %} or {% for r in cfg.regions %}), not a slice, "
                                  "a filter or an expression")
            depth += 1
            if depth > MAX_LOOP_DEPTH:
                raise RenderError(f"template refused: {{% for %}} loops nested deeper than {MAX_LOOP_DEPTH}")
        for child in node.iter_child_nodes():
            visit(child, depth)

    visit(ast, 0)


def _is_parameter(node: Any) -> bool:
    """A parameter or an item/attribute of one by a constant key: what `_budgeted` wraps (a slice or a
    filter would return an unwrapped copy whose iteration the budget does not count)."""
    from jinja2 import nodes

    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, nodes.Const):
            return False
        node = node.node
    return isinstance(node, nodes.Name)


class _Budget:
    def __init__(self) -> None:
        self.iterations = 0
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise RenderError(f"template refused: its loops run more than {MAX_LOOP_ITERATIONS:,} iterations")
        if time.monotonic() > self.deadline:
            raise RenderError(f"template refused: rendering took more than {MAX_RENDER_SECONDS:g} s")


class _BudgetedList(list):
    """A parameter list whose iteration counts against the render's budget (nested loops multiply)."""

    budget: _Budget

    def __iter__(self) -> Any:
        for item in super().__iter__():
            self.budget.tick()
            yield item


class _BudgetedStr(str):
    """A string parameter whose iteration (a loop over its characters) counts against the budget."""

    budget: _Budget

    def __iter__(self) -> Any:
        for ch in super().__iter__():
            self.budget.tick()
            yield ch


class _BudgetedDict(dict):
    """A mapping parameter whose iteration (a loop over its keys) counts against the budget."""

    budget: _Budget

    def __iter__(self) -> Any:
        for key in super().__iter__():
            self.budget.tick()
            yield key


def _budgeted(value: Any, budget: _Budget) -> Any:
    """Every iterable parameter, at any depth, counts its iterations against the render's budget."""
    out: Any
    if isinstance(value, (list, tuple)):
        out = _BudgetedList(_budgeted(v, budget) for v in value)
    elif isinstance(value, Mapping):
        out = _BudgetedDict({k: _budgeted(v, budget) for k, v in value.items()})
    elif isinstance(value, str):
        out = _BudgetedStr(value)
    else:
        return value
    out.budget = budget
    return out


def template_context(parameters: Mapping[str, Any], ds: str) -> dict[str, Any]:
    """What placeholders may use: literal parameters, ``ds`` and ``ds_nodash`` (computed defaults are
    left out, so using one is an error that names it)."""
    literal = {k: v for k, v in parameters.items() if not isinstance(v, ComputedDefault)}
    return {**literal, "ds": ds, "ds_nodash": ds.replace("-", "")}


def template_variables(template: str) -> set[str]:
    if "{" not in template:
        return set()
    import jinja2
    import jinja2.meta

    try:
        return set(jinja2.meta.find_undeclared_variables(_jinja().parse(template)))
    except jinja2.TemplateSyntaxError:
        return set()


def render(template: str, context: Mapping[str, Any], computed: Collection[str] = ()) -> str:
    """Render a placeholder template, bounded in size, time and loop iterations (`_check_template`)."""
    if "{" not in template:
        return template
    import jinja2
    from jinja2.sandbox import SecurityError

    try:
        env = _jinja()
        _check_template(env.parse(template))
        budget = _Budget()
        chunks, size = [], 0
        for chunk in env.from_string(template).generate(**{k: _budgeted(v, budget) for k, v in context.items()}):
            size += len(chunk)
            _check_size(size, "the template")
            budget.tick()
            chunks.append(chunk)
        return "".join(chunks)
    except RenderError:
        raise
    except jinja2.UndefinedError as err:
        name = str(err).split("'")[1] if "'" in str(err) else str(err)
        if name in computed:
            raise RenderError(f"placeholder '{{{{ {name} }}}}' uses a parameter whose default is computed in the "
                              "parameters cell, so its value is only known inside the kernel; set it in the "
                              "schedule's parameters or give it a literal default") from err
        known = ", ".join(sorted(k for k in context)) or "none"
        raise RenderError(f"placeholder '{{{{ {name} }}}}' names an unknown parameter; define '{name}' in the "
                          f"parameters cell or the schedule's parameters (known: {known})") from err
    except jinja2.TemplateSyntaxError as err:
        raise RenderError(f"template syntax error on line {err.lineno}: {err.message}") from err
    except SecurityError as err:
        raise RenderError(f"template refused: {err}; placeholders may only use parameters and filters "
                          "such as {{ name }} or {{ name | lower }}") from err
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, OverflowError, MemoryError,
            RecursionError) as err:
        raise RenderError(f"template cannot be rendered: {err}") from err


# ---------------------------------------------------------------------------------------------
# loading


def find_notebooks(project_dir: Path, notebooks_dir: str = NOTEBOOKS_DIR) -> list[Path]:
    root = project_dir / notebooks_dir
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def load_project(project_dir: Path | str, *, schema: Mapping[str, Mapping[str, str]] | None = None,
                 warehouse_url: str | None = None, use_cache: bool = True,
                 stored_labels: Mapping[str, frozenset[str]] | None = None) -> BentoProject:
    """Read the whole project. Never raises for user content: problems are in ``.problems``."""
    project_dir = Path(project_dir).resolve()
    config, policy, default_schema, dialect, problems = project_settings(project_dir, warehouse_url)
    settings = {"schema": default_schema, "dialect": dialect, "v": CACHE_VERSION, "code": _code_fingerprint(),
                "columns": _hash_obj(schema or {})}
    cache = _Cache(project_dir, settings) if use_cache else None

    notebooks: list[ParsedNotebook] = []
    jobs: list[BentoJob] = []
    drafts: list[str] = []
    for path in find_notebooks(project_dir, config.notebooks_dir):
        display = path.relative_to(project_dir).as_posix()
        spec_file = spec_path_for(path)
        cached = cache.get(path, spec_file) if cache else None
        if cached is None:
            try:
                parsed_nb, nb_jobs_, nb_problems_, draft_ = _load_one(path, display, spec_file, project_dir,
                                                                      default_schema, dialect, schema)
            except Exception as err:  # noqa: BLE001 -- one notebook must never stop the others' load
                parsed_nb = ParsedNotebook(display, "", (), (), (), {}, None, "python3", ())
                nb_jobs_, draft_ = [], False
                nb_problems_ = [Problem(display, None, "BENTO001",
                                        f"could not be loaded ({type(err).__name__}: {err}); it is not scheduled. "
                                        "Run `dagster-bento check` and report this if the notebook is valid")]
            # the project keeps what the checks found, not the cells: the run re-reads the notebook
            cached = (dataclasses.replace(parsed_nb, code_cells=(), sql_cells=(), write_cells=()),
                      nb_jobs_, nb_problems_, draft_)
            if cache:
                cache.put(path, spec_file, cached)
        parsed, nb_jobs, nb_problems, is_draft = cached
        notebooks.append(parsed)
        jobs.extend(nb_jobs)
        problems.extend(nb_problems)
        if is_draft:
            drafts.append(display)
    problems += _cross_job_problems(jobs)
    computed: dict[str, frozenset[str]] = {}
    if policy is not None and jobs:
        zone_key = _zone_check_key(project_dir, jobs, stored_labels or {}, config.strict_zones)
        cached_zones = cache.get_key(zone_key) if cache else None
        if cached_zones is None:
            cached_zones = _zone_problems(policy, jobs, stored_labels or {}, config.strict_zones)
            if cache:
                cache.put_key(zone_key, cached_zones)
        zone_problems, computed = cached_zones
        problems += zone_problems
    elif policy is None and jobs:
        problems.append(Problem(POLICY_FILE, None, "PZ009",
                                f"no {POLICY_FILE} at the project root: purpose zones are not enforced. Add one "
                                "(see README 'Purpose zones') before scheduling notebooks that read governed data",
                                severity="warning"))
    if cache:
        cache.save()
    return BentoProject(project_dir, config, default_schema, dialect, tuple(notebooks), tuple(jobs),
                        tuple(drafts), policy, tuple(sorted(set(problems))), computed)


def project_settings(project_dir: Path, warehouse_url: str | None = None
                     ) -> tuple[ProjectConfig, Any, str, str | None, list[Problem]]:
    """(config, policy or None, default schema, dialect, problems) — what every notebook is read with."""
    config, problems = load_config(project_dir)
    url = warehouse_url or os.environ.get("BENTO_WAREHOUSE_URL") or config.warehouse_url
    dialect = config.dialect or dialect_for_url(url)
    policy, policy_problems = _load_policy(project_dir, dialect)
    problems += policy_problems
    default_schema = (config.default_schema or (policy.default_schema if policy else None)
                      or ("public" if dialect == "postgres" else "main"))
    return config, policy, default_schema, dialect, problems


def _load_policy(project_dir: Path, dialect: str | None = None) -> tuple[Any, list[Problem]]:
    """The policy; its table names follow the warehouse's identifier rules (``dialect``) unless it sets
    ``default_dialect`` itself."""
    path = project_dir / POLICY_FILE
    if not path.exists():
        return None, []
    try:
        return zones.load_policy(path, dialect=dialect), []
    except zones.PurposeZoneDefinitionError as err:
        return None, list(err.problems)


def _load_one(path: Path, display: str, spec_file: Path, project_dir: Path, default_schema: str,
              dialect: str | None, schema: Mapping[str, Mapping[str, str]] | None
              ) -> tuple[ParsedNotebook, list[BentoJob], list[Problem], bool]:
    parsed = parse_notebook(path, display)
    problems = list(parsed.problems)
    if any(p.code == "BENTO001" for p in problems):
        return parsed, [], problems, False
    if not spec_file.exists():
        problems.append(Problem(display, None, "BENTO000",
                                f"is a draft: it has no schedule spec {spec_file.name}; add one to schedule it",
                                severity="warning"))
        return parsed, [], problems, True
    spec, spec_problems = load_schedule_spec(spec_file, spec_file.relative_to(project_dir).as_posix(), display)
    problems += spec_problems
    if spec is None:
        return parsed, [], problems, False
    if not parsed.write_cells:
        problems.append(Problem(display, None, "BENTO008",
                                "is scheduled but has no write cell, so its runs would produce no asset; add a "
                                "write cell (%bento_write <dataframe> <schema.table>) or delete "
                                f"{spec_file.name} to keep it a draft"))
    exemptions, ex_problems = eligibility.parse_exemptions(list(spec.exemptions), notebook=display)
    problems += ex_problems
    code = [(c.index, c.source) for c in parsed.code_cells]  # the parameters cell runs too
    problems += eligibility.check_notebook_cells(code, notebook=display, exemptions=exemptions)
    jobs = []
    for entry in spec.schedules:
        job, job_problems = resolve_job(parsed, spec, entry, default_schema=default_schema, dialect=dialect,
                                        schema=schema)
        problems += job_problems
        if job is not None:
            jobs.append(job)
    return parsed, jobs, problems, False


def resolve_job(parsed: ParsedNotebook, spec: ScheduleSpec, entry: ScheduleEntry, *, default_schema: str,
                dialect: str | None, schema: Mapping[str, Mapping[str, str]] | None = None,
                ds: str = STATIC_DS) -> tuple[BentoJob | None, list[Problem]]:
    """Render one schedule entry of a notebook and analyse its SQL. Used at load time and at run time."""
    from dagster_bento.sql import SqlAnalysisError, analyse_query, normalise_table

    nb = parsed.path
    problems: list[Problem] = []
    unknown = sorted(set(entry.parameters) - set(parsed.parameters))
    if unknown:
        where = (f"the parameters cell (cell {parsed.parameters_cell})" if parsed.parameters_cell is not None
                 else "a cell tagged 'parameters' (there is none)")
        problems.append(Problem(nb, parsed.parameters_cell, "BENTO009",
                                f"schedule {entry.name!r} sets parameter(s) {unknown} that the notebook does not "
                                f"declare; add them with a default to {where}"))
    params = {**parsed.parameters, **entry.parameters}
    context = template_context(params, ds)
    computed = [k for k, v in params.items() if isinstance(v, ComputedDefault)]
    sql_cells: list[ResolvedSqlCell] = []
    for cell in parsed.sql_cells:
        if cell.dialect and dialect and cell.dialect != dialect:
            problems.append(Problem(nb, cell.index, "BENTO003",
                                    f"cell metadata sets dialect {cell.dialect!r} but the warehouse runs {dialect!r} "
                                    "SQL, and the tables a query reads must be analysed in the dialect that runs "
                                    "it; remove 'dialect' from the cell metadata"))
            continue
        try:
            sql = render(cell.sql, context, computed)
            analysis = analyse_query(sql, default_schema=default_schema, dialect=cell.dialect or dialect,
                                     schema=schema)
        except RenderError as err:
            problems.append(Problem(nb, cell.index, "BENTO005", f"schedule {entry.name!r}: {err}"))
            continue
        except SqlAnalysisError as err:
            problems.append(Problem(nb, cell.index, "BENTO004",
                                    f"{err}; fix the query (schedule {entry.name!r}, dialect {cell.dialect or dialect})"))
            continue
        sql_cells.append(ResolvedSqlCell(cell.index, cell.output, cell.sql, sql, analysis.tables,
                                         analysis.column_lineage, analysis.output_columns, cell.dialect or dialect))
    write_cells: list[ResolvedWriteCell] = []
    for cell in parsed.write_cells:
        if {"ds", "ds_nodash"} & template_variables(cell.table):
            problems.append(Problem(nb, cell.index, "BENTO003",
                                    f"write table {cell.table!r} depends on ds: a table name must be known before "
                                    "the run (it is an asset); write one table with a ds column and mode "
                                    "overwrite_partition instead"))
            continue
        try:
            table = render(cell.table, context, computed)
        except RenderError as err:
            problems.append(Problem(nb, cell.index, "BENTO005", f"schedule {entry.name!r}: {err}"))
            continue
        parts = [p for p in table.strip().split(".") if p]
        if len(parts) != 2 or not all(p.replace("_", "").isalnum() for p in parts):
            problems.append(Problem(nb, cell.index, "BENTO003",
                                    f"schedule {entry.name!r}: write table {table!r} must render to "
                                    "'<schema>.<table>' of letters, digits and underscores"))
            continue
        if parts[0].lower() in RESERVED_SCHEMAS or parts[0].lower().startswith("pg_"):
            problems.append(Problem(nb, cell.index, "BENTO003",
                                    f"schedule {entry.name!r}: write table {table!r} is in the reserved schema "
                                    f"{parts[0]!r} (dagster-bento's bookkeeping or the warehouse's catalog); "
                                    "write to a schema of your own"))
            continue
        if cell.mode == "overwrite_partition" and spec.partitioned is None:
            problems.append(Problem(nb, cell.index, "BENTO003",
                                    "mode 'overwrite_partition' replaces the rows of the run's ds; set "
                                    "'partitioned: daily' in the schedule spec or use overwrite/append"))
        write_cells.append(ResolvedWriteCell(cell.index, cell.input, cell.table,
                                             normalise_table(table, default_schema), cell.mode, cell.partition_column))
    if problems and any(p.severity == "error" for p in problems):
        return None, problems
    version = hashlib.sha256(
        f"{parsed.sha256}:{spec.sha256}:{_hash_obj(params)}".encode()).hexdigest()[:16]
    job = BentoJob(entry.name, nb, parsed.sha256, spec, entry, params, tuple(sql_cells), tuple(write_cells),
                   parsed.parameters_cell, version, default_schema, dialect)
    return job, problems


# ---------------------------------------------------------------------------------------------
# project-wide checks


def _cross_job_problems(jobs: Sequence[BentoJob]) -> list[Problem]:
    problems: list[Problem] = []
    names: dict[str, BentoJob] = {}
    for job in jobs:
        other = names.get(job.name)
        if other is not None:
            problems.append(Problem(job.spec.path, None, "BENTO009",
                                    f"schedule name {job.name!r} is also used by {other.spec.path}; schedule "
                                    "names are unique project-wide — rename one"))
        names.setdefault(job.name, job)
    writers: dict[str, tuple[BentoJob, int]] = {}
    for job in jobs:
        for w in job.write_cells:
            if w.table in writers:
                other, cell = writers[w.table]
                problems.append(Problem(job.notebook_path, w.index, "BENTO006",
                                        f"schedule {job.name!r} writes {w.table}, which schedule {other.name!r} "
                                        f"({other.notebook_path} cell {cell}) also writes; each table has exactly "
                                        "one writer — parameterise the table name or merge the schedules",
                                        table=w.table))
            else:
                writers[w.table] = (job, w.index)
    problems += _cycle_problems(jobs, {t: j.name for t, (j, _c) in writers.items()})
    return problems


def _cycle_problems(jobs: Sequence[BentoJob], writer_of: Mapping[str, str]) -> list[Problem]:
    by_name = {j.name: j for j in jobs}
    edges = {j.name: sorted({writer_of[t] for t in j.tables_read if t in writer_of}) for j in jobs}
    problems: list[Problem] = []
    reported: set[frozenset[str]] = set()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for nxt in edges.get(name, []):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    job = by_name[name]
                    cell = next((c.index for c in job.sql_cells
                                 if any(writer_of.get(t) == nxt for t in c.tables)), None)
                    problems.append(Problem(job.notebook_path, cell, "BENTO007",
                                            f"dependency cycle between schedules: {' -> '.join(reversed(cycle))} "
                                            "(each reads a table the next writes); break it by reading a table "
                                            "produced outside the cycle"))
            elif state.get(nxt) is None:
                visit(nxt)
        stack.pop()
        state[name] = 2

    for name in sorted(edges):
        if state.get(name) is None:
            visit(name)
    return problems


def zone_jobs(jobs: Sequence[BentoJob]) -> list[Any]:
    return [zones.ZoneJob(name=j.name, notebook_path=j.notebook_path, zone=j.zone,
                          reads=tuple((c.index, t) for c in j.sql_cells for t in c.tables),
                          writes=tuple((w.index, w.table, w.mode) for w in j.write_cells))
            for j in jobs]


def _zone_check_key(project_dir: Path, jobs: Sequence[BentoJob], stored: Mapping[str, frozenset[str]],
                    strict: bool) -> str:
    """Everything the (pure) zone check depends on: the policy file and each job's zone, reads, writes."""
    h = hashlib.sha256((project_dir / POLICY_FILE).read_bytes())
    h.update(json.dumps([[j.name, j.notebook_path, j.zone, j.tables_read, [(w.index, w.table, w.mode)
                                                                            for w in j.write_cells],
                          [(c.index, c.tables) for c in j.sql_cells]] for j in jobs]).encode())
    h.update(json.dumps({k: sorted(v) for k, v in sorted(stored.items())}).encode())
    h.update(b"strict" if strict else b"lenient")
    return f"zones:{h.hexdigest()}"


def _zone_problems(policy: Any, jobs: Sequence[BentoJob], stored: Mapping[str, frozenset[str]],
                   strict: bool) -> tuple[list[Problem], dict[str, frozenset[str]]]:
    violations, computed = zones.check_jobs(policy, zone_jobs(jobs), stored=stored, strict=strict)
    return [v.to_problem() for v in violations], dict(computed)


# ---------------------------------------------------------------------------------------------
# cache


def _hash_obj(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def _code_fingerprint() -> str:
    """Hash of the modules whose output is cached, so upgrading dagster-bento invalidates the cache."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("notebook.py", "spec.py", "sql.py", "project.py", "eligibility.py"):
        h.update((here / name).read_bytes())
    from importlib.metadata import PackageNotFoundError, version

    for package in ("sqlglot", "nbformat", "ipython", "jinja2"):
        try:
            h.update(f"{package}={version(package)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


class _Cache:
    """Parse results keyed by (notebook bytes, spec bytes, settings). One pickle file per project."""

    def __init__(self, project_dir: Path, settings: Mapping[str, Any]):
        self.path = project_dir / ".bento" / "cache" / "parse.pickle"
        self.settings = _hash_obj(settings)
        self.dirty = False
        try:
            with self.path.open("rb") as f:
                stored = pickle.load(f)
            self.entries: dict[str, Any] = stored if isinstance(stored, dict) else {}
        except (OSError, pickle.PickleError, EOFError, AttributeError, ImportError):
            self.entries = {}
        self.used: set[str] = set()

    def _key(self, nb: Path, spec: Path) -> str:
        h = hashlib.sha256(self.settings.encode())
        h.update(nb.read_bytes())
        h.update(b"\0")
        h.update(spec.read_bytes() if spec.exists() else b"<draft>")
        return f"{nb}:{h.hexdigest()}"

    def get(self, nb: Path, spec: Path) -> Any:
        key = self._key(nb, spec)
        self.used.add(key)
        return self.entries.get(key)

    def put(self, nb: Path, spec: Path, value: Any) -> None:
        self.entries[self._key(nb, spec)] = value
        self.dirty = True

    def get_key(self, key: str) -> Any:
        self.used.add(key)
        return self.entries.get(key)

    def put_key(self, key: str, value: Any) -> None:
        self.entries[key] = value
        self.used.add(key)
        self.dirty = True

    def save(self) -> None:
        if not self.dirty and set(self.entries) == self.used:
            return
        keep = {k: v for k, v in self.entries.items() if k in self.used}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                pickle.dump(keep, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only project still loads, just without the cache
