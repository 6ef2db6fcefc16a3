"""Reviewed scheduling: ``dagster-bento schedule NOTEBOOK`` turns a notebook into a reviewable change.

The change (a git branch with one commit) holds the notebook, its schedule spec, a preview of the
generated pipeline (``reviews/<stem>/pipeline.md``: assets, edges, zones, rendered SQL, schedule) and
the result of a trial run (``reviews/<stem>/trial-<schedule>.ipynb`` plus its summary in the preview).
The trial run fetches and executes for real, in the sandbox, but uploads nothing.

Nothing committed carries warehouse data: the trial notebook is committed without outputs, attachments or
metadata beyond the allowlist of kept notebooks (no widget state, no execution records); the preview
shows row counts and a column's name only when the name is statically known — it occurs in the
notebook's source or in its SQL cells' analysed output columns — since a name built from data (a pivot
over customer names) is data; other columns show as ``column N`` with their type, and nested types
(whose field names may be data too) show their kind only. Every text from a user document is shown in
a code span or block whose fence is longer than any backtick run in it, so SQL cannot end its block.
"""

import dataclasses
import datetime as dt
import re
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
import yaml

from dagster_bento.errors import DagsterBentoError, DagsterBentoRunError
from dagster_bento.project import BentoProject, load_project
from dagster_bento.spec import BentoJob, spec_path_for
from dagster_bento.translator import DagsterBentoTranslator

REVIEWS_DIR = "reviews"


class DagsterBentoReviewError(DagsterBentoError):
    """The notebook cannot be proposed for scheduling (static problems, failed trial, git)."""


@dataclasses.dataclass
class ReviewResult:
    branch: str | None
    commit: str | None
    files: list[str]
    trials: list[dict[str, Any]]
    included: list[str] = dataclasses.field(default_factory=list)  # uncommitted files the schedule needed


def write_spec(notebook: Path, *, owners: Sequence[str], zone: str, name: str, cron: str | None,
               timezone: str, trigger: str | None, parameters: dict[str, Any] | None = None) -> Path:
    entry: dict[str, Any] = {"name": name}
    if parameters:
        entry["parameters"] = parameters
    if cron:
        entry.update(cron=cron, timezone=timezone)
    if trigger:
        entry["trigger"] = trigger
    path = spec_path_for(notebook)
    path.write_text(yaml.safe_dump({"owners": list(owners), "zone": zone, "schedules": [entry]}, sort_keys=False))
    return path


class _TrialLog:
    def __init__(self, lines: list[str]):
        self.lines = lines

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    def warning(self, msg: str) -> None:
        self.lines.append(f"WARNING {msg}")

    debug = info
    error = warning


@dataclasses.dataclass
class _TrialContext:
    """The little of an asset execution context a trial run needs."""

    run_id: str
    log: Any
    has_partition_key: bool = False
    partition_key: str | None = None


def trial_run(project: BentoProject, job: BentoJob, *, warehouse_url: str, artifacts_dir: Path,
              partition: str | None = None) -> dict[str, Any]:
    from dagster_bento.execution.runner import BentoInvocation
    from dagster_bento.resources import BentoResource

    resource = BentoResource.for_project(project, warehouse_url=warehouse_url).model_copy(
        update={"artifacts_dir": str(artifacts_dir), "html": False})
    lines: list[str] = []
    context = _TrialContext(run_id=f"trial-{uuid.uuid4()}", log=_TrialLog(lines),
                            has_partition_key=partition is not None, partition_key=partition)
    invocation = BentoInvocation(resource=resource, context=context, job=job, dry_run=True)
    started = dt.datetime.now(dt.timezone.utc)
    try:
        invocation.wait()
        status, error = "SUCCESS", None
    except DagsterBentoRunError as err:
        status, error = "FAILURE", str(err)
    return {"schedule": job.name, "status": status, "error": error, "started": started.isoformat(timespec="seconds"),
            "outputs": invocation.trial_outputs, "log": lines,
            "executed_notebook": str(invocation.executed_notebook) if invocation.executed_notebook else None}


