"""Interactive authoring: the IPython extension (``%load_ext dagster_bento``).

The notebook that will be scheduled is developed cell by cell in any Jupyter kernel:

* ``%%bento_sql <name>`` renders the cell's SQL with the parameters from the kernel's namespace (and
  ``ds`` = today, UTC, unless set), applies the static checks ``dagster-bento check`` applies to that cell
  (the same `project.resolve_job`: BENTO002-BENTO005), applies the purpose-zone read rule for the
  notebook's zone (``zones.check_read`` on the labels read from the warehouse right now, like a run's
  pre-fetch check: the same PZ message), runs the query **read-only** through the same
  ``Warehouse.fetch`` a run uses, into a temporary file, and reads it with the exact reader the rewritten
  notebook uses (`rewrite._HELPERS` / `rewrite._read_line`), so the dataframe has the dtypes of a
  scheduled run.
* ``%bento_write <df> <schema.table> [mode] [--to-dev-schema]`` writes the dataframe with the rewritten
  notebook's own writer into a temporary file and validates it with the upload's own checks (readable
  file, unique columns, partition column and value, columns/types against the existing table, the
  purpose-zone write rule), then shows a preview — target table, mode, rows, schema, what would change
  — and writes **nothing**. ``--to-dev-schema`` loads it into ``dev_<user>.<schema>_<table>`` (never a
  table of the project or of the policy), labelled like the real output would be.
* ``%bento_zone ZONE`` sets the zone of a draft; ``%bento_notebook PATH`` names the notebook when the
  frontend does not (Jupyter sets ``JPY_SESSION_NAME``/``__session__``, VS Code ``__vsc_ipynb_file__``);
  ``%bento_status`` shows what the extension found.

Where the project and the warehouse come from: the project is the first directory, from the notebook's
directory (else the kernel's working directory) upwards, that holds ``notebooks/`` and
``purpose_zones.yaml`` or ``bento.yaml`` (as ``dagster-bento`` finds it), else the first one holding
``bento.yaml`` or ``purpose_zones.yaml``; the warehouse is the project's development warehouse
(``$BENTO_WAREHOUSE_URL``, ``bento.yaml`` ``warehouse_url``, the embedded DuckDB file).

Metadata-form cells (``cell.metadata.bento`` without a magic line): IPython never receives a cell's
metadata, so the extension reads it from the **saved** notebook file: an input transformer looks the
cell's source up among the notebook's cells and, when exactly one metadata-form bento cell has that
source, runs it as its magic form. This needs the notebook's path (see above) and the notebook saved
with the cell as it is; an unsaved or edited metadata-form cell runs as plain Python (the SQL then fails
as a SyntaxError) — add the magic line, which the schedule accepts too. A metadata-form write cell whose
source is empty is never sent to the kernel by IPython (empty cells are skipped), so it shows no preview.

Honest limits: the output label a write would need is computed from the SQL cells run in this session
and every SQL cell of the saved notebook (a cell typed but not yet saved counts once it is run); the
code-cell schedulability rules (BENTO-E1xx) are not applied interactively (``check`` applies them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import os
import re
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster_bento.errors import DagsterBentoError
from dagster_bento.redact import redact_url

__all__ = [
    "DagsterBentoInteractiveError",
    "strip_session_magics",
    "SqlCellResult",
    "WritePreview",
    "find_project_dir",
    "load_ipython_extension",
    "unload_ipython_extension",
]

SESSION_NAMES = ("__vsc_ipynb_file__", "__session__")
DEV_SCHEMA_PREFIX = "dev_"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


from dagster_bento.execution.rewrite import strip_session_magics  # noqa: E402,F401 (re-exported)


# ---------------------------------------------------------------------------------------------
# project and notebook discovery


def find_project_dir(start: Path) -> Path | None:
    """The project holding ``start``: first the rule of the ``dagster-bento`` command line (a directory with
    ``notebooks/`` and ``purpose_zones.yaml`` or ``bento.yaml``), then any directory with one of those files."""
    from dagster_bento.project import CONFIG_FILE, NOTEBOOKS_DIR, POLICY_FILE

    start = start.resolve()
    chain = [start, *start.parents]
    for parent in chain:
        if (parent / NOTEBOOKS_DIR).is_dir() and ((parent / POLICY_FILE).exists() or (parent / CONFIG_FILE).exists()):
            return parent
    for parent in chain:
        if (parent / CONFIG_FILE).exists() or (parent / POLICY_FILE).exists():
            return parent
    return None


def _notebook_candidates(value: str, cwd: Path) -> list[Path]:
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    return [cwd / path, cwd / path.name]


class _NotebookFile:
    """The saved notebook, re-read when it changes on disk (for metadata-form cells and cell indices)."""

    def __init__(self) -> None:
        self._key: tuple[str, int] | None = None
        self._cells: list[Any] = []

    def cells(self, path: Path | None) -> list[Any]:
        if path is None:
            return []
        try:
            key = (str(path), path.stat().st_mtime_ns)
        except OSError:
            return []
        if key != self._key:
            import nbformat

            try:
                nb = nbformat.read(path, as_version=4)
            except Exception:  # noqa: BLE001 -- an unreadable notebook just gives no cell lookups
                return []
            self._key, self._cells = key, list(nb.cells)
        return self._cells

    def find(self, path: Path | None, source: str) -> list[tuple[int, Any]]:
        """Code cells whose source equals ``source`` (whitespace at the ends ignored)."""
        wanted = source.strip()
        out = []
        for index, cell in enumerate(self.cells(path)):
            if cell.cell_type == "code":
                text = cell.source if isinstance(cell.source, str) else "".join(cell.source)
                if text.strip() == wanted:
                    out.append((index, cell))
        return out


# ---------------------------------------------------------------------------------------------
# results shown in the notebook


@dataclasses.dataclass(frozen=True)
class SqlCellResult:
    """What ``%%bento_sql`` did (kept as ``BentoMagics.last_sql``)."""

    output: str
    sql: str
    tables: tuple[str, ...]
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, warehouse type)
    seconds: float
    warehouse: str

    def summary(self) -> str:
        tables = ", ".join(self.tables) or "no table"
        return (f"bento_sql: {self.rows} rows x {len(self.columns)} columns into {self.output} "
                f"({self.seconds:.2f} s, read-only, from {tables} on {self.warehouse})")


@dataclasses.dataclass(frozen=True)
class WritePreview:
    """What ``%bento_write`` would do; displayed as the cell's output. Nothing is written unless
    ``written_to`` is set (``--to-dev-schema``)."""

    input: str
    table: str
    mode: str
    rows: int
    columns: tuple[tuple[str, str], ...]  # (name, Arrow type) of the columns an upload would load
    existing_columns: tuple[tuple[str, str], ...] | None  # None: the table does not exist
    existing_rows: int | None
    partition: tuple[str, str, int | None] | None  # (column, value, rows in that partition now)
    change: str
    label: tuple[str, ...] | None  # purpose-zone label the table would carry
    index_note: str = ""
    written_to: str | None = None

    def text(self) -> str:
        lines = [f"bento_write preview: {self.input} -> {self.table} (mode {self.mode})",
                 f"  rows: {self.rows}",
                 "  schema: " + ", ".join(f"{n} {t}" for n, t in self.columns)]
        if self.existing_columns is not None:
            lines.append("  table now: " + ", ".join(f"{n} {t}" for n, t in self.existing_columns)
                         + (f" ({self.existing_rows} rows)" if self.existing_rows is not None else ""))
        if self.index_note:
            lines.append(f"  index: {self.index_note}")
        lines.append(f"  change: {self.change}")
        if self.label is not None:
            lines.append(f"  label: {{{', '.join(self.label)}}}")
        if self.written_to:
            lines.append(f"  written to the scratch table {self.written_to} (not {self.table})")
        else:
            lines.append("  nothing was written (a scheduled run uploads it)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())


# ---------------------------------------------------------------------------------------------
# the magics


class _Refused(Exception):
    pass


class DagsterBentoInteractiveError(DagsterBentoError):
    """A bento magic refused the cell: what `dagster-bento check` or a run would refuse. It is raised (so
    nbclient, papermill and "Run all" stop there, as a run would); IPython's UsageError would only be
    printed and the next cells would still run."""


def _refusal(message: str) -> Exception:
    return DagsterBentoInteractiveError(message)


def _short_traceback(err: BaseException) -> BaseException:
    """Show a dagster-bento error as its message only (IPython calls ``_render_traceback_`` when an
    exception has one): the message says what to fix; our call stack would only hide it."""
    lines = [f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", *str(err).splitlines()[1:]]
    err._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return err


def _make_magics_class() -> type:
    from IPython.core.magic import Magics, cell_magic, line_magic, magics_class

    @magics_class
    class BentoMagics(Magics):  # type: ignore[misc]
        """``%%bento_sql``, ``%bento_write``, ``%bento_zone``, ``%bento_notebook``, ``%bento_status``."""

        def __init__(self, shell: Any):
            super().__init__(shell)
            self.zone_override: str | None = None
            self.notebook_override: Path | None = None
            self.read_labels: dict[str, frozenset[str]] = {}  # labels of what this session's SQL cells read
            self.last_sql: SqlCellResult | None = None
            self.last_preview: WritePreview | None = None
            self._file = _NotebookFile()

        # -- where am I ----------------------------------------------------------------------------

        def notebook_path(self) -> Path | None:
            if self.notebook_override is not None:
                return self.notebook_override
            cwd = Path.cwd()
            values = [os.environ.get("JPY_SESSION_NAME")]
            values += [self.shell.user_ns.get(name) for name in SESSION_NAMES]
            for value in values:
                if isinstance(value, str) and value.endswith(".ipynb"):
                    for candidate in _notebook_candidates(value, cwd):
                        if candidate.is_file():
                            return candidate.resolve()
            return None

        def project_dir(self) -> Path:
            nb = self.notebook_path()
            found = find_project_dir(nb.parent if nb is not None else Path.cwd())
            if found is None:
                raise _Refused(
                    f"no dagster-bento project found above {nb.parent if nb else Path.cwd()} (a directory holding "
                    "notebooks/ and purpose_zones.yaml or bento.yaml); start Jupyter inside the project or run "
                    "%bento_notebook <path of this notebook in the project>")
            return found

        def context(self) -> "_Context":
            return _Context.load(self)

        # -- magics ---------------------------------------------------------------------------------

        @line_magic
        def bento_zone(self, line: str) -> None:
            """%bento_zone ZONE: the purpose zone of this (draft) notebook; a notebook with a spec uses its zone."""
            zone = line.strip()
            if not _IDENT.match(zone):
                raise _user_error("usage: %bento_zone ZONE (a zone name of purpose_zones.yaml)")
            self.zone_override = zone
            print(f"bento: zone {zone} for this session")

        @line_magic
        def bento_notebook(self, line: str) -> None:
            """%bento_notebook PATH: the notebook this kernel runs (when the frontend does not say)."""
            path = Path(line.strip().strip("'\"")).expanduser()
            if not path.is_file():
                raise _user_error(f"%bento_notebook: {path} is not a file")
            self.notebook_override = path.resolve()
            print(f"bento: notebook {self.notebook_override}")

        @line_magic
        def bento_status(self, line: str) -> dict[str, Any]:
            """%bento_status: the project, notebook, zone and warehouse the magics use."""
            try:
                ctx = self.context()
            except _Refused as err:
                raise _refusal(str(err)) from None
            return {"project_dir": str(ctx.project_dir), "notebook": ctx.display, "zone": ctx.zone,
                    "schedule": ctx.name, "warehouse": ctx.warehouse_display, "data_format": ctx.fmt,
                    "policy": ctx.policy is not None}

        @cell_magic
        def bento_sql(self, line: str, cell: str) -> None:
            """%%bento_sql NAME: run the cell's SQL read-only and bind the result to NAME, as a run would."""
            __tracebackhide__ = True  # noqa: F841 -- IPython hides this frame
            try:
                result = _run_sql(self, line, cell)
            except _Refused as err:
                raise _short_traceback(_refusal(str(err))) from None
            except DagsterBentoError as err:  # a zone refusal, a fetch error: the run's own error
                raise _short_traceback(err) from None
            self.last_sql = result
            print(result.summary())

        @line_magic
        def bento_write(self, line: str) -> WritePreview:
            """%bento_write DF SCHEMA.TABLE [MODE] [--to-dev-schema]: validate DF as an upload would and
            preview the change; writes nothing (or only to the scratch schema dev_<user>)."""
            __tracebackhide__ = True  # noqa: F841 -- IPython hides this frame
            try:
                preview = _preview_write(self, line)
            except _Refused as err:
                raise _short_traceback(_refusal(str(err))) from None
            except DagsterBentoError as err:  # a zone refusal, an output that does not fit: the upload's error
                raise _short_traceback(err) from None
            self.last_preview = preview
            return preview

    return BentoMagics


