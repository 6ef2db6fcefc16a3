"""Reviewed scheduling: ``dagster-bento schedule NOTEBOOK`` turns a notebook into a reviewable change.

The change (a git branch with one commit) holds the notebook, its schedule spec, a preview of the
generated pipeline (``reviews/<stem>/pipeline.md``: assets, edges, zones, rendered SQL, schedule) and
the result of a trial run (``reviews/<stem>/trial-<schedule>.ipynb`` plus its summary in the preview).
The trial run fetches and executes for real, in the sandbox, but uploads nothing.
"""

import dataclasses
import datetime as dt
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


def pipeline_preview(project: BentoProject, jobs: Sequence[BentoJob], trials: Sequence[dict[str, Any]]) -> str:
    translator = DagsterBentoTranslator()
    key = lambda table: translator.get_asset_key(table).to_user_string()  # noqa: E731
    out = [f"# Scheduling `{jobs[0].notebook_path}`", "",
           f"Owners: {', '.join(jobs[0].owners)} · zone **{jobs[0].zone}** · spec `{jobs[0].spec.path}`", ""]
    out += ["## Generated pipeline", "", "```mermaid", "flowchart LR"]
    for job in jobs:
        out.append(f'  {job.name}[["{job.name} (notebook)"]]')
        for table in job.tables_read:
            out.append(f'  {table.replace(".", "_")}[("{key(table)}")] --> {job.name}')
        for table in job.tables_written:
            out.append(f'  {job.name} --> {table.replace(".", "_")}[("{key(table)}")]')
    out += ["```", ""]
    for job in jobs:
        when = (f"cron `{job.entry.cron}` ({job.entry.timezone})" if job.entry.cron
                else "when all upstream tables landed" if job.entry.trigger else "manual only")
        out += [f"### Schedule `{job.name}` — {when}", "",
                f"Parameters: `{job.display_parameters}` · code version `{job.code_version}`"
                + (f" · daily partitions from {job.spec.start_date}" if job.spec.partitioned else ""), "",
                "| asset | mode | depends on | purpose-zone label |", "|---|---|---|---|"]
        for cell in job.write_cells:
            label = project.computed_labels.get(cell.table)
            out.append(f"| `{key(cell.table)}` (cell {cell.index}) | {cell.mode} | "
                       f"{', '.join(f'`{key(t)}`' for t in job.tables_read)} | "
                       f"{', '.join(sorted(label)) if label is not None else 'not enforced'} |")
        for cell in job.sql_cells:
            out += ["", f"SQL cell {cell.index} → `{cell.output}` reads {', '.join(cell.tables)}:", "",
                    "```sql", cell.sql.strip(), "```"]
        out.append("")
    out += ["## Trial run (fetch + sandboxed execution; nothing uploaded)", ""]
    for trial in trials:
        out.append(f"### `{trial['schedule']}`: {trial['status']} ({trial['started']})")
        out.append("")
        if trial["error"]:
            out += ["```", trial["error"], "```", ""]
        for o in trial["outputs"]:  # names, counts and types only: no data values reach the review
            cols = ", ".join(f"{c} {t}" for c, t in o["columns"].items())
            out.append(f"- `{o['table']}`: {o['rows']} rows; columns: {cols}; label {o['label']}")
        if trial["executed_notebook"]:
            out.append(f"- executed notebook: `{trial['executed_notebook']}`")
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
    branch = branch or f"bento/schedule-{notebook.stem}"
    _git(project_dir, "switch", "-c", branch)
    _git(project_dir, "add", "--", *files)
    summary = "; ".join(f"{j.name}: {', '.join(j.tables_written)}" for j in jobs)
    # only these files, whatever else the user had staged
    _git(project_dir, "commit", "-m", f"Schedule {display}\n\n{summary}\nTrial run: "
         + ("passed" if trials else "skipped") + f"\nPreview: {preview.relative_to(project_dir)}", "--", *files)
    return ReviewResult(branch, _git(project_dir, "rev-parse", "HEAD"), files, trials)


def _without_outputs(nb: Any) -> Any:
    for cell in nb.cells:
        if cell.cell_type == "code":
            had_error = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            cell.outputs = []
            if had_error:
                cell.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                                       text="[this cell raised; see the trial summary]\n")]
    return nb


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
