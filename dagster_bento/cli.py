"""Step 7: the ``dagster-bento`` command line.

``inspect NOTEBOOK`` shows what a notebook declares; ``check [PROJECT_DIR]`` lists every static problem
(exit 1 when there is an error); ``graph`` prints the asset graph; ``seed-example`` loads the TPC-H
sample into a warehouse; ``schedule`` proposes a reviewed schedule; ``kernel-pool`` keeps sandboxed
kernels started ahead of runs. ``--json`` output is a stable contract (see README).
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dagster_bento.notebook import ComputedDefault, parse_notebook
from dagster_bento.project import load_project, project_settings, resolve_job
from dagster_bento.redact import redact_text
from dagster_bento.spec import ScheduleEntry, load_schedule_spec, spec_path_for


def _project_dir_of(notebook: Path) -> Path:
    for parent in notebook.resolve().parents:
        if (parent / "notebooks").is_dir() and ((parent / "purpose_zones.yaml").exists()
                                                 or (parent / "bento.yaml").exists()):
            return parent
    return notebook.resolve().parent.parent


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.notebook)
    project_dir = _project_dir_of(path)
    display = path.resolve().relative_to(project_dir).as_posix() if path.resolve().is_relative_to(
        project_dir) else str(path)
    parsed = parse_notebook(path, display)
    problems = list(parsed.problems)
    _config, _policy, default_schema, dialect, _problems = project_settings(project_dir)
    spec_file = spec_path_for(path)
    spec, spec_problems = (load_schedule_spec(spec_file, spec_file.name, display) if spec_file.exists()
                           else (None, []))
    problems += spec_problems
    entries = list(spec.schedules) if spec else [ScheduleEntry("(defaults)", {})]
    schedules = []
    for entry in entries:
        job_spec = spec or _draft_spec(display)
        job, job_problems = resolve_job(parsed, job_spec, entry, default_schema=default_schema, dialect=dialect)
        problems += job_problems
        if job is None:
            continue
        schedules.append({
            "name": entry.name, "parameters": job.display_parameters, "cron": entry.cron,
            "trigger": entry.trigger, "code_version": job.code_version,
            "sql_cells": [{"cell": c.index, "output": c.output, "sql": c.sql, "tables_read": list(c.tables),
                           "column_lineage": {k: [f"{t}.{col}" for t, col in v] for k, v in c.column_lineage.items()}}
                          for c in job.sql_cells],
            "write_cells": [{"cell": w.index, "input": w.input, "table": w.table, "mode": w.mode}
                            for w in job.write_cells],
        })
    report = {
        "notebook": display, "sha256": parsed.sha256, "draft": spec is None,
        "parameters": {k: (repr(v) if isinstance(v, ComputedDefault) else v) for k, v in parsed.parameters.items()},
        "parameters_cell": parsed.parameters_cell,
        "cells": [{"cell": c.index, "kind": "sql", "output": c.output, "sql_template": c.sql}
                  for c in parsed.sql_cells]
        + [{"cell": c.index, "kind": "write", "input": c.input, "table_template": c.table, "mode": c.mode}
           for c in parsed.write_cells]
        + [{"cell": c.index, "kind": "parameters" if c.is_parameters else "code"} for c in parsed.code_cells],
        "owners": list(spec.owners) if spec else [], "zone": spec.zone if spec else None,
        "schedules": schedules,
        "problems": [p.to_dict() for p in sorted(set(problems))],
    }
    report["cells"].sort(key=lambda c: c["cell"])
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_inspect(report)
    return 1 if any(p["severity"] == "error" for p in report["problems"]) else 0


def _draft_spec(display: str) -> Any:
    from dagster_bento.spec import ScheduleSpec

    return ScheduleSpec(path="(draft)", sha256="", owners=(), zone="", schedules=())


def _print_inspect(report: dict[str, Any]) -> None:
    print(f"{report['notebook']}  ({'draft' if report['draft'] else 'zone ' + str(report['zone'])})")
    if report["parameters"]:
        print(f"  parameters (cell {report['parameters_cell']}): {report['parameters']}")
    for cell in report["cells"]:
        if cell["kind"] == "sql":
            print(f"  [cell {cell['cell']}] SQL -> {cell['output']}")
        elif cell["kind"] == "write":
            print(f"  [cell {cell['cell']}] WRITE {cell['input']} -> {cell['table_template']} ({cell['mode']})")
        else:
            print(f"  [cell {cell['cell']}] {cell['kind']}")
    for sched in report["schedules"]:
        print(f"  schedule {sched['name']} parameters={sched['parameters']} "
              f"{'cron ' + sched['cron'] if sched['cron'] else sched['trigger'] or 'manual'}")
        for c in sched["sql_cells"]:
            print(f"    cell {c['cell']} reads {', '.join(c['tables_read'])}")
            print("      " + c["sql"].replace("\n", "\n      "))
        for w in sched["write_cells"]:
            print(f"    cell {w['cell']} writes {w['table']} ({w['mode']})")
    for p in report["problems"]:
        print(f"  {p['severity'].upper()} {p['code']} cell {p['cell']}: {p['message']}")


def cmd_check(args: argparse.Namespace) -> int:
    project = load_project(Path(args.project_dir), use_cache=not args.no_cache)
    errors = project.errors
    if args.json:
        print(json.dumps({
            "project_dir": str(project.project_dir),
            "ok": not errors,
            "notebooks": len(project.notebooks), "schedules": len(project.jobs), "drafts": list(project.drafts),
            "problems": [p.to_dict() for p in project.problems],
        }, indent=2))
    else:
        for p in project.problems:
            print(f"{p.severity.upper():7} {p}")
        print(f"{len(project.notebooks)} notebooks, {len(project.jobs)} schedules, {len(project.drafts)} drafts: "
              f"{len(errors)} error(s), {len(project.problems) - len(errors)} warning(s)")
    return 1 if errors else 0


def cmd_graph(args: argparse.Namespace) -> int:
    from dagster_bento.assets import build_bento_definitions

    defs = build_bento_definitions(project_dir=args.project_dir)
    graph = defs.resolve_asset_graph()
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        kind = "source" if not node.is_materializable else f"notebook {node.metadata.get('dagster_bento/notebook')}"
        parents = ", ".join(sorted(p.to_user_string() for p in node.parent_keys)) or "-"
        zone = node.metadata.get("dagster_bento/purpose_zones")
        label = zone.data.get("label") if zone is not None else None
        print(f"{key.to_user_string():45} {kind:45} zones={label} <- {parents}")
    for sched in defs.schedules or []:
        print(f"schedule {sched.name}: {sched.cron_schedule} ({sched.execution_timezone})")
    for sensor in defs.sensors or []:
        print(f"sensor {sensor.name}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from dagster_bento.example import seed_example

    counts = seed_example(project_dir=Path(args.project_dir), warehouse_url=args.warehouse_url)
    for table, n in counts.items():
        print(f"{table}: {n} rows")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from dagster_bento.load import load_file

    result = load_file(project_dir=Path(args.project_dir), file=Path(args.file), table=args.table, zone=args.zone,
                       partition_column=args.partition_column, warehouse_url=args.warehouse_url)
    print(result.summary())
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from dagster_bento.review import propose_schedule, write_spec
    from dagster_bento.spec import spec_path_for

    notebook = Path(args.notebook)
    project_dir = Path(args.project_dir) if args.project_dir else _project_dir_of(notebook)
    spec = spec_path_for(notebook)
    created = not spec.exists()
    if created:
        if not (args.owner and args.zone and (args.cron or args.trigger)):
            print(f"{notebook} has no schedule spec: pass --owner, --zone and --cron or --trigger "
                  "(or write notebooks/<stem>.bento.yaml)", file=sys.stderr)
            return 2
        write_spec(notebook, owners=args.owner, zone=args.zone, name=args.name or notebook.stem,
                   cron=args.cron, timezone=args.timezone, trigger=args.trigger)
    try:
        result = propose_schedule(project_dir, notebook, warehouse_url=args.warehouse_url, trial=not args.no_trial,
                                  git=not args.no_git, branch=args.branch, partition=args.partition)
    except BaseException:
        if created:  # an unreviewed spec left behind would schedule the notebook on the next load
            spec.unlink(missing_ok=True)
        raise
    for trial in result.trials:
        print(f"trial {trial['schedule']}: {trial['status']}")
        for out in trial["outputs"]:
            print(f"  {out['table']}: {out['rows']} rows, {len(out['columns'])} columns")
    print("files: " + ", ".join(result.files))
    if result.included:
        print("also committed (uncommitted changes this schedule needs, for the reviewer to see): "
              + ", ".join(result.included))
    if result.branch:
        print(f"committed {result.commit[:12]} on branch {result.branch}: push it and open a review "
              f"(git push -u origin {result.branch})")
    return 0


def cmd_kernel_pool(args: argparse.Namespace) -> int:
    import logging
    import os
    from types import SimpleNamespace

    from dagster_bento.execution.pool import (
        DEFAULT_PRELOAD, KernelPoolServer, PoolError, pool_status, wait_until_ready,
    )
    from dagster_bento.project import load_config
    from dagster_bento.resources import BentoResource

    project_dir = Path(args.project_dir).resolve()
    config, problems = load_config(project_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    resource = BentoResource.for_project(SimpleNamespace(project_dir=project_dir, config=config), warehouse_url="")
    socket_path = Path(args.socket) if args.socket else resource.kernel_pool_socket
    if socket_path is None:
        print("kernel_pool is off for this project (bento.yaml or BENTO_KERNEL_POOL); pass --socket to serve "
              "anyway", file=sys.stderr)
        return 2
    try:
        if args.status or args.wait_ready is not None:
            status = (wait_until_ready(socket_path, count=args.size or 1, timeout_s=args.wait_ready)
                      if args.wait_ready is not None else pool_status(socket_path))
            print(json.dumps(status, indent=2))
            return 0
        sandbox = resource.sandbox_config()
        if sandbox.backend != "bwrap":
            print(f"the kernel pool serves bwrap-sandboxed kernels; this project runs sandbox={sandbox.backend}",
                  file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        preload = tuple(m for m in args.preload.split(",") if m) if args.preload is not None else DEFAULT_PRELOAD
        server = KernelPoolServer(sandbox, socket_path=socket_path, size=args.size or 1, run_root=resource.run_root,
                                  preload=preload, idle_exit_s=args.idle_exit)
        print(f"kernel pool for {project_dir}: {socket_path} (pid {os.getpid()}; Ctrl-C stops it)", flush=True)
        server.serve_forever()
    except (PoolError, OSError) as err:
        print(f"kernel pool: {redact_text(str(err))}", file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from types import SimpleNamespace

    from dagster_bento.execution import workdirs
    from dagster_bento.project import load_config
    from dagster_bento.resources import BentoResource

    run_root = args.run_root
    if run_root is None:
        project_dir = Path(args.project_dir).resolve()
        config, _ = load_config(project_dir)
        run_root = BentoResource.for_project(SimpleNamespace(project_dir=project_dir, config=config),
                                             warehouse_url="").run_root
    root = workdirs.run_root(run_root)
    removed = workdirs.sweep(root)
    print(f"deleted {len(removed)} stale run director{'y' if len(removed) == 1 else 'ies'} in {root}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    import dagster as dg

    from dagster_bento.debug import format_runs, list_runs

    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME
        found = list_runs(instance, args.notebook_or_schedule, failed=args.failed, limit=args.limit)
    if args.json:
        print(json.dumps([r.to_dict() for r in found], indent=2, default=str))
    else:
        print(format_runs(found))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import dagster as dg

    from dagster_bento.debug import describe_run, format_run
    from dagster_bento.ipython import find_project_dir

    project_dir = Path(args.project_dir) if args.project_dir else find_project_dir(Path.cwd())
    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME
        try:
            detail = describe_run(instance, args.run_id, project_dir=project_dir, webserver_url=args.webserver_url)
        except LookupError as err:
            print(err, file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(detail.to_dict(), indent=2, default=str))
    else:
        print(format_run(detail))
    if args.open:
        if not detail.executed_notebook:
            print("this run kept no executed notebook", file=sys.stderr)
            return 1
        import shutil
        import subprocess

        jupyter = shutil.which("jupyter")
        if jupyter:
            return subprocess.call([jupyter, "lab", detail.executed_notebook])
        import webbrowser

        webbrowser.open((detail.executed_html and Path(detail.executed_html).as_uri())
                        or Path(detail.executed_notebook).as_uri())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dagster-bento", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show a notebook's cells, rendered SQL, tables read and outputs")
    p.add_argument("notebook")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("check", help="list every static problem in the project (exit 1 on any error)")
    p.add_argument("project_dir", nargs="?", default=".")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-cache", action="store_true", help="re-parse every notebook")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("graph", help="print the asset graph the factory builds")
    p.add_argument("project_dir", nargs="?", default=".")
    p.set_defaults(func=cmd_graph)
    p = sub.add_parser("seed-example", help="load the TPC-H sample into the example warehouse")
    p.add_argument("project_dir", nargs="?", default=".")
    p.add_argument("--warehouse-url", default=None)
    p.set_defaults(func=cmd_seed)
    p = sub.add_parser("load", help="load a CSV or Parquet file into a table of the development warehouse, with "
                                    "exact types, its purpose-zone label and a landing; adds the label to "
                                    "purpose_zones.yaml for review")
    p.add_argument("file", help="a .csv, .csv.gz or .parquet file (a CSV may have a <file>.schema.json sidecar)")
    p.add_argument("table", help="schema.table to replace (or one partition of, with --partition-column)")
    p.add_argument("--zone", default=None, help="the table's purpose zone (needed unless the policy declares it)")
    p.add_argument("--partition-column", default=None,
                   help="replace only the rows of the file's single value of this column (e.g. ds)")
    p.add_argument("--project-dir", default=".")
    p.add_argument("--warehouse-url", default=None)
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("schedule", help="propose scheduling a notebook: spec, pipeline preview and trial run, "
                                        "committed on a new git branch for review")
    p.add_argument("notebook")
    p.add_argument("--project-dir", default=None)
    p.add_argument("--owner", action="append", help="owner e-mail or team:<name> (repeatable); writes the spec")
    p.add_argument("--zone", help="purpose zone the notebook runs in")
    p.add_argument("--cron", help="cron expression of the schedule entry")
    p.add_argument("--timezone", default="UTC")
    p.add_argument("--trigger", choices=["upstream_landed"])
    p.add_argument("--name", help="schedule entry name (default: the notebook stem)")
    p.add_argument("--warehouse-url", default=None)
    p.add_argument("--partition", default=None, help="ds of the trial run for partitioned notebooks")
    p.add_argument("--branch", default=None)
    p.add_argument("--no-trial", action="store_true")
    p.add_argument("--no-git", action="store_true")
    p.set_defaults(func=cmd_schedule)
    p = sub.add_parser("kernel-pool", help="keep sandboxed kernels started and warm for this project's runs "
                                           "(each kernel serves one run, then is killed)")
    p.add_argument("project_dir", nargs="?", default=".")
    p.add_argument("--size", type=int, default=None, help="kernels kept ready (default 1)")
    p.add_argument("--socket", default=None, help="socket path (default: the project's, found by runs "
                                                  "with kernel_pool: auto)")
    p.add_argument("--preload", default=None,
                   help="comma-separated modules each kernel imports ahead of time (default: "
                        "pandas,pyarrow,pyarrow.parquet; '' for none)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="stop after this long without a run")
    p.add_argument("--status", action="store_true", help="print the running pool's status and exit")
    p.add_argument("--wait-ready", type=float, default=None, metavar="SECONDS",
                   help="wait until the running pool has --size ready kernels, print its status and exit")
    p.set_defaults(func=cmd_kernel_pool)
    p = sub.add_parser("sweep", help="delete the run directories (and the data fetched into them) of runs and "
                                     "kernel pools that were killed hard; never a live one")
    p.add_argument("project_dir", nargs="?", default=".")
    p.add_argument("--run-root", default=None, help="parent of the run directories (default: the project's)")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("runs", help="recent runs from the Dagster instance (DAGSTER_HOME): status, schedule, "
                                    "partition, start, duration, failing cell")
    p.add_argument("notebook_or_schedule", nargs="?", default=None,
                   help="a notebook (path, file name or stem) or a schedule entry name")
    p.add_argument("--failed", action="store_true", help="failed runs only")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("show", help="one run: the failing cell's source, error and traceback, inputs with row "
                                    "counts and tables, outputs, kept notebook, HTML and run page")
    p.add_argument("run_id", help="a run id or a unique prefix of one (as `runs` prints it)")
    p.add_argument("--project-dir", default=None, help="the project (default: found from the current directory)")
    p.add_argument("--webserver-url", default=None,
                   help="Dagster UI base URL for the run page (default: bento.yaml notifications.webserver_url, "
                        "else http://127.0.0.1:3000)")
    p.add_argument("--open", action="store_true", help="open the kept notebook (jupyter lab, else the browser)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # the CLI never shows a bare traceback for user errors  # noqa: BLE001
        from dagster_bento.errors import DagsterBentoError

        if isinstance(err, DagsterBentoError):
            print(redact_text(str(err)), file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