def _user_error(message: str) -> Exception:
    from IPython.core.error import UsageError

    return UsageError(message)


# ---------------------------------------------------------------------------------------------
# the context of one magic call


@dataclasses.dataclass
class _Context:
    project_dir: Path
    notebook: Path | None
    display: str  # notebook path relative to the project, or "(interactive)"
    name: str  # the schedule entry name the zone messages use (first entry; the stem for a draft)
    spec: Any  # ScheduleSpec | None
    parsed: Any  # ParsedNotebook of the saved notebook, or None
    policy: Any
    zone: str | None
    default_schema: str
    dialect: str | None
    url: str
    fmt: str
    warehouse_display: str

    @classmethod
    def load(cls, magics: Any) -> "_Context":
        from dagster_bento.assets import resolve_warehouse_url
        from dagster_bento.notebook import parse_notebook
        from dagster_bento.project import project_settings
        from dagster_bento.spec import load_schedule_spec, spec_path_for

        project_dir = magics.project_dir()
        config, policy, default_schema, dialect, problems = project_settings(project_dir)
        errors = [p for p in problems if p.severity == "error"]
        if errors:  # an invalid policy or config: nothing can be judged (fail closed, like load)
            raise _Refused("the project's configuration has errors, so no read can be judged:\n"
                           + "\n".join(f"  - {p}" for p in errors))
        nb = magics.notebook_path()
        display, name, spec, parsed = "(interactive)", "interactive", None, None
        if nb is not None:
            display = nb.relative_to(project_dir).as_posix() if nb.is_relative_to(project_dir) else str(nb)
            name = nb.stem
            parsed = parse_notebook(nb, display)
            spec_file = spec_path_for(nb)
            if spec_file.exists():
                spec, spec_problems = load_schedule_spec(spec_file, spec_file.name, display)
                if spec is None:
                    raise _Refused(f"{display}: its schedule spec {spec_file.name} is invalid:\n"
                                   + "\n".join(f"  - {p}" for p in spec_problems))
                if spec.schedules:
                    name = spec.schedules[0].name
        zone = spec.zone if spec is not None else magics.zone_override
        if spec is not None and magics.zone_override and magics.zone_override != spec.zone:
            print(f"bento: {display} runs in zone {spec.zone} (its spec); %bento_zone {magics.zone_override} "
                  "is ignored", file=sys.stderr)
        url = resolve_warehouse_url(project_dir, config.warehouse_url, None)
        fmt = (spec.data_format if spec is not None and spec.data_format else None) or config.data_format
        return cls(project_dir, nb, display, name, spec, parsed, policy, zone, default_schema, dialect, url, fmt,
                   redact_url(url))

    def cell_index(self, magics: Any, source: str) -> tuple[int | None, Any]:
        """(index, saved cell) of the cell with this source in the saved notebook, when exactly one matches."""
        found = magics._file.find(self.notebook, source)
        return found[0] if len(found) == 1 else (None, None)

    def parameters(self, user_ns: Mapping[str, Any], template_names: set[str]) -> tuple[dict[str, Any], str]:
        """The parameters a run would render with, valued from the kernel's namespace, and ``ds``."""
        from dagster_bento.notebook import COMPUTED, ComputedDefault

        ds = user_ns.get("ds")
        if not (isinstance(ds, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", ds)):
            ds = dt.datetime.now(dt.timezone.utc).date().isoformat()
        if self.parsed is None:  # no saved notebook: every placeholder comes from the namespace
            return {k: user_ns[k] for k in template_names if k in user_ns and k not in ("ds", "ds_nodash")}, ds
        scheduled = {k for e in (self.spec.schedules if self.spec else ()) for k in e.parameters}
        out: dict[str, Any] = {}
        for name, default in self.parsed.parameters.items():
            if isinstance(default, ComputedDefault) and name not in scheduled:
                out[name] = COMPUTED  # refused in templates, as `check` refuses it
            elif name in user_ns:
                out[name] = user_ns[name]
            else:
                out[name] = default
        return out, ds

    def problems_error(self, problems: Sequence[Any], index: int | None) -> _Refused:
        from dagster_bento.errors import format_problems

        fixed = sorted(dataclasses.replace(p, cell=index if p.cell is not None else None) for p in problems)
        return _Refused(format_problems(fixed, f"{self.display} cannot run this cell (as `dagster-bento check` "
                                               "would report):"))

    def resolve(self, cell_source: str, saved: Any, index: int | None, user_ns: Mapping[str, Any]) -> tuple[Any, str]:
        """Parse and render one bento cell exactly as the project load does (`resolve_job`)."""
        import nbformat

        from dagster_bento.notebook import parse_notebook_node
        from dagster_bento.project import resolve_job, template_variables
        from dagster_bento.spec import ScheduleEntry, ScheduleSpec

        cell = nbformat.v4.new_code_cell(cell_source)
        if saved is not None and isinstance(saved.get("metadata", {}).get("bento"), dict):
            meta = dict(saved.metadata["bento"])
            meta.pop("original_source", None)
            cell.metadata["bento"] = meta  # so metadata and magic line must agree (BENTO002), as in `check`
        nb = nbformat.v4.new_notebook(cells=[cell])
        parsed = parse_notebook_node(nb, self.display)
        problems = [p for p in parsed.problems if p.severity == "error" and p.code != "BENTO008"]
        if problems:
            raise self.problems_error(problems, index)
        names: set[str] = set()
        for c in parsed.sql_cells:
            names |= template_variables(c.sql)
        for w in parsed.write_cells:
            names |= template_variables(w.table)
        params, ds = self.parameters(user_ns, names)
        one = dataclasses.replace(parsed, parameters=params, parameters_cell=None)
        spec = self.spec or ScheduleSpec(path="(draft)", sha256="", owners=(), zone=self.zone or "", schedules=())
        entry = ScheduleEntry(self.name, {})
        job, job_problems = resolve_job(one, spec, entry, default_schema=self.default_schema, dialect=self.dialect,
                                        ds=ds)
        errors = [p for p in job_problems if p.severity == "error"]
        if job is None or errors:
            raise self.problems_error(errors, index)
        return job, ds


# ---------------------------------------------------------------------------------------------
# %%bento_sql


def _run_lines(fmt: str, var: str, table: str) -> tuple[dict[str, Any], str, str]:
    """The rewritten notebook's own setup cell (executed in a private namespace), read line and write line,
    taken from `rewrite_notebook` itself, so the kernel reads and writes exactly as a run does."""
    import nbformat

    from dagster_bento.execution.rewrite import SETUP_TAG, rewrite_notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(""), nbformat.v4.new_code_cell("")])
    out = rewrite_notebook(nb, sql_cells=[(0, var)], write_cells=[(1, var, table)], parameters={},
                           parameters_cell=None, fmt=fmt)  # type: ignore[arg-type]
    setup = next(c.source for c in out.cells if SETUP_TAG in c.get("metadata", {}).get("tags", []))
    rewritten = {c["kind"]: c["source"] for c in out.metadata["dagster_bento"]["rewritten_cells"]}
    ns: dict[str, Any] = {}
    exec(compile(setup, "<dagster-bento setup>", "exec"), ns)  # noqa: S102 -- the run's own setup cell
    return ns, rewritten["sql"], rewritten["write"]


