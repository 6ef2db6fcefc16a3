"""Step 4b: the factory. It only wires: project → translator → `multi_asset`s → `Definitions`.

Parsing lives in `project.py`, execution in `execution/`, automation in `automation.py`.
"""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_bento.errors import Problem
from dagster_bento.project import BentoProject, dialect_for_url, load_config, load_project
from dagster_bento.spec import BentoJob
from dagster_bento.translator import META, BentoTableProps, DagsterBentoTranslator

RESOURCE_KEY = "bento"


def warehouse_kind(url: str | None) -> str:
    return {"postgres": "postgres"}.get(dialect_for_url(url) or "", "duckdb")


def table_props(project: BentoProject, warehouse: str,
                schema: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, BentoTableProps]:
    """Props of every table in the project's graph: written tables (with their job) and upstream ones."""
    props: dict[str, BentoTableProps] = {}
    policy = project.policy
    schema = schema or {}

    def columns(table: str) -> tuple[tuple[str, str], ...]:
        return tuple(schema.get(table, {}).items())

    for table in project.upstream_tables:
        label, origin = _declared_label(policy, table)
        props[table] = BentoTableProps(table, warehouse, label, origin, columns=columns(table))
    for job in project.jobs:
        for cell in job.write_cells:
            label = project.computed_labels.get(cell.table)
            origin = "computed" if label is not None else "not enforced"
            props[cell.table] = BentoTableProps(table=cell.table, warehouse_kind=warehouse, label=label,
                                                label_origin=origin, job=job, write_cell=cell,
                                                columns=columns(cell.table))
    return props


def introspect_schema(url: str) -> dict[str, dict[str, str]] | None:
    """Column names and types of every warehouse table, or None (logged) when the warehouse cannot be
    read: definitions still load, only without columns."""
    from dagster_bento.warehouse import warehouse_from_url

    if url.startswith("duckdb:///") and ":memory:" not in url and not Path(url.removeprefix("duckdb:///")).exists():
        return None  # not created yet (before the first seed or load)
    try:
        warehouse = warehouse_from_url(url)
        try:
            return warehouse.table_schemas()
        finally:
            warehouse.close()
    except Exception as err:  # noqa: BLE001 -- any driver error: load without columns
        logging.getLogger("dagster_bento").warning(f"could not read the warehouse schema ({err}); assets load "
                                                   "without column schemas")
        return None


def _declared_label(policy: Any, table: str) -> tuple[frozenset[str] | None, str]:
    if policy is None:
        return None, "not enforced"
    label = policy.declared_label(table)
    if isinstance(label, frozenset):
        return label, "declared"
    return None, "unclassified" if label is None else "unknown"


def bento_job_specs(job: BentoJob, props: Mapping[str, BentoTableProps], translator: DagsterBentoTranslator,
                    key_of: Callable[[str], dg.AssetKey], automation: Any = None) -> list[dg.AssetSpec]:
    upstream = tuple(key_of(t) for t in job.tables_read)
    partitions = automation.partitions_def(job) if automation else None
    condition = automation.condition(job, upstream) if automation else None
    return [translator.get_asset_spec(dataclasses.replace(
        props[cell.table], upstream_keys=upstream, automation_condition=condition, partitions_def=partitions))
        for cell in job.write_cells]


def bento_assets(*, job: BentoJob, specs: Sequence[dg.AssetSpec]) -> dg.AssetsDefinition:
    """One multi-asset per schedule entry; its body is one line that streams the run's results."""
    from dagster_bento.resources import BentoResource

    @dg.multi_asset(
        name=job.name, specs=list(specs), can_subset=False,
        required_resource_keys={RESOURCE_KEY},
        op_tags={f"{META}/schedule": job.name, f"{META}/notebook": job.notebook_path},
        retry_policy=dg.RetryPolicy(max_retries=job.spec.retries) if job.spec.retries else None,
    )
    def _notebook_asset(context):  # un-annotated: see dagster-1.13-verified §1 (annotations gotcha)
        bento: BentoResource = getattr(context.resources, RESOURCE_KEY)
        yield from bento.run(context=context, job=job).stream()

    return _notebook_asset


def build_bento_assets(project: BentoProject, *, translator: DagsterBentoTranslator | None = None,
                       warehouse_url: str | None = None, automation: Any = None,
                       schema: Mapping[str, Mapping[str, str]] | None = None
                       ) -> tuple[list[dg.AssetSpec], list[dg.AssetsDefinition]]:
    """External specs for upstream tables and one multi-asset per schedule entry; raises
    `DagsterBentoProjectError` when Dagster refuses a notebook's definitions."""
    from dagster_bento.errors import DagsterBentoProjectError

    externals, multi, broken = _build_assets_contained(project, translator=translator, warehouse_url=warehouse_url,
                                                       automation=automation, schema=schema)
    if broken:
        raise DagsterBentoProjectError([p for problems in broken.values() for p in problems])
    return externals, multi


