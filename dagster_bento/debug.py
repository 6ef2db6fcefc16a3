"""Debugging from the terminal: recent runs and one run's story, read from the Dagster instance.

``dagster-bento runs`` and ``dagster-bento show`` are thin wrappers of `list_runs`/`describe_run` (plain
data) and `format_runs`/`format_run` (text). Everything comes from what a run leaves behind:

* the Dagster instance (``DAGSTER_HOME``): run records (status, tags such as ``dagster/partition`` and
  ``dagster/schedule_name``, start and end), step events (a bento step's key is its schedule entry name),
  the structured failure (a `DagsterBentoError` is a `dagster.Failure`: its metadata carries notebook,
  cell and the kept executed notebook), materializations (table, rows, kept notebook) and the run's log
  lines (``cell N: fetched R rows into X``);
* the kept executed notebook: the failing cell's outputs (ename, evalue, traceback), each replaced
  cell's original source (``cell.metadata.bento.original_source``) and the rewrite record
  (``nb.metadata.dagster_bento``: parameters, SQL and write cells), from which the tables each SQL cell
  read are re-derived with the same analysis as the load (`project.render`, `sql.analyse_query`).

Only public Dagster APIs are used (``DagsterInstance.get_run_records``, ``all_logs``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

__all__ = ["RunDetail", "RunSummary", "describe_run", "format_run", "format_runs", "list_runs"]

DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"
_FETCHED = re.compile(r"^cell (\d+): fetched (\d+) rows into (\w+)")
_KEPT = re.compile(r"(?:executed notebook is kept at|executed notebook kept at) (\S+\.ipynb)")
_EXECUTING = re.compile(r"^executing (\S+\.ipynb)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str  # SUCCESS, FAILURE, STARTED, CANCELED, ...
    schedules: tuple[str, ...]  # bento schedule entries run (the steps' keys)
    dagster_schedule: str | None  # the Dagster schedule that launched it, if any
    partition: str | None
    start: str | None  # ISO 8601, UTC
    duration_s: float | None
    notebook: str | None  # project-relative notebook path
    failing_cell: int | None  # index in the original notebook
    error: str | None  # first line of the failure

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunDetail:
    summary: RunSummary
    cell_source: str | None  # the failing cell as the author wrote it
    ename: str | None
    evalue: str | None
    traceback: str | None  # plain text (ANSI colours removed)
    error_message: str | None  # the full failure message
    inputs: tuple[dict[str, Any], ...]  # {"cell", "output", "rows", "tables"}
    outputs: tuple[dict[str, Any], ...]  # {"cell", "table", "mode", "rows_written", "rows_in_table"}
    parameters: Mapping[str, Any]
    executed_notebook: str | None
    executed_html: str | None  # where the run renders its HTML copy (in the background, after the run)
    run_url: str
    executed_notebook_url: str | None = None  # its page in the Dagster UI (failure metadata, when configured)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["summary"] = self.summary.to_dict()
        return out


# ---------------------------------------------------------------------------------------------
# reading the instance


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def _meta_value(value: Any) -> Any:
    """The plain value of a Dagster metadata entry (path, text, int, json, ...)."""
    return getattr(value, "value", value)  # every MetadataValue holds its plain value in ``.value``


@dataclasses.dataclass
class _RunFacts:
    steps: list[str] = dataclasses.field(default_factory=list)
    notebook: str | None = None
    failure: Any = None  # StepFailureData of the first failed step
    failure_step: str | None = None
    run_failure: str | None = None  # message of a run-level failure
    materializations: list[Any] = dataclasses.field(default_factory=list)
    fetched: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)  # cell -> (rows, output)
    kept: str | None = None
    kept_url: str | None = None


def _facts(instance: dg.DagsterInstance, run_id: str) -> _RunFacts:
    facts = _RunFacts()
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            text = entry.user_message or ""
            match = _FETCHED.match(text)
            if match:
                facts.fetched[int(match.group(1))] = (int(match.group(2)), match.group(3))
            match = _EXECUTING.match(text)
            if match and facts.notebook is None:
                facts.notebook = match.group(1)
            match = _KEPT.search(text)
            if match:
                facts.kept = match.group(1)
            continue
        kind = event.event_type_value
        if kind == "STEP_START" and event.step_key and event.step_key not in facts.steps:
            facts.steps.append(event.step_key)
        elif kind == "STEP_FAILURE" and facts.failure is None:
            facts.failure, facts.failure_step = event.step_failure_data, event.step_key
        elif kind in ("PIPELINE_FAILURE", "RUN_FAILURE") and facts.run_failure is None:
            facts.run_failure = entry.user_message or event.message
        elif kind == "ASSET_MATERIALIZATION":
            facts.materializations.append(event.event_specific_data.materialization)
    user = _user_failure(facts)
    if user is not None:
        md = user.metadata or {}
        if "notebook" in md:
            facts.notebook = str(_meta_value(md["notebook"]))
        if "executed_notebook" in md:
            facts.kept = str(_meta_value(md["executed_notebook"]))
        if "executed_notebook_url" in md:
            facts.kept_url = str(_meta_value(md["executed_notebook_url"]))
    for mat in facts.materializations:
        kept = mat.metadata.get("dagster_bento/executed_notebook")
        if kept is not None and facts.kept is None:
            facts.kept = str(_meta_value(kept))
    return facts


def _user_failure(facts: _RunFacts) -> Any:
    return getattr(facts.failure, "user_failure_data", None) if facts.failure is not None else None


def _failing_cell(facts: _RunFacts) -> int | None:
    user = _user_failure(facts)
    if user is not None and "cell" in (user.metadata or {}):
        value = _meta_value(user.metadata["cell"])
        return int(value) if isinstance(value, int) else None
    return None


def _error_text(facts: _RunFacts) -> str | None:
    user = _user_failure(facts)
    if user is not None and user.description:
        return user.description
    if facts.failure is not None and facts.failure.error is not None:
        return facts.failure.error.message.strip()
    return facts.run_failure


def _summary(record: Any, facts: _RunFacts) -> RunSummary:
    run = record.dagster_run
    start, end = record.start_time, record.end_time
    duration = (end - start) if start is not None and end is not None else None
    if duration is None and start is not None and run.status.value in ("STARTED", "STARTING"):
        duration = dt.datetime.now(dt.timezone.utc).timestamp() - start
    error = _error_text(facts)
    return RunSummary(
        run_id=run.run_id, status=run.status.value, schedules=tuple(facts.steps),
        dagster_schedule=run.tags.get("dagster/schedule_name"), partition=run.tags.get("dagster/partition"),
        start=_iso(start if start is not None else record.create_timestamp.timestamp()),
        duration_s=round(duration, 2) if duration is not None else None, notebook=facts.notebook,
        failing_cell=_failing_cell(facts), error=error.strip().splitlines()[0] if error else None)


def _matches(query: str, summary: RunSummary) -> bool:
    query = query.strip()
    names = {*summary.schedules, summary.dagster_schedule}
    if summary.notebook:
        path = Path(summary.notebook)
        names |= {summary.notebook, path.name, path.stem}
    q = Path(query)
    return query in names or q.name in names or q.stem in names


def list_runs(instance: dg.DagsterInstance, notebook_or_schedule: str | None = None, failed: bool = False,
              limit: int = 20) -> list[RunSummary]:
    """The most recent runs, newest first: all, or those of one notebook (path, file name or stem) or
    schedule entry; ``failed`` keeps failed runs only."""
    filters = dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]) if failed else None
    out: list[RunSummary] = []
    cursor = None
    scanned, budget = 0, max(limit * 10, 200) if notebook_or_schedule else limit
    while len(out) < limit and scanned < budget:
        page = instance.get_run_records(filters=filters, limit=min(100, budget - scanned), cursor=cursor)
        if not page:
            break
        for record in page:
            scanned += 1
            summary = _summary(record, _facts(instance, record.dagster_run.run_id))
            if notebook_or_schedule is None or _matches(notebook_or_schedule, summary):
                out.append(summary)
                if len(out) >= limit:
                    break
        cursor = page[-1].dagster_run.run_id
    return out


# ---------------------------------------------------------------------------------------------
# one run


def _read_kept(path: str | None) -> Any:
    if not path or not Path(path).is_file():
        return None
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 -- a damaged kept notebook still leaves the instance's facts
        return None


def _cell_text(value: Any) -> str:
    return value if isinstance(value, str) else "".join(value or [])


def _error_output(nb: Any) -> tuple[int, Any, Any] | None:
    """(index in the kept notebook, cell, error output) of the cell that raised."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return index, cell, output
    return None