def _check_reads(ctx: _Context, warehouse: Any, tables: Sequence[str], index: int | None) -> dict[str, frozenset[str]]:
    """The pre-fetch read rule of a run (`runner._check_reads`), for this cell."""
    from dagster_bento import zones

    if ctx.policy is None:
        print(f"bento: no purpose_zones.yaml in {ctx.project_dir}: purpose zones are not enforced", file=sys.stderr)
        return {}
    if not ctx.zone:
        raise _Refused(f"{ctx.display}: no purpose zone is known for this notebook, so its reads cannot be judged; "
                       "run %bento_zone <ZONE> (a draft) or add the schedule spec "
                       "notebooks/<stem>.bento.yaml with 'zone:'")
    stored = warehouse.read_labels(tables)
    labels: dict[str, frozenset[str]] = {}
    for table in tables:
        label = zones.resolve_label(ctx.policy, table, stored)
        violation = zones.check_read(ctx.policy, notebook=ctx.name, notebook_path=ctx.display,
                                     notebook_zone=ctx.zone, cell=index, table=table, label=label, phase="pre_fetch")
        if violation is not None:
            if violation.enforced:
                raise zones.violation_error(violation)
            print(f"bento: purpose zone violation (log mode, allowed): {violation.message()}", file=sys.stderr)
        if isinstance(label, frozenset):
            labels[table] = label
    return labels