def _build_assets_contained(project: BentoProject, *, translator: DagsterBentoTranslator | None,
                            warehouse_url: str | None, automation: Any,
                            schema: Mapping[str, Mapping[str, str]] | None
                            ) -> tuple[list[dg.AssetSpec], list[dg.AssetsDefinition], dict[str, list[Problem]]]:
    """Like `build_bento_assets`, but a notebook whose definitions Dagster refuses (an owner, a tag, a
    key or a group name against Dagster's rules, or a translator that raises) is left out and
    returned with that error as its problem, instead of failing the whole code location."""
    translator = translator or DagsterBentoTranslator()
    kind = warehouse_kind(warehouse_url)
    props = table_props(project, kind, schema)
    broken: dict[str, list[Problem]] = {}

    @functools.cache
    def key_of(table: str) -> dg.AssetKey:
        return translator.get_asset_spec(props[table]).key

    externals, bad_tables = [], {}
    for table in project.upstream_tables:
        try:
            externals.append(translator.get_asset_spec(props[table]))
        except Exception as err:  # noqa: BLE001 -- contained: the readers of this table are left out
            bad_tables[table] = err
    multi = []
    for job in project.jobs:
        unreadable = sorted(set(job.tables_read) & set(bad_tables))
        try:
            if unreadable:
                raise bad_tables[unreadable[0]]
            multi.append(bento_assets(job=job, specs=bento_job_specs(job, props, translator, key_of, automation)))
        except Exception as err:  # noqa: BLE001 -- one notebook's definitions never stop the others
            where = f" (upstream table {unreadable[0]})" if unreadable else ""
            broken.setdefault(job.notebook_path, []).append(Problem(
                job.notebook_path, None, "BENTO001",
                f"schedule {job.name!r}: Dagster refused its definitions{where}: {str(err).splitlines()[0]}; "
                "fix the spec or notebook (owners, tags, names) — `dagster-bento check` reports most of these"))
    if broken:  # a notebook with one refused schedule entry is left out whole, like any broken notebook
        multi = [a for a in multi if a.op.tags.get(f"{META}/notebook") not in broken]
    return externals, multi, broken


def resolve_warehouse_url(project_dir: Path, config_url: str | None, warehouse_url: str | None) -> str:
    """``warehouse_url=`` → ``BENTO_WAREHOUSE_URL`` → ``bento.yaml`` → embedded DuckDB in the project."""
    url = warehouse_url or os.environ.get("BENTO_WAREHOUSE_URL") or config_url
    if url:
        if url.startswith("duckdb:///") and not url.startswith("duckdb:////") and ":memory:" not in url:
            url = f"duckdb:///{(project_dir / url.removeprefix('duckdb:///')).resolve()}"
        return url
    return f"duckdb:///{(project_dir / 'warehouse.duckdb').resolve()}"


def contain_problems(project: BentoProject) -> tuple[BentoProject, dict[str, list[Problem]]]:
    """The project without its broken notebooks, and their error problems by notebook path.

    One broken notebook never stops the others: a notebook with an error (of its own, of its spec, or a
    cross-notebook one reported on it) gets no assets and no schedule. An error in the project's own
    files (``bento.yaml``, ``purpose_zones.yaml``) breaks every notebook: without a valid policy no
    read or write can be judged, so nothing is scheduled (fail closed).
    """
    by_spec = {j.spec.path: j.notebook_path for j in project.jobs}
    broken: dict[str, list[Problem]] = {}
    project_wide: list[Problem] = []
    for problem in project.errors:
        where = by_spec.get(problem.notebook, problem.notebook)
        if where.endswith(".bento.yaml"):
            where = where.removesuffix(".bento.yaml") + ".ipynb"
        if where.endswith(".ipynb"):
            broken.setdefault(where, []).append(problem)
        else:  # bento.yaml, purpose_zones.yaml
            project_wide.append(problem)
    if project_wide:
        broken[PROJECT_PLACEHOLDER] = project_wide
        jobs: tuple[BentoJob, ...] = ()
    else:
        jobs = tuple(j for j in project.jobs if j.notebook_path not in broken)
    return dataclasses.replace(project, jobs=jobs), broken


PROJECT_PLACEHOLDER = "(project)"
BROKEN_GROUP = "bento_broken"