def _original_source(cell: Any) -> str:
    meta = cell.get("metadata", {}).get("bento")
    if isinstance(meta, dict) and isinstance(meta.get("original_source"), str):
        return meta["original_source"]
    return _cell_text(cell.get("source"))


def _tables_by_cell(nb: Any, parameters: Mapping[str, Any], default_schema: str, dialect: str | None
                    ) -> dict[int, tuple[str, ...]]:
    """Re-derive the tables each SQL cell read, with the load's own rendering and analysis."""
    from dagster_bento.execution.rewrite import restore_original
    from dagster_bento.notebook import parse_notebook_node
    from dagster_bento.project import RenderError, render, template_context
    from dagster_bento.sql import SqlAnalysisError, analyse_query

    try:
        parsed = parse_notebook_node(restore_original(nb), "kept")
    except Exception:  # noqa: BLE001 -- best effort: the run's facts stand without the tables
        return {}
    ds = str(parameters.get("ds") or "")
    context = template_context({**parsed.parameters, **parameters}, ds)
    out: dict[int, tuple[str, ...]] = {}
    for cell in parsed.sql_cells:
        try:
            sql = render(cell.sql, context)
            out[cell.index] = tuple(analyse_query(sql, default_schema=default_schema, dialect=dialect).tables)
        except (RenderError, SqlAnalysisError, ValueError):
            continue
    return out