def _run_sql(magics: Any, line: str, body: str) -> SqlCellResult:
    from dagster_bento.warehouse import warehouse_from_url

    ctx = magics.context()
    source = f"%%bento_sql {line.strip()}\n{body}"
    index, saved = ctx.cell_index(magics, source)
    if index is None:  # a metadata-form cell was turned into this magic by the input transformer
        index, saved = ctx.cell_index(magics, body)
    job, _ds = ctx.resolve(source, saved, index, magics.shell.user_ns)
    cell = job.sql_cells[0]
    with warehouse_from_url(ctx.url) as warehouse:
        labels = _check_reads(ctx, warehouse, cell.tables, index)
        ns, read_line, _write = _run_lines(ctx.fmt, cell.output, "x.x")
        with tempfile.TemporaryDirectory(prefix="bento-sql-") as tmp:
            # the read line's path is relative to the run directory: fetch into the same place under tmp
            path = Path(tmp) / _quoted_path(read_line)
            path.parent.mkdir(parents=True)
            # Views are judged by what they read, as in a run: the planner's base tables, before any row.
            check = ((lambda _sql, base: labels.update(
                _check_reads(ctx, warehouse, sorted(set(base) - set(cell.tables)), index)))
                if ctx.policy is not None else None)
            fetched = warehouse.fetch(cell.sql, path, fmt=ctx.fmt, notebook=ctx.display, cell=index,  # type: ignore[arg-type]
                                      default_schema=job.default_schema, check_tables=check)
            _in_dir(Path(tmp), read_line, ns)
    magics.read_labels.update(labels)
    magics.shell.user_ns[cell.output] = ns[cell.output]
    return SqlCellResult(cell.output, cell.sql, tuple(cell.tables), fetched.rows,
                         tuple((c.name, c.type) for c in fetched.columns), fetched.seconds, ctx.warehouse_display)


