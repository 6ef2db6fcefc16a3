"""Seed the example project's warehouse with the TPC-H sample in ``data/tpch`` (a real workload).

The load goes through the same `Warehouse.upload` path as notebook outputs, so it also records a
landing per table in ``bento_meta.landings`` — what the landing sensor watches.
"""

import tempfile
import uuid
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dagster_bento.assets import resolve_warehouse_url
from dagster_bento.project import load_config
from dagster_bento.warehouse import UploadRequest, warehouse_from_url

# TPC-H file → table in the example warehouse
EXAMPLE_TABLES = {
    "orders": "sales.orders",
    "lineitem": "sales.lineitem",
    "customer": "crm.customers",
    "nation": "ref.nations",
    "region": "ref.regions",
    "part": "sales.parts",
    "supplier": "sales.suppliers",
    "partsupp": "sales.partsupp",
}


def tpch_dir(project_dir: Path) -> Path:
    return project_dir / "data" / "tpch"


def seed_example(*, project_dir: Path, warehouse_url: str | None = None,
                 tables: dict[str, str] | None = None) -> dict[str, int]:
    project_dir = project_dir.resolve()
    config, _ = load_config(project_dir)
    url = resolve_warehouse_url(project_dir, config.warehouse_url, warehouse_url)
    warehouse = warehouse_from_url(url)
    counts: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bento-seed-") as tmp:
            requests = []
            for name, table in (tables or EXAMPLE_TABLES).items():
                data = pacsv.read_csv(tpch_dir(project_dir) / f"{name}.csv.gz",
                                      parse_options=pacsv.ParseOptions(delimiter="|"))
                path = Path(tmp) / f"{table}.parquet"
                pq.write_table(data, path)
                requests.append(UploadRequest(table=table, path=path, mode="overwrite"))
            for result in warehouse.upload(requests, run_id=f"seed-{uuid.uuid4()}", notebook="seed-example"):
                counts[result.table] = result.rows_written
    finally:
        warehouse.close()
    return counts