def _project_settings(project_dir: Path | None) -> tuple[str, str | None, str | None]:
    """(default schema, dialect, webserver URL) of the project, or defaults."""
    if project_dir is None:
        return "main", None, None
    from dagster_bento.project import project_settings

    config, _policy, default_schema, dialect, _problems = project_settings(Path(project_dir))
    webserver = (config.notifications or {}).get("webserver_url")
    return default_schema, dialect, webserver if isinstance(webserver, str) else None


def describe_run(instance: dg.DagsterInstance, run_id: str, *, project_dir: Path | str | None = None,
                 webserver_url: str | None = None) -> RunDetail:
    """Everything needed to debug one run. ``run_id`` may be a unique prefix (as the UI shows it).
    ``project_dir`` gives the default schema and dialect used to name the tables each SQL cell read, and
    ``notifications.webserver_url`` for the run page link."""
    record = _find_record(instance, run_id)
    run_id = record.dagster_run.run_id
    facts = _facts(instance, run_id)
    summary = _summary(record, facts)
    default_schema, dialect, configured_url = _project_settings(Path(project_dir) if project_dir else None)
    nb = _read_kept(facts.kept)
    rewrite: Mapping[str, Any] = (nb.metadata.get("dagster_bento") or {}) if nb is not None else {}
    parameters = dict(rewrite.get("parameters") or {})
    cell_source = ename = evalue = traceback = None
    failing = summary.failing_cell
    if nb is not None:
        found = _error_output(nb)
        if found is not None:
            index, cell, output = found
            cell_source = _original_source(cell)
            ename, evalue = output.get("ename"), output.get("evalue")
            traceback = _ANSI.sub("", "\n".join(output.get("traceback") or []))
            if failing is None:
                from dagster_bento.execution.rewrite import original_index

                failing = original_index(nb, index)
        elif failing is not None:  # a failure at a SQL or write cell (fetch, output, zone): show that cell
            cell_source = _cell_by_original_index(nb, failing)
    if failing != summary.failing_cell:
        summary = dataclasses.replace(summary, failing_cell=failing)
    if facts.failure is not None and facts.failure.error is not None and traceback is None:
        traceback = _ANSI.sub("", "".join(facts.failure.error.stack or [])).strip() or None
    tables = _tables_by_cell(nb, parameters, default_schema, dialect) if nb is not None else {}
    inputs = []
    for cell in rewrite.get("rewritten_cells") or []:
        if cell.get("kind") == "sql":
            index = cell.get("cell")
            rows = facts.fetched.get(index, (None, None))[0]
            inputs.append({"cell": index, "output": cell.get("output"), "rows": rows,
                           "tables": list(tables.get(index, ()))})
    if not inputs:
        inputs = [{"cell": i, "output": out, "rows": rows, "tables": []} for i, (rows, out) in sorted(facts.fetched.items())]
    materialized = {str(_meta_value(m.metadata.get("dagster/table_name"))): m for m in facts.materializations}
    outputs = []
    for cell in rewrite.get("rewritten_cells") or []:
        if cell.get("kind") == "write":
            mat = materialized.get(cell.get("table"))
            outputs.append({
                "cell": cell.get("cell"), "table": cell.get("table"), "mode": _write_mode(nb, cell.get("cell")),
                "rows_written": _meta_value(mat.metadata["dagster_bento/rows_written"]) if mat is not None
                and "dagster_bento/rows_written" in mat.metadata else None,
                "rows_in_table": _meta_value(mat.metadata["dagster/row_count"]) if mat is not None
                and "dagster/row_count" in mat.metadata else None})
    html = str(Path(facts.kept).with_suffix(".html")) if facts.kept else None
    base = (webserver_url or configured_url or DEFAULT_WEBSERVER_URL).rstrip("/")
    return RunDetail(summary=summary, cell_source=cell_source, ename=ename, evalue=evalue, traceback=traceback,
                     error_message=_error_text(facts), inputs=tuple(inputs), outputs=tuple(outputs),
                     parameters=parameters, executed_notebook=facts.kept,
                     executed_html=html if facts.kept and Path(facts.kept).is_file() else None,
                     run_url=f"{base}/runs/{run_id}", executed_notebook_url=facts.kept_url)