# ---------------------------------------------------------------------------------------------
# %bento_write


def _quoted_path(line: str) -> str:
    match = re.search(r'"([^"]+)"', line)
    if match is None:  # the rewrite's lines always name their file in double quotes
        raise _Refused(f"cannot find the data file in the run's line {line!r}; report this as a bug")
    return match.group(1)


def _in_dir(directory: Path, line: str, ns: dict[str, Any]) -> None:
    """Run one of the rewrite's lines with ``directory`` as the working directory (its paths are relative
    to the run directory), then come back."""
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        exec(compile(line, "<dagster-bento>", "exec"), ns)  # noqa: S102 -- a line built by rewrite_notebook
    finally:
        os.chdir(cwd)


def _dev_user() -> str:
    user = re.sub(r"[^a-z0-9_]", "_", getpass.getuser().lower())
    return user or "user"


def dev_table_for(table: str) -> str:
    """The scratch table ``--to-dev-schema`` writes for ``schema.table``: ``dev_<user>.<schema>_<table>``."""
    schema, _, name = table.partition(".")
    return f"{DEV_SCHEMA_PREFIX}{_dev_user()}.{schema}_{name}"


def _count(warehouse: Any, table: str, where: str = "") -> int | None:
    """Rows of an existing table, read-only through the warehouse's own fetch."""
    import pyarrow.parquet as pq

    from dagster_bento.errors import DagsterBentoError
    from dagster_bento.warehouse import _qualified

    with tempfile.TemporaryDirectory(prefix="bento-count-") as tmp:
        path = Path(tmp) / "count.parquet"
        try:
            warehouse.fetch(f"SELECT count(*) AS n FROM {_qualified(table)}{where}", path)
        except DagsterBentoError:
            return None
        return int(pq.read_table(path).column(0)[0].as_py())


