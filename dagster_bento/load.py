"""``dagster-bento load``: get your own data into the development warehouse.

A CSV or Parquet file becomes a warehouse table through the same `Warehouse.upload` path as notebook
outputs (one transaction, exact types, the purpose-zone label stored with the data, a landing row in
``bento_meta.landings``), and the table's label is added to ``purpose_zones.yaml`` as a plain text
edit (comments and layout kept) for review, so notebooks can read it and ``check`` passes.

Types: Parquet keeps its types exactly. A CSV is typed by its ``<file>.schema.json`` sidecar when
there is one (the format dagster-bento writes), else by pyarrow's inference (integers, floats,
booleans, ISO dates and timestamps, strings); the loaded schema is printed so a surprise is visible.
"""

import dataclasses
import re
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dagster_bento.errors import DagsterBentoError

__all__ = ["LoadResult", "DagsterBentoLoadError", "load_file"]


class DagsterBentoLoadError(DagsterBentoError):
    """The file cannot be loaded as asked; nothing was written."""


@dataclasses.dataclass(frozen=True)
class LoadResult:
    table: str
    rows: int
    schema: tuple[tuple[str, str], ...]
    zone: str | None
    policy_updated: bool
    partition: str | None = None

    def summary(self) -> str:
        cols = ", ".join(f"{n} {t}" for n, t in self.schema)
        lines = [f"loaded {self.rows} rows into {self.table}"
                 + (f" (partition {self.partition})" if self.partition else "") + f": {cols}"]
        if self.zone:
            lines.append(f"label: {{{self.zone}}} (stored with the data)")
        if self.policy_updated:
            lines.append(f"purpose_zones.yaml: added {self.table}: {{zones: [{self.zone}]}} — commit it for "
                         "review with the notebooks that read the table")
        return "\n".join(lines)


def _read(path: Path) -> pa.Table:
    from dagster_bento.warehouse import read_csv_sidecar, read_csv_with_schema

    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pq.read_table(path)
        if name.endswith((".csv", ".csv.gz", ".tsv")):
            return read_csv_with_schema(path, read_csv_sidecar(path))
    except (OSError, pa.ArrowException) as err:
        raise DagsterBentoLoadError(f"{path}: cannot be read ({err}); nothing was loaded") from err
    raise DagsterBentoLoadError(f"{path}: not a .csv, .csv.gz or .parquet file; convert it first")


def _policy_entry_line(table: str, zone: str) -> str:
    return f"  {table}: {{zones: [{zone}]}}  # added by dagster-bento load"


def policy_with_table(policy_path: Path, table: str, zone: str, dialect: str | None = None) -> str:
    """The text of ``purpose_zones.yaml`` with ``table: {zones: [zone]}`` added under ``tables:``, as a text
    edit that keeps comments and layout. Validated with the policy loader (on a copy) before it is used."""
    from dagster_bento import zones

    text = policy_path.read_text()
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if re.match(r"^tables:\s*(#.*)?$", line)), None)
    if at is None:
        if re.search(r"^tables:", text, re.MULTILINE):
            raise DagsterBentoLoadError(
                f"{policy_path.name}: its tables: mapping is written inline; add {table}: {{zones: [{zone}]}} "
                "by hand, then load again (nothing was loaded)")
        new = text + ("" if text.endswith("\n") else "\n") + "tables:\n" + _policy_entry_line(table, zone) + "\n"
    else:
        indent = "  "
        for line in lines[at + 1:]:
            if line.strip() and not line.lstrip().startswith("#"):
                indent = line[: len(line) - len(line.lstrip())] or "  "
                break
        entry = indent + _policy_entry_line(table, zone).lstrip() + "\n"
        new = "".join([*lines[:at + 1], entry, *lines[at + 1:]])
    with tempfile.TemporaryDirectory(prefix="bento-policy-") as tmp:
        copy = Path(tmp) / policy_path.name
        copy.write_text(new)
        try:
            checked = zones.load_policy(copy, dialect=dialect)
        except zones.PurposeZoneDefinitionError as err:
            raise DagsterBentoLoadError(f"{policy_path.name} would not load with {table} added ({err}); "
                                        "nothing was loaded") from err
    if checked.declared_label(table) != frozenset({zone}):
        raise DagsterBentoLoadError(f"{policy_path.name}: the added entry does not label {table} as [{zone}] "
                                    "(a glob or an earlier entry wins?); add it by hand (nothing was loaded)")
    return new


