"""`dagster-bento load`: a user's CSV/Parquet into the development warehouse with exact types, the
label stored with the data and added to purpose_zones.yaml (text edit), and a landing recorded."""

import datetime as dt
import decimal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_bento import load_project
from dagster_bento.load import DagsterBentoLoadError, load_file
from tests.nbfactory import add_notebook, sql_cell, write_cell, write_policy
from tests.test_execution import PG_URL, query


@pytest.fixture
def project(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    text = (tmp_path / "purpose_zones.yaml").read_text()
    (tmp_path / "purpose_zones.yaml").write_text("# reviewed by privacy\n" + text)
    return tmp_path


TYPED = pa.table({
    "id": pa.array([1, 2**60, None], pa.int64()),
    "amount": pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("-3.50")], pa.decimal128(12, 2)),
    "at": pa.array([dt.datetime(2026, 1, 1, 12, tzinfo=dt.timezone.utc), None,
                    dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)], pa.timestamp("us", tz="UTC")),
    "day": pa.array([dt.date(2026, 1, 1), dt.date(2026, 1, 2), None], pa.date32()),
    "name": pa.array(["", None, "x, \"y\""], pa.string()),
    "ok": pa.array([True, False, None], pa.bool_()),
})


def test_parquet_with_exact_types_through_the_cli(project):
    pq.write_table(TYPED, project / "mine.parquet")
    url = f"duckdb:///{project}/wh.duckdb"
    out = subprocess.run([str(Path(sys.executable).with_name("dagster-bento")), "load", str(project / "mine.parquet"),
                          "raw.mine", "--zone", "ANALYTICS", "--project-dir", str(project), "--warehouse-url", url],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "loaded 3 rows into raw.mine" in out.stdout
    rows = query(url, 'SELECT id, amount, "at", "day", name, ok FROM raw.mine ORDER BY id NULLS LAST')
    assert rows[1][0] == 2**60 and rows[0][1] == decimal.Decimal("1.25") and rows[0][4] == "" and rows[1][4] is None
    types = dict(query(url, "SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_name = 'mine'"))
    assert types == {"id": "BIGINT", "amount": "DECIMAL(12,2)", "at": "TIMESTAMP WITH TIME ZONE", "day": "DATE",
                     "name": "VARCHAR", "ok": "BOOLEAN"}
    assert query(url, "SELECT count(*) FROM bento_meta.landings WHERE table_name = 'raw.mine'") == [(1,)]
    policy = (project / "purpose_zones.yaml").read_text()
    assert policy.startswith("# reviewed by privacy\n") and "raw.mine: {zones: [ANALYTICS]}" in policy
    # a notebook may now read it: `check` passes
    add_notebook(project, "reads", [sql_cell("df", "SELECT * FROM raw.mine"), write_cell("df", "mart.x")])
    assert not load_project(project, use_cache=False, warehouse_url=url).errors


def test_csv_typed_by_inference_on_postgres(project):
    (project / "mine.csv").write_text("id,when,v\n1,2026-01-01,1.5\n2,2026-01-02,\n")
    schema = f"load_{id(project) % 100000}"
    result = load_file(project_dir=project, file=project / "mine.csv", table=f"{schema}.t", zone="ANALYTICS",
                       warehouse_url=PG_URL)
    try:
        assert result.rows == 2 and dict(result.schema) == {"id": "int64", "when": "date32[day]", "v": "double"}
        assert query(PG_URL, f"SELECT id, \"when\", v FROM {schema}.t ORDER BY id") == [
            (1, dt.date(2026, 1, 1), 1.5), (2, dt.date(2026, 1, 2), None)]
    finally:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_one_partition_replaces_only_its_rows(project):
    url = f"duckdb:///{project}/wh.duckdb"
    for ds, n in (("2026-01-01", 2), ("2026-01-02", 3), ("2026-01-01", 1)):
        pq.write_table(pa.table({"ds": [ds] * n, "v": list(range(n))}), project / "day.parquet")
        load_file(project_dir=project, file=project / "day.parquet", table="raw.daily", zone="ANALYTICS",
                  partition_column="ds", warehouse_url=url)
    assert query(url, "SELECT ds, count(*) FROM raw.daily GROUP BY ds ORDER BY ds") == [
        ("2026-01-01", 1), ("2026-01-02", 3)]
    assert (project / "purpose_zones.yaml").read_text().count("raw.daily") == 1


@pytest.mark.parametrize("table,zone,match", [
    ("raw.new", None, "pass --zone"),
    ("raw.new", "NOPE", "not defined"),
    ("raw.a", "PUBLIC", "declared in purpose_zones.yaml with zones"),
    ("bento_meta.labels", "ANALYTICS", "reserved schema"),
])
def test_refusals_load_nothing(project, table, zone, match):
    pq.write_table(pa.table({"v": [1]}), project / "x.parquet")
    before = (project / "purpose_zones.yaml").read_text()
    with pytest.raises(DagsterBentoLoadError, match=match):
        load_file(project_dir=project, file=project / "x.parquet", table=table, zone=zone,
                  warehouse_url=f"duckdb:///{project}/wh.duckdb")
    assert (project / "purpose_zones.yaml").read_text() == before
    assert not (project / "wh.duckdb").exists()