def _describe_change(mode: str, columns: Sequence[tuple[str, str]], existing: Any, existing_rows: int | None,
                     rows: int, partition: tuple[str, str, int | None] | None) -> str:
    from dagster_bento.warehouse import arrow_type_family, arrow_type_from_string, warehouse_type_family

    if existing is None:
        return f"new table: created with {rows} rows"
    ours = {n.lower(): t for n, t in columns}
    theirs = {c.name.lower(): c.type for c in existing}
    added = [n for n, _t in columns if n.lower() not in theirs]
    removed = [c.name for c in existing if c.name.lower() not in ours]
    retyped = []
    for n, t in columns:
        if n.lower() in theirs:
            arrow = arrow_type_from_string(t)
            family = arrow_type_family(arrow) if arrow is not None else t
            if family != warehouse_type_family(theirs[n.lower()]):
                retyped.append(f"{n} ({theirs[n.lower()]} -> {t})")
    now = f"{existing_rows} rows" if existing_rows is not None else "its rows"
    if mode == "append":
        return f"{rows} rows appended to the {now} of the table"
    if mode == "overwrite_partition" and partition is not None:
        column, value, old = partition
        old_text = f"{old} rows" if old is not None else "the rows"
        return f"{old_text} with {column} = {value!r} replaced by {rows} rows; the other rows are kept"
    if added or removed or retyped:
        parts = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else "",
                 f"type changed {', '.join(retyped)}" if retyped else ""]
        return (f"the table is replaced, its columns differ ({'; '.join(p for p in parts if p)}); "
                f"{now} replaced by {rows} rows")
    return f"{now} replaced by {rows} rows (same columns)"