def _fence(text: str, info: str = "") -> list[str]:
    """A fenced code block that ``text`` cannot end: the fence is longer than any backtick run in it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text.replace("\r", ""), fence]


def _code(value: Any) -> str:
    """An inline code span for any text (one line; pipes escaped for table cells)."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _mermaid_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./ -]", "_", text)


def _mermaid_id(text: str) -> str:
    return "n_" + re.sub(r"[^A-Za-z0-9_]", "_", text)


_NESTED = re.compile(r"^([A-Za-z0-9_]+)\s*[<(\[{]")


def _shown_type(arrow_type: str) -> str:
    """A column type without the field names nested types carry (those may come from data)."""
    if any(c in arrow_type for c in "<{:"):
        match = _NESTED.match(arrow_type)
        return f"{match.group(1) if match else 'nested'}<…>"
    return arrow_type


def known_column_names(project_dir: Path, job: BentoJob) -> set[str]:
    """Column names a trial may show: in the notebook's source (already in the commit) or produced by its
    SQL cells as analysed statically. Anything else may be a data value turned into a name."""
    known: set[str] = set()
    for cell in job.sql_cells:
        known.update(cell.output_columns)
        for out, deps in cell.column_lineage.items():
            known.add(out)
            known.update(col for _table, col in deps)
    try:
        nb = nbformat.read(project_dir / job.notebook_path, as_version=4)
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    except (OSError, ValueError):
        source = ""
    known.update(re.findall(r"[^\W\d]\w*", source))  # identifiers and words of string literals
    return known


def pipeline_preview(project: BentoProject, jobs: Sequence[BentoJob], trials: Sequence[dict[str, Any]]) -> str:
    translator = DagsterBentoTranslator()
    key = lambda table: translator.get_asset_key(table).to_user_string()  # noqa: E731
    out = [f"# Scheduling {_code(jobs[0].notebook_path)}", "",
           f"Owners: {', '.join(_code(o) for o in jobs[0].owners)} · zone {_code(jobs[0].zone)} · "
           f"spec {_code(jobs[0].spec.path)}", ""]
    graph = ["flowchart LR"]
    for job in jobs:
        graph.append(f'  {_mermaid_id(job.name)}[["{_mermaid_label(job.name)} (notebook)"]]')
        for table in job.tables_read:
            graph.append(f'  {_mermaid_id(table)}[("{_mermaid_label(key(table))}")] --> {_mermaid_id(job.name)}')
        for table in job.tables_written:
            graph.append(f'  {_mermaid_id(job.name)} --> {_mermaid_id(table)}[("{_mermaid_label(key(table))}")]')
    out += ["## Generated pipeline", "", *_fence("\n".join(graph), "mermaid"), ""]
    for job in jobs:
        when = (f"cron {_code(job.entry.cron)} ({_code(job.entry.timezone)})" if job.entry.cron
                else "when all upstream tables landed" if job.entry.trigger else "manual only")
        out += [f"### Schedule {_code(job.name)} — {when}", "",
                f"Parameters: {_code(job.display_parameters)} · code version {_code(job.code_version)}"
                + (f" · daily partitions from {_code(job.spec.start_date)}" if job.spec.partitioned else ""), "",
                "| asset | mode | depends on | purpose-zone label |", "|---|---|---|---|"]
        for cell in job.write_cells:
            label = project.computed_labels.get(cell.table)
            out.append(f"| {_code(key(cell.table))} (cell {cell.index}) | {_code(cell.mode)} | "
                       f"{', '.join(_code(key(t)) for t in job.tables_read)} | "
                       f"{_code(', '.join(sorted(label))) if label is not None else 'not enforced'} |")
        for cell in job.sql_cells:
            out += ["", f"SQL cell {cell.index} → {_code(cell.output)} reads {', '.join(_code(t) for t in cell.tables)}:",
                    "", *_fence(cell.sql.strip(), "sql")]
        out.append("")
    out += ["## Trial run (fetch + sandboxed execution; nothing uploaded)", ""]
    known = {job.name: known_column_names(project.project_dir, job) for job in jobs}
    for trial in trials:
        out.append(f"### {_code(trial['schedule'])}: {trial['status']} ({trial['started']})")
        out.append("")
        if trial["error"]:
            out += [*_fence(str(trial["error"])), ""]
        names = known.get(trial["schedule"], set())
        for o in trial["outputs"]:  # counts, types and statically known names only: no data values
            cols = ", ".join(f"{_code(c) if c in names else f'column {i}'} {_code(_shown_type(str(t)))}"
                             for i, (c, t) in enumerate(o["columns"].items()))
            hidden = sum(1 for c in o["columns"] if c not in names)
            note = (f" ({hidden} column name(s) not shown: not in the notebook's source, may come from data)"
                    if hidden else "")
            out.append(f"- {_code(o['table'])}: {int(o['rows'])} rows; columns: {cols}{note}; "
                       f"label {_code(o['label'])}")
        if trial["executed_notebook"]:
            out.append(f"- executed notebook: {_code(trial['executed_notebook'])}")
        out.append("")
    return "\n".join(out)