def load_file(*, project_dir: Path, file: Path, table: str, zone: str | None = None,
              partition_column: str | None = None, warehouse_url: str | None = None) -> LoadResult:
    """Load ``file`` into ``table`` (replacing it, or only its partition with ``partition_column``)."""
    from dagster_bento.assets import resolve_warehouse_url
    from dagster_bento.project import POLICY_FILE, RESERVED_SCHEMAS, project_settings
    from dagster_bento.warehouse import UploadRequest, normalize_table_name, warehouse_from_url

    project_dir = project_dir.resolve()
    config, policy, default_schema, dialect, problems = project_settings(project_dir, warehouse_url)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DagsterBentoLoadError("the project's files have problems; fix them first:\n"
                                    + "\n".join(f"  - {p}" for p in errors))
    try:
        name = normalize_table_name(table, default_schema, dialect)
    except ValueError as err:
        raise DagsterBentoLoadError(f"{table!r} is not a table name ({err}); write schema.table") from err
    schema_name = name.split(".")[0].strip('"')
    if schema_name.lower() in RESERVED_SCHEMAS or schema_name.lower().startswith("pg_"):
        raise DagsterBentoLoadError(f"{name} is in a reserved schema; load into a schema of your own")
    policy_path = project_dir / POLICY_FILE
    declared = policy.declared_label(name) if policy is not None else None
    if policy is not None:
        if zone is None and not isinstance(declared, frozenset):
            raise DagsterBentoLoadError(f"{name} has no label in {POLICY_FILE}; pass --zone ZONE (one of "
                                        f"{', '.join(sorted(policy.zones))}) so notebooks may read it")
        if zone is not None and zone not in policy.zones:
            raise DagsterBentoLoadError(f"zone {zone!r} is not defined in {POLICY_FILE} (zones: "
                                        f"{', '.join(sorted(policy.zones))})")
        if zone is not None and isinstance(declared, frozenset) and declared != frozenset({zone}):
            raise DagsterBentoLoadError(
                f"{name} is declared in {POLICY_FILE} with zones {sorted(declared)}, not [{zone}]; change the "
                "policy in a reviewed commit, or load with the declared zone")
    label = frozenset({zone}) if zone else (declared if isinstance(declared, frozenset) else None)
    new_policy = (policy_with_table(policy_path, name, zone, dialect)  # validated before anything is loaded
                  if policy is not None and zone is not None and not isinstance(declared, frozenset) else None)

    data = _read(Path(file))
    partition = None
    if partition_column is not None:
        if partition_column not in data.column_names:
            raise DagsterBentoLoadError(f"{file}: has no column {partition_column!r} (columns: "
                                        f"{', '.join(data.column_names)})")
        values = {str(v) for v in data.column(partition_column).unique().to_pylist()}
        if len(values) != 1:
            raise DagsterBentoLoadError(
                f"{file}: holds {len(values)} values of {partition_column} ({', '.join(sorted(values)[:5])}…); "
                "load one partition per file, or load without --partition-column to replace the table")
        partition = values.pop()
    url = resolve_warehouse_url(project_dir, config.warehouse_url, warehouse_url)
    warehouse = warehouse_from_url(url)
    try:
        with tempfile.TemporaryDirectory(prefix="bento-load-") as tmp:
            path = Path(tmp) / "data.parquet"
            pq.write_table(data, path)
            request = UploadRequest(table=name, path=path,
                                    mode="overwrite_partition" if partition else "overwrite",
                                    partition_column=partition_column or "ds", partition_value=partition,
                                    label=label, label_origin="declared" if label else "derived",
                                    notebook="dagster-bento load")
            (result,) = warehouse.upload([request], run_id=f"load-{uuid.uuid4()}", notebook="dagster-bento load")
    finally:
        warehouse.close()
    updated = new_policy is not None
    if new_policy is not None:
        policy_path.write_text(new_policy)
    schema = tuple((f.name, str(f.type)) for f in data.schema)
    return LoadResult(name, result.rows_written, schema, zone, updated, partition)