def _preview_write(magics: Any, line: str) -> WritePreview:
    from dagster_bento import zones
    from dagster_bento.project import RESERVED_SCHEMAS, load_project
    from dagster_bento.warehouse import (
        UploadRequest,
        _check_columns,
        _prepare_uploads,
        warehouse_from_url,
    )

    words = line.split()
    to_dev = "--to-dev-schema" in words
    rest = " ".join(w for w in words if w != "--to-dev-schema")
    unknown_flags = [w for w in words if w.startswith("--") and w != "--to-dev-schema"]
    if unknown_flags:
        raise _Refused(f"%bento_write: unknown option {unknown_flags[0]}; the only option is --to-dev-schema")
    ctx = magics.context()
    source = f"%bento_write {rest}"
    index, saved = ctx.cell_index(magics, source)
    job, ds = ctx.resolve(source, saved, index, magics.shell.user_ns)
    cell = job.write_cells[0]
    user_ns = magics.shell.user_ns
    if cell.input not in user_ns:
        raise _Refused(f"write cell input {cell.input!r} is not defined in this kernel; run the cells that produce it")
    df = user_ns[cell.input]
    with tempfile.TemporaryDirectory(prefix="bento-write-") as tmp, warehouse_from_url(ctx.url) as warehouse:
        run_dir = Path(tmp)
        ns, _read, write_line = _run_lines(ctx.fmt, cell.input, cell.table)
        ns[cell.input] = df
        path = run_dir / _quoted_path(write_line)
        path.parent.mkdir(parents=True)
        try:
            _in_dir(run_dir, write_line, ns)
        except Exception as err:
            raise _Refused(f"write cell for {cell.table}: {cell.input!r} cannot be written as a run writes it "
                           f"({type(err).__name__}: {err})") from err
        request = UploadRequest(table=cell.table, path=path, mode=cell.mode, partition_column=cell.partition_column,
                                partition_value=ds if cell.mode == "overwrite_partition" else None,
                                notebook=ctx.display, cell=index, fmt=ctx.fmt)  # type: ignore[arg-type]
        (run_dir / "prepared").mkdir()
        prepared = _prepare_uploads([request], notebook=ctx.display, default_schema=warehouse.default_schema,
                                    table_columns=warehouse.table_columns, tmpdir=run_dir / "prepared")[0]
        existing = warehouse.table_columns(cell.table)
        _check_columns(prepared, existing, case_insensitive=warehouse.kind == "duckdb")
        label = _write_label(ctx, warehouse, cell, magics.read_labels, index, existing is not None, user_ns)
        columns = tuple((f.name, str(f.type)) for f in prepared.schema)
        dropped = _index_note(df, [n for n, _t in columns])
        existing_rows = _count(warehouse, cell.table) if existing is not None else None
        partition = None
        if cell.mode == "overwrite_partition":
            from dagster_bento.warehouse import _sql_string, quote_ident

            old = (_count(warehouse, cell.table, f" WHERE CAST({quote_ident(cell.partition_column)} AS VARCHAR) = "
                                                 f"{_sql_string(ds)}") if existing is not None else 0)
            partition = (cell.partition_column, ds, old)
        change = _describe_change(cell.mode, columns, existing, existing_rows, prepared.rows, partition)
        written_to = None
        if to_dev:
            written_to = dev_table_for(cell.table)
            project = load_project(ctx.project_dir)
            production = {t for j in project.jobs for t in j.tables_written}
            schema = written_to.split(".")[0]
            if (not schema.startswith(DEV_SCHEMA_PREFIX) or schema in RESERVED_SCHEMAS or written_to in production
                    or (ctx.policy is not None and ctx.policy.declared_label(written_to) is not zones.UNKNOWN)):
                raise _Refused(f"--to-dev-schema: {written_to} is a table of the project or of the policy; the "
                               "scratch schema only takes tables nothing else writes")
            dev_request = dataclasses.replace(request, table=written_to)

            def dev_labels(stored: Mapping[str, frozenset[str]], existing_tables: Any) -> dict[str, frozenset[str]]:
                # the scratch copy carries the label the real output needs (never less), so it stays governed
                if label is None:
                    return {}
                old_label = stored.get(written_to)
                if old_label is not None and cell.mode != "overwrite":
                    return {written_to: old_label | label}
                return {written_to: label}

            warehouse.upload([dev_request], run_id=f"interactive-{uuid.uuid4().hex[:12]}", notebook=ctx.display,
                             check_labels=dev_labels if ctx.policy is not None else None)
    return WritePreview(cell.input, cell.table, cell.mode, prepared.rows, columns,
                        tuple((c.name, c.type) for c in existing) if existing is not None else None,
                        existing_rows, partition, change, tuple(sorted(label)) if label is not None else None,
                        dropped, written_to)


def _index_note(df: Any, columns: Sequence[str]) -> str:
    """What the run's writer did with the dataframe's index (it keeps, drops or refuses it; see rewrite)."""
    import pandas as pd

    if isinstance(df, pd.DataFrame) and df.index.equals(pd.RangeIndex(len(df))):
        return ""
    frame_columns = set(map(str, getattr(df, "columns", ())))
    kept = [c for c in columns if c not in frame_columns]
    if kept:
        return f"the index is written as column(s) {', '.join(kept)}"
    if isinstance(df, pd.DataFrame):
        return "the unnamed integer index is not written (row numbers); name it to keep it as a column"
    return ""


def _notebook_read_labels(ctx: _Context, warehouse: Any, user_ns: Mapping[str, Any]) -> list[frozenset[str]]:
    """Labels of every table the saved notebook's SQL cells read (a run's output label comes from all of
    them, not only from the cells run in this session). Cells that do not resolve are left out: they are
    refused when run."""
    from dagster_bento import zones
    from dagster_bento.project import resolve_job, template_variables
    from dagster_bento.spec import ScheduleEntry, ScheduleSpec

    if ctx.parsed is None or not ctx.parsed.sql_cells:
        return []
    names = set().union(*(template_variables(c.sql) for c in ctx.parsed.sql_cells))
    params, ds = ctx.parameters(user_ns, names)
    spec = ctx.spec or ScheduleSpec(path="(draft)", sha256="", owners=(), zone=ctx.zone or "", schedules=())
    tables: set[str] = set()
    for sql_cell in ctx.parsed.sql_cells:
        one = dataclasses.replace(ctx.parsed, sql_cells=(sql_cell,), write_cells=(), parameters=params)
        job, _problems = resolve_job(one, spec, ScheduleEntry(ctx.name, {}), default_schema=ctx.default_schema,
                                     dialect=ctx.dialect, ds=ds)
        if job is not None:
            tables.update(job.tables_read)
    stored = warehouse.read_labels(sorted(tables))
    resolved = (zones.resolve_label(ctx.policy, t, stored) for t in sorted(tables))
    return [label for label in resolved if isinstance(label, frozenset)]