def _git(project_dir: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=project_dir, capture_output=True, text=True)
    if done.returncode != 0:
        raise DagsterBentoReviewError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def propose_schedule(project_dir: Path, notebook: Path, *, warehouse_url: str | None = None, trial: bool = True,
                     git: bool = True, branch: str | None = None, partition: str | None = None) -> ReviewResult:
    """Check, preview, trial-run and commit the scheduling of one notebook on a new branch."""
    from dagster_bento.assets import resolve_warehouse_url

    project_dir = project_dir.resolve()
    notebook = notebook.resolve()
    display = notebook.relative_to(project_dir).as_posix()
    spec = spec_path_for(notebook)
    if not spec.exists():
        raise DagsterBentoReviewError(f"{display} has no schedule spec {spec.name}; pass --owner, --zone and "
                                      "--cron or --trigger to write one")
    project = load_project(project_dir, warehouse_url=warehouse_url, use_cache=False)
    spec_display = spec.relative_to(project_dir).as_posix()
    mine = [p for p in project.errors if p.notebook in (display, spec_display)]
    if mine:
        raise DagsterBentoReviewError("the notebook cannot be scheduled yet:\n" + "\n".join(f"  - {p}" for p in mine))
    carried = data_in_notebook(notebook)
    if carried:
        raise DagsterBentoReviewError(
            f"{display} carries saved results, which would be committed with it:\n"
            + "\n".join(f"  - {display} {p}" for p in carried)
            + "\nClear them first (Jupyter: Edit → Clear Outputs of All Cells, and remove widget state: "
              f"`jupyter nbconvert --clear-output --inplace {display}` does both), then run this again.")
    jobs = [j for j in project.jobs if j.notebook_path == display]
    review_dir = project_dir / REVIEWS_DIR / notebook.stem
    review_dir.mkdir(parents=True, exist_ok=True)
    url = resolve_warehouse_url(project_dir, project.config.warehouse_url, warehouse_url)
    trials = []
    if trial:
        for job in jobs:
            part = partition or (job.spec.start_date if job.spec.partitioned else None)
            result = trial_run(project, job, warehouse_url=url, artifacts_dir=review_dir / "trial",
                               partition=part)
            if result["executed_notebook"]:
                # warehouse data must not reach git: the review gets the notebook without outputs,
                # the full executed copy stays in the (ignored) artifacts directory
                full = Path(result["executed_notebook"])
                local = project.project_dir / project.config.artifacts_dir / "reviews" / full.name
                local.parent.mkdir(parents=True, exist_ok=True)
                full.replace(local)
                kept = review_dir / f"trial-{job.name}.ipynb"
                nbformat.write(_without_outputs(nbformat.read(local, as_version=4)), kept)
                if result["error"]:
                    result["error"] = result["error"].replace(str(full), str(local))
                result["executed_notebook"] = kept.relative_to(project_dir).as_posix()
                result["executed_notebook_with_outputs"] = str(local)
            trials.append(result)
        _remove_tree(review_dir / "trial")
    preview = review_dir / "pipeline.md"
    preview.write_text(pipeline_preview(project, jobs, trials))
    files = [display, spec_display, *sorted(p.relative_to(project_dir).as_posix() for p in review_dir.iterdir())]
    failed = [t for t in trials if t["status"] != "SUCCESS"]
    if failed:
        raise DagsterBentoReviewError(
            f"the trial run of {', '.join(t['schedule'] for t in failed)} failed; see {preview} — nothing was "
            f"committed.\n{failed[0]['error']}")
    if not git:
        return ReviewResult(None, None, files, trials)
    # The branch must pass `check` on its own: project files and upstream notebooks this schedule needs
    # that have uncommitted changes go into the same commit, named in its message for the reviewer.
    needed = _uncommitted(project_dir, _needed_files(project, jobs, display, spec_display))
    files += needed
    branch = branch or f"bento/schedule-{notebook.stem}"
    _git(project_dir, "switch", "-c", branch)
    _git(project_dir, "add", "--", *files)
    summary = "; ".join(f"{j.name}: {', '.join(j.tables_written)}" for j in jobs)
    note = ("\nAlso commits uncommitted changes this schedule needs: " + ", ".join(needed)) if needed else ""
    # only these files, whatever else the user had staged
    _git(project_dir, "commit", "-m", f"Schedule {display}\n\n{summary}\nTrial run: "
         + ("passed" if trials else "skipped") + f"\nPreview: {preview.relative_to(project_dir)}{note}",
         "--", *files)
    return ReviewResult(branch, _git(project_dir, "rev-parse", "HEAD"), files, trials, needed)


