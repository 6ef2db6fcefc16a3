"""Step 4b: the factory. It only wires: project → translator → `multi_asset`s → `Definitions`.

Parsing lives in `project.py`, execution in `execution/`, automation in `automation.py`.
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_bento.project import BentoProject, dialect_for_url, load_project
from dagster_bento.spec import BentoJob
from dagster_bento.translator import META, BentoTableProps, DagsterBentoTranslator

RESOURCE_KEY = "bento"


def warehouse_kind(url: str | None) -> str:
    return {"postgres": "postgres"}.get(dialect_for_url(url) or "", "duckdb")


def table_props(project: BentoProject, warehouse: str) -> dict[str, BentoTableProps]:
    """Props of every table in the project's graph: written tables (with their job) and upstream ones."""
    props: dict[str, BentoTableProps] = {}
    policy = project.policy
    for table in project.upstream_tables:
        label, origin = _declared_label(policy, table)
        props[table] = BentoTableProps(table, warehouse, label, origin)
    for job in project.jobs:
        for cell in job.write_cells:
            label = project.computed_labels.get(cell.table)
            origin = "computed" if label is not None else "not enforced"
            props[cell.table] = BentoTableProps(table=cell.table, warehouse_kind=warehouse, label=label,
                                                label_origin=origin, job=job, write_cell=cell)
    return props


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
    specs = []
    for cell in job.write_cells:
        p = props[cell.table]
        specs.append(translator.get_asset_spec(BentoTableProps(
            p.table, p.warehouse_kind, p.label, p.label_origin, job, cell, upstream, condition, partitions)))
    return specs


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
                       warehouse_url: str | None = None, automation: Any = None
                       ) -> tuple[list[dg.AssetSpec], list[dg.AssetsDefinition]]:
    translator = translator or DagsterBentoTranslator()
    kind = warehouse_kind(warehouse_url)
    props = table_props(project, kind)

    @functools.cache
    def key_of(table: str) -> dg.AssetKey:
        return translator.get_asset_spec(props[table]).key

    externals = [translator.get_asset_spec(props[t]) for t in project.upstream_tables]
    multi = [bento_assets(job=job, specs=bento_job_specs(job, props, translator, key_of, automation))
             for job in project.jobs]
    return externals, multi


def resolve_warehouse_url(project_dir: Path, config_url: str | None, warehouse_url: str | None) -> str:
    """``warehouse_url=`` → ``BENTO_WAREHOUSE_URL`` → ``bento.yaml`` → embedded DuckDB in the project."""
    url = warehouse_url or os.environ.get("BENTO_WAREHOUSE_URL") or config_url
    if url:
        if url.startswith("duckdb:///") and not url.startswith("duckdb:////") and ":memory:" not in url:
            url = f"duckdb:///{(project_dir / url.removeprefix('duckdb:///')).resolve()}"
        return url
    return f"duckdb:///{(project_dir / 'warehouse.duckdb').resolve()}"


def build_bento_definitions(*, project_dir: str | Path, warehouse_url: str | None = None,
                            translator: DagsterBentoTranslator | None = None,
                            resource: Any = None, raise_on_problems: bool = True,
                            automation: bool = True) -> dg.Definitions:
    """Every scheduled notebook under ``<project_dir>/notebooks`` as Dagster definitions.

    Raises `DagsterBentoProjectError` listing every static problem (also what ``dagster-bento check``
    reports) unless ``raise_on_problems=False``, in which case broken notebooks are left out.
    """
    from dagster_bento import automation as automation_mod
    from dagster_bento.resources import BentoResource

    project_dir = Path(project_dir).resolve()
    project = load_project(project_dir, warehouse_url=warehouse_url)
    if raise_on_problems:
        project.raise_on_errors()
    else:
        broken = {p.notebook for p in project.errors}
        project = dataclasses.replace(project, jobs=tuple(
            j for j in project.jobs if j.notebook_path not in broken and j.spec.path not in broken))
    url = resolve_warehouse_url(project_dir, project.config.warehouse_url, warehouse_url)
    auto = automation_mod.BentoAutomation(project) if automation else None
    externals, multi = build_bento_assets(project, translator=translator, warehouse_url=url, automation=auto)
    resource = resource or BentoResource.for_project(project, warehouse_url=url)
    extra: dict[str, list[Any]] = (auto.definitions(multi, externals, url) if auto
                                   else {"schedules": [], "sensors": []})
    resources: dict[str, Any] = {RESOURCE_KEY: resource}
    if auto:
        resources[automation_mod.NOTIFIER_KEY] = automation_mod.BentoNotifier.from_config(
            project.config.notifications)
    return dg.Definitions(assets=[*externals, *multi], resources=resources,
                          schedules=extra["schedules"], sensors=extra["sensors"])