def _write_label(ctx: _Context, warehouse: Any, cell: Any, read_labels: Mapping[str, frozenset[str]],
                 index: int | None, exists: bool, user_ns: Mapping[str, Any]) -> frozenset[str] | None:
    """The pre-upload write rule of a run (`runner._write_labels`) for this cell."""
    from dagster_bento import zones

    if ctx.policy is None:
        return None
    if not ctx.zone:
        raise _Refused(f"{ctx.display}: no purpose zone is known for this notebook, so the write cannot be judged; "
                       "run %bento_zone <ZONE> (a draft) or add the schedule spec with 'zone:'")
    policy = ctx.policy
    reclass = policy.reclassification_for(ctx.name, cell.table, notebook_path=ctx.display)
    labels = [*read_labels.values(), *_notebook_read_labels(ctx, warehouse, user_ns)]
    required = zones.output_label(labels, ctx.zone, reclassification=reclass)
    stored = warehouse.read_labels([cell.table])
    violation, label = zones.check_write(
        policy, notebook=ctx.name, notebook_path=ctx.display, notebook_zone=ctx.zone, cell=index, table=cell.table,
        required=required, stored=stored.get(cell.table),
        exists_unlabeled=cell.table not in stored and exists
        and not isinstance(policy.declared_label(cell.table), frozenset),
        mode=cell.mode, phase="pre_upload")
    if violation is not None:
        if violation.enforced:
            raise zones.violation_error(violation)
        print(f"bento: purpose zone violation (log mode, allowed): {violation.message()}", file=sys.stderr)
    return label


# ---------------------------------------------------------------------------------------------
# metadata-form cells


def _metadata_transformer(magics: Any) -> Any:
    """An IPython cleanup transformer: a cell without a bento magic line whose source is, in the saved
    notebook, exactly one metadata-form bento cell runs as that cell's magic form."""
    from dagster_bento.notebook import SQL_MAGIC, WRITE_MAGIC

    def transform(lines: list[str]) -> list[str]:
        source = "".join(lines)
        first = source.lstrip().split("\n", 1)[0].strip()
        if not source.strip() or first.startswith((SQL_MAGIC, WRITE_MAGIC)):
            return lines
        try:
            path = magics.notebook_path()
            found = magics._file.find(path, source)
        except Exception:  # noqa: BLE001 -- never break ordinary cells
            return lines
        metas = [c.get("metadata", {}).get("bento") for _i, c in found]
        if len(found) != 1 or not isinstance(metas[0], dict):
            return lines
        meta = metas[0]
        if meta.get("type") == "sql" and isinstance(meta.get("output"), str):
            return [f"{SQL_MAGIC} {meta['output']}\n", *lines]
        if meta.get("type") == "write" and all(isinstance(meta.get(k), str) for k in ("input", "table")):
            mode = meta.get("mode") or "overwrite"
            return [f"{WRITE_MAGIC} {meta['input']} {meta['table']} {mode}\n"]
        return lines

    transform.has_side_effects = False  # type: ignore[attr-defined]
    transform.dagster_bento = True  # type: ignore[attr-defined]
    return transform


# ---------------------------------------------------------------------------------------------
# the extension hooks


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext dagster_bento``: register the magics and the metadata-form transformer. Nothing else
    happens at load (no project lookup, no connection): in a scheduled run's sandbox it is harmless."""
    magics = _make_magics_class()(ipython)
    ipython.register_magics(magics)
    transformers = ipython.input_transformers_cleanup
    transformers[:] = [t for t in transformers if not getattr(t, "dagster_bento", False)]
    transformers.append(_metadata_transformer(magics))


def unload_ipython_extension(ipython: Any) -> None:
    transformers = ipython.input_transformers_cleanup
    transformers[:] = [t for t in transformers if not getattr(t, "dagster_bento", False)]
    for kind in ("cell", "line"):
        for name in ("bento_sql", "bento_write", "bento_zone", "bento_notebook", "bento_status"):
            ipython.magics_manager.magics[kind].pop(name, None)


def __getattr__(name: str) -> Any:  # BentoMagics is built lazily so importing this module needs no IPython
    if name == "BentoMagics":
        return _make_magics_class()
    raise AttributeError(name)