def _needed_files(project: BentoProject, jobs: Sequence[BentoJob], display: str, spec_display: str) -> list[str]:
    """The project's own files and the notebooks (with specs) that write the tables these jobs read."""
    from dagster_bento.project import CONFIG_FILE, POLICY_FILE

    reads = {t for j in jobs for t in j.tables_read}
    upstream = {path for j in project.jobs if set(j.tables_written) & reads
                for path in (j.notebook_path, j.spec.path)}
    candidates = [POLICY_FILE, CONFIG_FILE, *sorted(upstream - {display, spec_display})]
    return [c for c in candidates if (project.project_dir / c).exists()]


def _uncommitted(project_dir: Path, paths: Sequence[str]) -> list[str]:
    return [p for p in paths if _git(project_dir, "status", "--porcelain", "--untracked-files=all", "--", p)]


def data_in_notebook(path: Path) -> list[str]:
    """Where the notebook file holds results of an interactive session (outputs, widget state, pasted
    attachments): those may be warehouse data, and the review commits the file as it is."""
    nb = nbformat.read(path, as_version=4)
    found = []
    if "widgets" in nb.metadata:
        found.append("[notebook metadata]: widget state (`metadata.widgets`)")
    for i, cell in enumerate(nb.cells):
        if cell.get("outputs"):
            found.append(f"[cell {i}]: {len(cell.outputs)} saved output(s)")
        if cell.get("attachments"):
            found.append(f"[cell {i}]: attachments {', '.join(sorted(cell.attachments))}")
        if isinstance(cell.metadata.get("widgets"), dict):
            found.append(f"[cell {i}]: widget state in cell metadata")
    return found


def _without_outputs(nb: Any) -> Any:
    """The trial notebook as committed: sources only. Outputs, attachments and every metadata key outside
    the kept-notebook allowlist (widget state, execution records, editor data) are dropped."""
    from dagster_bento.execution import artifacts

    nb.metadata = artifacts.allowed_notebook_metadata(nb.get("metadata"))
    for cell in nb.cells:
        cell.metadata = artifacts.allowed_cell_metadata(cell.get("metadata"))
        cell.pop("attachments", None)
        if cell.cell_type == "code":
            had_error = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            cell.outputs = []
            if had_error:
                cell.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                                       text="[this cell raised; see the trial summary]\n")]
    nbformat.validate(nb)
    return nb


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