def broken_notebook_asset(notebook: str, problems: Sequence[Problem]) -> dg.AssetsDefinition:
    """A placeholder for a notebook that does not load: visible in the asset graph with its problems;
    materializing it fails with the same list. It has no schedule and no upstream edges."""
    from dagster_bento.errors import DagsterBentoProjectError, format_problems

    stem = "project" if notebook == PROJECT_PLACEHOLDER else notebook.removesuffix(".ipynb")
    key = dg.AssetKey([BROKEN_GROUP, *[_key_part(p) for p in stem.split("/")]])
    header = (f"dagster-bento could not load {notebook}; it is not scheduled until these problems are fixed "
              "(`dagster-bento check` lists them):" if notebook != PROJECT_PLACEHOLDER else
              "dagster-bento could not load the project's files; no notebook is scheduled until these "
              "problems are fixed (`dagster-bento check` lists them):")
    text = format_problems(problems, header=header)

    @dg.asset(key=key, group_name=BROKEN_GROUP, description=text,
              metadata={f"{META}/problems": dg.MetadataValue.md(
                  "\n".join(f"- `{p.code}` {p.location()}: {p.message}" for p in sorted(problems))),
                  f"{META}/notebook": notebook},
              tags={f"{META}/broken": "true"}, kinds={"jupyter"})
    def _broken(context):  # noqa: ARG001 -- fails with the problems, never runs the notebook
        raise DagsterBentoProjectError(list(problems), header=header)

    return _broken


def _key_part(text: str) -> str:
    return "".join(c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in text) or "_"


def build_bento_definitions(*, project_dir: str | Path, warehouse_url: str | None = None,
                            translator: DagsterBentoTranslator | None = None,
                            resource: Any = None, raise_on_problems: bool | None = None,
                            automation: bool = True) -> dg.Definitions:
    """Every scheduled notebook under ``<project_dir>/notebooks`` as Dagster definitions.

    A notebook with a static problem (what ``dagster-bento check`` reports) is contained: it appears as
    a placeholder asset in the ``bento_broken`` group naming its problems, gets no schedule, and every
    other notebook loads. ``raise_on_problems=True`` (or ``strict_loading: true`` in ``bento.yaml``)
    instead raises `DagsterBentoProjectError` listing every problem.
    """
    from dagster_bento import automation as automation_mod
    from dagster_bento.resources import BentoResource

    project_dir = Path(project_dir).resolve()
    config, _ = load_config(project_dir)
    url = resolve_warehouse_url(project_dir, config.warehouse_url, warehouse_url)
    schema = introspect_schema(url) if config.introspect_schema else None
    project = load_project(project_dir, warehouse_url=warehouse_url, schema=schema)
    strict = config.strict_loading if raise_on_problems is None else raise_on_problems
    if strict:
        project.raise_on_errors()
    project, broken = contain_problems(project)
    for notebook, problems in sorted(broken.items()):
        logging.getLogger("dagster_bento").error(
            f"{notebook} is not scheduled: " + "; ".join(str(p) for p in sorted(problems)))
    auto = automation_mod.BentoAutomation(project) if automation else None
    while True:  # a notebook Dagster refuses is left out, and the rest is built again without it
        externals, multi, refused = _build_assets_contained(project, translator=translator, warehouse_url=url,
                                                            automation=auto, schema=schema)
        if not refused:
            break
        if strict:
            from dagster_bento.errors import DagsterBentoProjectError

            raise DagsterBentoProjectError([p for problems in refused.values() for p in problems])
        for notebook, problems in refused.items():
            broken.setdefault(notebook, []).extend(problems)
            logging.getLogger("dagster_bento").error(
                f"{notebook} is not scheduled: " + "; ".join(str(p) for p in problems))
        project = dataclasses.replace(project, jobs=tuple(j for j in project.jobs if j.notebook_path not in refused))
        auto = automation_mod.BentoAutomation(project) if automation else None
    placeholders = [broken_notebook_asset(nb, problems) for nb, problems in sorted(broken.items())]
    resource = resource or BentoResource.for_project(project, warehouse_url=url)
    extra: dict[str, list[Any]] = (auto.definitions(multi, externals, url) if auto
                                   else {"schedules": [], "sensors": []})
    # The definitions hold a resource whose run config can only narrow (resources.py docstring).
    resources: dict[str, Any] = {RESOURCE_KEY: resource.as_resource_definition()
                                 if isinstance(resource, BentoResource) else resource}
    if auto:
        resources[automation_mod.NOTIFIER_KEY] = automation_mod.BentoNotifier.from_config(
            project.config.notifications)
    return dg.Definitions(assets=[*externals, *multi, *placeholders], resources=resources,
                          schedules=extra["schedules"], sensors=extra["sensors"])
