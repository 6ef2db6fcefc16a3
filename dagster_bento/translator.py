"""Step 4a: one translator method, ``get_asset_spec``, maps a warehouse table to an `AssetSpec`.

Dependencies are resolved by calling the translator on the upstream table, so a custom key changes the
asset *and* every edge into it, and a table written by notebook A and read by notebook B chains
automatically.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import dagster as dg

from dagster_bento.spec import BentoJob, ResolvedWriteCell

META = "dagster_bento"
SOURCES_GROUP = "warehouse_sources"


@dataclasses.dataclass(frozen=True)
class BentoTableProps:
    """Everything known about one table when its asset spec is built."""

    table: str  # "schema.table"
    warehouse_kind: str  # "duckdb" | "postgres" | ...
    label: frozenset[str] | None  # purpose-zone label (declared or computed); None = unclassified/unknown
    label_origin: str  # "declared" | "computed" | "unclassified" | "unknown" | "not enforced"
    job: BentoJob | None = None  # the schedule that writes it; None for upstream (external) tables
    write_cell: ResolvedWriteCell | None = None
    # keys of the tables the writing schedule reads, resolved by the factory through this same
    # translator (memoised), so a custom key changes every edge into the asset too
    upstream_keys: tuple[dg.AssetKey, ...] = ()
    automation_condition: dg.AutomationCondition | None = dataclasses.field(default=None, compare=False)
    columns: tuple[tuple[str, str], ...] = ()  # (name, type) when the warehouse was introspected
    partitions_def: dg.PartitionsDefinition | None = dataclasses.field(default=None, compare=False)


class DagsterBentoTranslator:
    """Subclass and override `get_asset_spec` (call ``super()`` and ``.replace_attributes`` / ``.merge_attributes``)."""

    def get_asset_key(self, table: str) -> dg.AssetKey:
        from dagster_bento.tables import parts_of  # quoted parts (core."x.y") stay one part

        return dg.AssetKey(parts_of(table))

    def get_asset_spec(self, props: BentoTableProps) -> dg.AssetSpec:
        key = self.get_asset_key(props.table)
        zone_tags = {f"bento_zone/{z}": "" for z in sorted(props.label or ())}
        label_meta = sorted(props.label) if props.label is not None else props.label_origin
        metadata: dict[str, Any] = {
            "dagster/table_name": props.table,
            f"{META}/purpose_zones": dg.MetadataValue.json({"label": label_meta, "origin": props.label_origin}),
        }
        if props.columns:
            metadata["dagster/column_schema"] = dg.TableSchema(
                columns=[dg.TableColumn(name, type_) for name, type_ in props.columns])
        if props.job is None:
            return dg.AssetSpec(key, group_name=SOURCES_GROUP, kinds={props.warehouse_kind, "table"},
                                metadata=metadata, tags=zone_tags,
                                description=f"Warehouse table {props.table}, read by scheduled notebooks.")
        job, cell = props.job, props.write_cell
        assert cell is not None
        metadata.update({
            f"{META}/notebook": job.notebook_path,
            f"{META}/schedule": job.name,
            f"{META}/write_cell": cell.index,
            f"{META}/write_mode": cell.mode,
            f"{META}/zone": job.zone,
            f"{META}/parameters": dg.MetadataValue.json(job.display_parameters),
            f"{META}/sql": dg.MetadataValue.md(_sql_markdown(job)),
            f"{META}/tables_read": dg.MetadataValue.json(list(job.tables_read)),
        })
        lineage = _sql_column_lineage(job)
        if lineage:
            metadata[f"{META}/sql_column_lineage"] = dg.MetadataValue.json(lineage)
        tags = {**zone_tags, f"{META}/zone": job.zone, **dict(job.spec.tags)}
        return dg.AssetSpec(
            key, deps=list(props.upstream_keys), group_name=_group(job), kinds={"jupyter", "sql", props.warehouse_kind},
            owners=list(job.owners), metadata=metadata, tags=tags, code_version=job.code_version,
            description=job.spec.description or f"Written by cell {cell.index} of {job.notebook_path} "
                                                 f"(schedule {job.name}, mode {cell.mode}).",
            automation_condition=props.automation_condition, partitions_def=props.partitions_def)


def _group(job: BentoJob) -> str:
    stem = job.notebook_path.rsplit("/", 1)[-1].removesuffix(".ipynb")
    # Dagster group names are ASCII letters, digits and underscores ("café" is not one)
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch == "_" else "_" for ch in stem)


def _sql_markdown(job: BentoJob) -> str:
    parts = [f"**cell {c.index}** → `{c.output}`\n```sql\n{c.sql.strip()}\n```" for c in job.sql_cells]
    return "\n\n".join(parts) or "(no SQL cells)"


def _sql_column_lineage(job: BentoJob) -> dict[str, dict[str, list[str]]]:
    """{sql output var: {column: ["schema.table.column", ...]}} for every resolvable SQL cell."""
    out: dict[str, dict[str, list[str]]] = {}
    for cell in job.sql_cells:
        if cell.column_lineage:
            out[cell.output] = {col: [f"{t}.{c}" for t, c in deps] for col, deps in cell.column_lineage.items()}
    return out


def column_lineage_for(job: BentoJob, columns: Mapping[str, str], translator: DagsterBentoTranslator
                       ) -> dg.TableColumnLineage | None:
    """Run-time column lineage: an output column that keeps the name of a SQL cell's output column
    inherits that column's sources. Never used to shrink purpose-zone labels."""
    deps: dict[str, list[dg.TableColumnDep]] = {}
    for cell in job.sql_cells:
        for col, sources in cell.column_lineage.items():
            if col in columns and col not in deps:
                deps[col] = [dg.TableColumnDep(asset_key=translator.get_asset_key(t), column_name=c)
                             for t, c in sources]
    return dg.TableColumnLineage(deps_by_column=deps) if deps else None