def _find_record(instance: dg.DagsterInstance, run_id: str) -> Any:
    records = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run_id]), limit=1)
    if records:
        return records[0]
    if len(run_id) >= 4:
        matches = [r for r in instance.get_run_records(limit=1000) if r.dagster_run.run_id.startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise LookupError(f"run id prefix {run_id!r} matches {len(matches)} runs; give more characters")
    raise LookupError(f"no run {run_id!r} in the Dagster instance (DAGSTER_HOME); list runs with "
                      "`dagster-bento runs`")


def _cell_by_original_index(nb: Any, index: int) -> str | None:
    from dagster_bento.execution.rewrite import original_index

    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", []) or []
        if {"bento-setup", "injected-parameters"} & set(tags):
            continue
        if original_index(nb, i) == index:
            return _original_source(cell)
    return None


def _write_mode(nb: Any, index: int | None) -> str | None:
    if nb is None or index is None:
        return None
    from dagster_bento.execution.rewrite import original_index

    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("bento")
        if isinstance(meta, dict) and meta.get("type") == "write" and original_index(nb, i) == index:
            return meta.get("mode") or "overwrite"
    return None


# ---------------------------------------------------------------------------------------------
# text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def format_runs(runs: Sequence[RunSummary]) -> str:
    """One line per run: id, status, schedule, partition, start, duration, failing cell."""
    if not runs:
        return "no runs found"
    header = ("RUN", "STATUS", "SCHEDULE", "PARTITION", "START (UTC)", "DURATION", "FAILED AT")
    rows = [header]
    for r in runs:
        where = ""
        if r.status == "FAILURE":
            where = f"{r.notebook or '?'} cell {r.failing_cell}" if r.failing_cell is not None else (r.error or "")[:60]
        rows.append((r.run_id[:8], r.status, ",".join(r.schedules) or r.dagster_schedule or "-", r.partition or "-",
                     (r.start or "-").replace("+00:00", ""), _duration(r.duration_s), where))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + "  " + str(row[-1])
                     for row in rows).rstrip()


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def format_run(detail: RunDetail) -> str:
    s = detail.summary
    lines = [f"run {s.run_id}  {s.status}",
             f"  schedule: {', '.join(s.schedules) or '-'}"
             + (f" (launched by {s.dagster_schedule})" if s.dagster_schedule else ""),
             f"  notebook: {s.notebook or '-'}",
             f"  partition: {s.partition or '-'}   start: {s.start or '-'}   duration: {_duration(s.duration_s)}"]
    if detail.parameters:
        lines.append("  parameters: " + ", ".join(f"{k}={v!r}" for k, v in detail.parameters.items()))
    if s.status == "FAILURE":
        lines.append("")
        where = f"cell {s.failing_cell}" if s.failing_cell is not None else "the run"
        lines.append(f"failed at {where}" + (f": {detail.ename}: {detail.evalue}" if detail.ename else ""))
        if detail.cell_source:
            lines += ["  source:", _indent(detail.cell_source)]
        if detail.error_message:
            lines += ["  error:", _indent(detail.error_message)]
        if detail.traceback:
            lines += ["  traceback:", _indent(detail.traceback)]
    lines.append("")
    lines.append("inputs:")
    for i in detail.inputs or ():
        rows = "?" if i["rows"] is None else i["rows"]
        lines.append(f"  cell {i['cell']}: {i['output']} <- {', '.join(i['tables']) or '?'} ({rows} rows)")
    if not detail.inputs:
        lines.append("  (none)")
    lines.append("outputs:")
    for o in detail.outputs or ():
        done = (f"{o['rows_written']} rows written, {o['rows_in_table']} in the table"
                if o["rows_written"] is not None else "not written")
        lines.append(f"  cell {o['cell']}: {o['table']} ({o['mode'] or '?'}): {done}")
    if not detail.outputs:
        lines.append("  (none)")
    lines.append("")
    lines.append(f"kept notebook: {detail.executed_notebook or '-'}")
    if detail.executed_notebook_url:
        lines.append(f"notebook page: {detail.executed_notebook_url}")
    html = detail.executed_html
    pending = "  (being rendered; it appears a few seconds after the run)" if html and not Path(html).is_file() else ""
    lines.append(f"html:          {html or '-'}{pending}")
    lines.append(f"run page:      {detail.run_url}")
    return "\n".join(lines)

