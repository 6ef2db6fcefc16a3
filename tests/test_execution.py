"""Runs end to end through Dagster: real kernel in the real sandbox, real DuckDB and PostgreSQL."""

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import nbformat
import psycopg
import pytest

from dagster_bento import (
    BentoResource,
    DagsterBentoCellError,
    DagsterBentoKernelDiedError,
    DagsterBentoSandboxUnavailableError,
    DagsterBentoPolicyError,
    DagsterBentoTimeoutError,
    build_bento_definitions,
)
from dagster_bento.errors import DagsterBentoOutputError, DagsterBentoRunError, DagsterBentoUploadError
from tests.nbfactory import add_notebook, code, params, sql_cell, write_cell, write_policy

pytestmark = pytest.mark.kernel
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

TYPES_DUCKDB = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE OR REPLACE TABLE raw.types AS SELECT * FROM (VALUES
  (1::BIGINT, 9007199254740993::BIGINT, 1.5::DOUBLE, 'a, "quoted"' || chr(10) || 'newline', '', TRUE,
   TIMESTAMPTZ '2024-03-10 01:30:00.123456-05:00', DATE '2024-03-10'),
  (2::BIGINT, NULL::BIGINT, -2.25e300::DOUBLE, NULL, 'x', FALSE, NULL::TIMESTAMPTZ, NULL::DATE),
  (3::BIGINT, -9223372036854775807::BIGINT, NULL::DOUBLE, 'O''Brien, "Jr"', NULL, NULL::BOOLEAN,
   TIMESTAMPTZ '1970-01-01 00:00:00+00', DATE '1900-01-01')
) AS t(id, big, f, s, e, b, ts, d);
"""


def seed_duckdb(path: Path, sql: str = TYPES_DUCKDB) -> str:
    con = duckdb.connect(str(path))
    con.execute(sql)
    con.close()
    return f"duckdb:///{path}"


def query(url: str, sql: str) -> list[tuple]:
    if url.startswith("duckdb"):
        con = duckdb.connect(url.removeprefix("duckdb:///"), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    with psycopg.connect(PG_URL.replace("postgresql://", "postgresql://"), autocommit=True) as con:
        return con.execute(sql).fetchall()


_RUN_ROOT: list[str] = []  # set by the clean_run_dirs fixture: a private parent for run directories


def resource_for(project: Path, url: str, **overrides) -> BentoResource:
    overrides.setdefault("run_root", _RUN_ROOT[-1] if _RUN_ROOT else None)
    return BentoResource(project_dir=str(project), warehouse_url=url, artifacts_dir=str(project / "artifacts"),
                         **overrides)


def run(project: Path, url: str, *, select: str | None = None, partition: str | None = None,
        raise_on_error: bool = True, instance=None, **overrides):
    resource = resource_for(project, url, **overrides)
    defs = build_bento_definitions(project_dir=project, warehouse_url=url, resource=resource)
    multi = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    if select:
        multi = [a for a in multi if a.op.name == select]
    return dg.materialize(multi, resources={"bento": resource}, partition_key=partition,
                          raise_on_error=raise_on_error, instance=instance)


def materializations(result) -> dict[str, dict]:
    return {m.asset_key.to_user_string(): m.metadata
            for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())}


def passthrough_project(tmp_path: Path, source: str, out: str, **spec) -> Path:
    write_policy(tmp_path, {source: ["ANALYTICS"]})
    add_notebook(tmp_path, "copy", [sql_cell("df", f"SELECT * FROM {source}"), code("out = df"),
                                    write_cell("out", out)], **spec)
    return tmp_path


@pytest.fixture
def clean_run_dirs():
    """Runs get a private, short parent directory (Unix socket paths are limited to ~100 bytes); no run
    may leave anything in it, success or failure."""
    root = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
    _RUN_ROOT.append(root)
    try:
        yield root
        assert os.listdir(root) == [], f"a run directory was left behind: {os.listdir(root)}"
    finally:
        _RUN_ROOT.remove(root)
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# success path


def test_end_to_end_two_sources_two_outputs(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb", """
        CREATE SCHEMA raw; CREATE TABLE raw.orders AS SELECT * FROM (VALUES (1, 10, 5.0), (2, 10, 7.5), (3, 11, 1.0))
          AS t(order_id, customer_id, amount);
        CREATE TABLE raw.customers AS SELECT * FROM (VALUES (10, 'Ada'), (11, 'Bob')) AS t(customer_id, name);""")
    write_policy(tmp_path, {"raw.orders": ["ANALYTICS"], "raw.customers": ["ANALYTICS"]})
    add_notebook(tmp_path, "sales", [
        params("min_amount = 0"),
        sql_cell("orders", "SELECT order_id, customer_id, amount FROM raw.orders WHERE amount > {{ min_amount }}"),
        sql_cell("customers", "SELECT customer_id, name FROM raw.customers"),
        code("""
            joined = orders.merge(customers, on="customer_id")
            by_customer = joined.groupby("name", as_index=False).agg(total=("amount", "sum"))
            big = joined[joined.amount > 2][["order_id", "name", "amount"]]
            print("rows", len(joined))"""),
        write_cell("by_customer", "mart.by_customer"),
        write_cell("big", "mart.big_orders"),
    ], schedules=[{"name": "sales", "parameters": {"min_amount": 2}}])
    result = run(tmp_path, url)
    assert result.success
    assert query(url, "SELECT name, total FROM mart.by_customer ORDER BY name") == [("Ada", 12.5)]
    assert query(url, "SELECT order_id FROM mart.big_orders ORDER BY 1") == [(1,), (2,)]
    md = materializations(result)
    assert set(md) == {"mart/by_customer", "mart/big_orders"}
    meta = md["mart/big_orders"]
    assert meta["dagster/row_count"].value == 2
    assert [c.name for c in meta["dagster/column_schema"].schema.columns] == ["order_id", "name", "amount"]
    lineage = meta["dagster/column_lineage"].column_lineage.deps_by_column
    assert [(d.asset_key.to_user_string(), d.column_name) for d in lineage["name"]] == [("raw/customers", "name")]
    executed = Path(meta["dagster_bento/executed_notebook"].path)
    assert executed.exists()
    html = executed.with_suffix(".html")  # rendered by a detached process, so the run does not wait
    deadline = time.time() + 60
    while not html.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert "rows 2" in html.read_text()
    assert executed.parent == tmp_path / "artifacts" / "sales"
    nb = nbformat.read(executed, as_version=4)
    assert any("rows 2" in o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert nb.metadata["dagster_bento"]["parameters"]["min_amount"] == 2
    assert set(meta["dagster_bento/timings_s"].data) == {"fetch_s", "execute_s", "upload_s"}
    assert meta["dagster_bento/output_label"].data == ["ANALYTICS"]
    events = [json.loads(line) for line in (tmp_path / "artifacts" / "openlineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert sorted(o["name"] for o in events[1]["outputs"]) == ["mart.big_orders", "mart.by_customer"]
    # a second run keeps the first run's notebook and adds its own
    run(tmp_path, url)
    assert len(list((tmp_path / "artifacts" / "sales").glob("*.ipynb"))) == 2


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "csv"])
def test_type_round_trip_duckdb(tmp_path, fmt, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    passthrough_project(tmp_path, "raw.types", "mart.types_copy")
    assert run(tmp_path, url, data_format=fmt).success
    assert query(url, "SELECT * FROM raw.types EXCEPT SELECT * FROM mart.types_copy") == []
    assert query(url, "SELECT * FROM mart.types_copy EXCEPT SELECT * FROM raw.types") == []
    types = "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{}' ORDER BY ordinal_position"
    assert query(url, types.format("types_copy")) == query(url, types.format("types"))
    if fmt != "csv":  # CSV cannot tell '' from NULL when pandas rewrites it; Parquet and Arrow must
        assert query(url, "SELECT count(*) FROM mart.types_copy WHERE e = ''") == [(1,)]


@pytest.mark.postgres
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_type_round_trip_and_modes_postgres(tmp_path, fmt, clean_run_dirs):
    schema = f"bento_t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"""CREATE SCHEMA {schema};
            CREATE TABLE {schema}.types (id bigint, big bigint, f double precision, s text, e text, b boolean,
                                         ts timestamptz, d date);
            INSERT INTO {schema}.types VALUES
              (1, 9007199254740993, 1.5, E'a, "quoted"\\nnewline', '', true, '2024-03-10 01:30:00.123456-05', '2024-03-10'),
              (2, NULL, -2.25e300, NULL, 'x', false, NULL, NULL),
              (3, -9223372036854775807, NULL, 'O''Brien, "Jr"', NULL, NULL, '1970-01-01 00:00:00+00', '1900-01-01');""")
    try:
        write_policy(tmp_path, {f"{schema}.types": ["ANALYTICS"]}, default_schema="public")
        add_notebook(tmp_path, "copy", [sql_cell("df", f"SELECT * FROM {schema}.types"), code("out = df"),
                                        write_cell("out", f"{schema}.types_copy"),
                                        write_cell("out", f"{schema}.types_log", "append")])
        assert run(tmp_path, PG_URL, data_format=fmt).success
        assert run(tmp_path, PG_URL, data_format=fmt).success
        for table in ("types_copy", "types_log"):
            assert query(PG_URL, f"SELECT * FROM {schema}.types EXCEPT SELECT * FROM {schema}.{table}") == []
        assert query(PG_URL, f"SELECT count(*) FROM {schema}.types_copy") == [(3,)]  # overwrite
        assert query(PG_URL, f"SELECT count(*) FROM {schema}.types_log") == [(6,)]  # append
        cols = ("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '{}' "
                "AND table_name = '{}' ORDER BY ordinal_position")
        assert query(PG_URL, cols.format(schema, "types_copy")) == query(PG_URL, cols.format(schema, "types"))
        labels = query(PG_URL, f"SELECT zones FROM bento_meta.table_labels WHERE table_name = '{schema}.types_copy'")
        assert json.loads(labels[0][0]) == ["ANALYTICS"]
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")
            con.execute(f"DELETE FROM bento_meta.table_labels WHERE table_name LIKE '{schema}.%'")
            con.execute(f"DELETE FROM bento_meta.landings WHERE table_name LIKE '{schema}.%'")


def test_overwrite_partition_replaces_only_the_runs_day(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb", """
        CREATE SCHEMA raw; CREATE TABLE raw.events AS SELECT * FROM (VALUES
          (DATE '2026-01-01', 1), (DATE '2026-01-01', 2), (DATE '2026-01-02', 5)) AS t(day, v);""")
    write_policy(tmp_path, {"raw.events": ["ANALYTICS"]})
    add_notebook(tmp_path, "daily", [
        sql_cell("ev", "SELECT sum(v) AS total FROM raw.events WHERE day = DATE '{{ ds }}'"),
        code("ev['ds'] = ds"), write_cell("ev", "mart.daily", "overwrite_partition")],
        partitioned="daily", start_date="2026-01-01")
    for day in ("2026-01-01", "2026-01-02", "2026-01-01"):
        assert run(tmp_path, url, partition=day).success
    assert query(url, "SELECT ds, total FROM mart.daily ORDER BY ds") == [("2026-01-01", 3), ("2026-01-02", 5)]


# ------------------------------------------------------------------------------------------------
# failures: a clear error, the executed notebook kept, nothing written, no run directory left


def test_cell_error_is_structured_and_notebook_kept(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "boom", [sql_cell("df", "SELECT * FROM raw.types"), code("x = 1"),
                                    code("out = df.assign(r=1 / 0)"), write_cell("out", "mart.never")])
    with pytest.raises(DagsterBentoCellError) as info:
        run(tmp_path, url)
    err = info.value
    assert err.cell == 2 and err.ename == "ZeroDivisionError"  # index in the original notebook
    assert "notebooks/boom.ipynb" in str(err) and "cell 2" in str(err) and "division by zero" in str(err)
    kept = Path(err.executed_notebook)
    assert kept.exists() and kept.parent == tmp_path / "artifacts" / "boom"
    outputs = [o for c in nbformat.read(kept, as_version=4).cells for o in c.get("outputs", [])]
    assert any(o.get("ename") == "ZeroDivisionError" for o in outputs)
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'never'") == [(0,)]
    events = [json.loads(x) for x in (tmp_path / "artifacts" / "openlineage.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "FAIL"]


def test_kernel_death_is_reported(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "dies", [sql_cell("df", "SELECT * FROM raw.types"),
                                    code("import os\nos._exit(3)"), write_cell("df", "mart.never")])
    with pytest.raises(DagsterBentoKernelDiedError) as info:
        run(tmp_path, url)
    assert "notebooks/dies.ipynb" in str(info.value) and "cell" in str(info.value)
    assert Path(info.value.executed_notebook).exists()


def test_kernel_that_cannot_start_is_reported(tmp_path, clean_run_dirs):
    """The run starts its kernel before anything else (BentoResource.run); one that dies during start-up
    (here: a memory limit too small for Python) fails the run with the kernel's own output, at the cell
    the notebook was waiting on, and no table is written."""
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "tiny", [sql_cell("df", "SELECT * FROM raw.types"), write_cell("df", "mart.never")])
    with pytest.raises((DagsterBentoKernelDiedError, DagsterBentoSandboxUnavailableError)) as info:
        run(tmp_path, url, memory_limit_mb=20)  # the operator's setting (a spec may not go below 128)
    message = str(info.value)
    assert "notebooks/tiny.ipynb" in message and "20 MB" in message
    if isinstance(info.value, DagsterBentoKernelDiedError):  # cgroup: killed at start-up
        assert "during startup" in message and "memory limit of 20 MB" in message
    else:  # rlimits: refused before the kernel starts
        assert "memory limit of 20 MB (memory_limit_mb)" in message
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'never'") == [(0,)]


def test_timeout_is_reported(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "slow", [sql_cell("df", "SELECT * FROM raw.types"),
                                    code("import time\ntime.sleep(60)"), write_cell("df", "mart.never")],
                 timeout_seconds=4)
    with pytest.raises(DagsterBentoTimeoutError) as info:
        run(tmp_path, url)
    assert "4" in str(info.value) and "notebooks/slow.ipynb" in str(info.value)


def test_missing_output_file(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "gone", [sql_cell("df", "SELECT * FROM raw.types"), write_cell("df", "mart.gone"),
                                    code("import os\nos.remove('outputs/mart.gone.parquet')")])
    with pytest.raises(DagsterBentoOutputError) as info:
        run(tmp_path, url)
    assert "write cell 1" in str(info.value) and "mart.gone" in str(info.value)
    assert info.value.executed_notebook and Path(info.value.executed_notebook).exists()


def test_columns_not_matching_existing_table(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb", TYPES_DUCKDB + "CREATE SCHEMA mart; CREATE TABLE mart.log (id BIGINT, other VARCHAR);")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"], "mart.log": ["ANALYTICS"]})
    add_notebook(tmp_path, "app", [sql_cell("df", "SELECT id, s FROM raw.types"),
                                   write_cell("df", "mart.log", "append")])
    with pytest.raises(DagsterBentoOutputError) as info:
        run(tmp_path, url)
    assert "mart.log" in str(info.value) and "other" in str(info.value)
    assert query(url, "SELECT count(*) FROM mart.log") == [(0,)]


def test_no_partial_tables_after_failure_mid_upload(tmp_path, monkeypatch, clean_run_dirs):
    from dagster_bento import warehouse

    url = seed_duckdb(tmp_path / "wh.duckdb", TYPES_DUCKDB + "CREATE SCHEMA mart; CREATE TABLE mart.a AS SELECT 42 AS old;")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"], "mart.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "two", [sql_cell("df", "SELECT * FROM raw.types"), write_cell("df", "mart.a"),
                                   write_cell("df", "mart.b")])
    real = warehouse.DuckDBWarehouse.upload
    # failure injection: the warehouse raises after the first table was loaded inside the transaction
    monkeypatch.setattr(warehouse.DuckDBWarehouse, "upload", lambda self, reqs, **kw: real(self, reqs, _fail_after=1, **kw))
    with pytest.raises(DagsterBentoUploadError):
        run(tmp_path, url)
    assert query(url, "SELECT * FROM mart.a") == [(42,)]
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'b'") == [(0,)]


def test_sql_error_names_cell(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "badcol", [sql_cell("df", "SELECT no_such_column FROM raw.types"),
                                      write_cell("df", "mart.x")])
    with pytest.raises(DagsterBentoRunError) as info:
        run(tmp_path, url)
    assert "notebooks/badcol.ipynb" in str(info.value) and "cell 0" in str(info.value)
    assert "no_such_column" in str(info.value)


def test_sandbox_none_runs_with_a_loud_warning(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    passthrough_project(tmp_path, "raw.types", "mart.copy")
    with dg.instance_for_test() as instance:
        result = run(tmp_path, url, sandbox="none", instance=instance)
        assert result.success
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == 30]
    assert any("sandbox: none" in m for m in warnings), warnings


def test_notebook_changed_after_load_is_refused(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    project = passthrough_project(tmp_path, "raw.types", "mart.copy")
    resource = resource_for(project, url)
    defs = build_bento_definitions(project_dir=project, warehouse_url=url, resource=resource)
    add_notebook(tmp_path, "copy", [sql_cell("df", "SELECT id FROM raw.types"), code("out = df"),
                                    write_cell("out", "mart.copy")])
    multi = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    with pytest.raises(DagsterBentoRunError, match="changed since the definitions were loaded"):
        dg.materialize(multi, resources={"bento": resource})


# ------------------------------------------------------------------------------------------------
# purpose zones at run time


def zoned_project(tmp_path: Path, zones: dict) -> tuple[Path, str]:
    url = seed_duckdb(tmp_path / "wh.duckdb", TYPES_DUCKDB + "CREATE TABLE raw.other AS SELECT 1 AS id;")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"], "raw.other": ["ANALYTICS"]}, zones=zones)
    add_notebook(tmp_path, "z", [sql_cell("df", "SELECT t.* FROM raw.types AS t JOIN raw.other AS o ON o.id = t.id"),
                                 write_cell("df", "mart.z")])
    return tmp_path, url


ZONES = {"ANALYTICS": {"permits": ["ANALYTICS"]}, "HEALTH": {"permits": ["HEALTH"]},
         "BETA": {"permits": ["BETA"], "mode": "log"}}


def test_label_changed_between_load_and_run_is_caught_before_fetch(tmp_path, clean_run_dirs):
    project, url = zoned_project(tmp_path, ZONES)
    resource = resource_for(project, url)
    defs = build_bento_definitions(project_dir=project, warehouse_url=url, resource=resource)  # loads fine
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"], "raw.other": ["HEALTH"]}, zones=ZONES)  # reclassified
    multi = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    with pytest.raises(DagsterBentoPolicyError) as info:
        dg.materialize(multi, resources={"bento": resource})
    text = str(info.value)
    assert "PZ001" in text and "pre_fetch" in text and "raw.other" in text and "HEALTH" in text
    assert info.value.executed_notebook is None  # refused before anything ran
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'z'") == [(0,)]
    events = [json.loads(x) for x in (tmp_path / "artifacts" / "openlineage.jsonl").read_text().splitlines()]
    assert events[-1]["eventType"] == "FAIL"


def test_blocked_upload_leaves_target_untouched(tmp_path, clean_run_dirs):
    project, url = zoned_project(tmp_path, ZONES)
    con = duckdb.connect(url.removeprefix("duckdb:///"))
    con.execute("CREATE SCHEMA mart; CREATE TABLE mart.z AS SELECT 'old' AS v")
    con.close()
    tables = {"raw.types": ["ANALYTICS"], "raw.other": ["ANALYTICS"], "mart.z": ["ANALYTICS"]}
    write_policy(tmp_path, tables, zones=ZONES)
    resource = resource_for(project, url)
    defs = build_bento_definitions(project_dir=project, warehouse_url=url, resource=resource)
    # after load, raw.types gains a zone that mart.z's declared label lacks... and the notebook may read it
    zones = {**ZONES, "HEALTH": {"permits": ["HEALTH", "ANALYTICS"]}}
    write_policy(tmp_path, {**tables, "raw.types": ["ANALYTICS", "HEALTH"]}, zones=zones)
    multi = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    with pytest.raises(DagsterBentoPolicyError) as info:
        dg.materialize(multi, resources={"bento": resource})
    assert "PZ004" in str(info.value) and "pre_upload" in str(info.value) and "mart.z" in str(info.value)
    assert query(url, "SELECT * FROM mart.z") == [("old",)]
    assert Path(info.value.executed_notebook).exists()  # the notebook ran; its output was refused


def test_log_mode_zone_records_violation_and_finishes(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb", TYPES_DUCKDB + "CREATE TABLE raw.other AS SELECT 1 AS id;")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"], "raw.other": ["BETA"]}, zones=ZONES)
    add_notebook(tmp_path, "z", [sql_cell("df", "SELECT t.* FROM raw.types AS t JOIN raw.other AS o ON o.id = t.id"),
                                 write_cell("df", "mart.z")])
    result = run(tmp_path, url)
    assert result.success
    meta = materializations(result)["mart/z"]
    assert meta["dagster_bento/output_label"].data == ["ANALYTICS", "BETA"]
    (violation,) = meta["dagster_bento/logged_violations"].data
    assert violation["code"] == "PZ001" and violation["enforced"] is False and violation["table"] == "raw.other"
    labels = query(url, "SELECT zones FROM bento_meta.table_labels WHERE table_name = 'mart.z'")
    assert json.loads(labels[0][0]) == ["ANALYTICS", "BETA"]
    complete = json.loads((tmp_path / "artifacts" / "openlineage.jsonl").read_text().splitlines()[-1])
    check = complete["run"]["facets"]["dagsterBento_zoneCheck"]
    assert complete["eventType"] == "COMPLETE" and check["blocked"] is False
    assert [v["code"] for v in check["violations"]] == ["PZ001"]


# ------------------------------------------------------------------------------------------------
# OpenLineage from real runs, received over HTTP on loopback

from tests.test_lineage import Schemas, _spec_dir, lineage_server  # noqa: E402,F401  (fixture)


def test_openlineage_events_of_real_runs_over_http(tmp_path, lineage_server, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "ok", [sql_cell("df", "SELECT id, s FROM raw.types"), write_cell("df", "mart.ok")])
    add_notebook(tmp_path, "bad", [sql_cell("df", "SELECT id FROM raw.types"), code("raise ValueError('nope')"),
                                   write_cell("df", "mart.bad")])
    endpoint = f"http://127.0.0.1:{lineage_server.server_address[1]}"
    assert run(tmp_path, url, select="ok", lineage_transport="http", lineage_url=endpoint).success
    assert not run(tmp_path, url, select="bad", lineage_transport="http", lineage_url=endpoint,
                   raise_on_error=False).success
    events = [body for _path, _ctype, body in lineage_server.received]
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("ok", "START"), ("ok", "COMPLETE"), ("bad", "START"), ("bad", "FAIL")]
    schemas = Schemas(_spec_dir())
    for event in events:
        schemas.validate_event(event)
    complete = events[1]
    (out,) = complete["outputs"]
    assert out["name"] == "mart.ok" and out["facets"]["dagsterBento_purposeZone"]["zones"] == ["ANALYTICS"]
    assert [f["name"] for f in out["facets"]["schema"]["fields"]] == ["id", "s"]
    assert out["facets"]["columnLineage"]["fields"]["s"]["inputFields"][0]["name"] == "raw.types"
    assert "nope" in events[3]["run"]["facets"]["errorMessage"]["message"]


def test_slow_fetch_is_cancelled_at_the_time_limit_and_releases_the_warehouse(tmp_path, clean_run_dirs):
    """The run's time limit covers the fetch: a SQL cell's query that would run for hours is cancelled when the
    run times out, and the DuckDB file is free for other runs' uploads right away."""
    from dagster_bento.warehouse import _file_lock

    url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.big AS SELECT range AS i FROM range(3000);")
    write_policy(tmp_path, {"raw.big": ["ANALYTICS"]})
    add_notebook(tmp_path, "slow_sql", [
        sql_cell("n", "SELECT count(*) AS n FROM raw.big AS a, raw.big AS b, raw.big AS c "
                      "WHERE md5(CAST(a.i AS VARCHAR) || CAST(b.i AS VARCHAR) || CAST(c.i AS VARCHAR)) = 'x'"),
        write_cell("n", "mart.never")], timeout_seconds=6)
    started = time.monotonic()
    with pytest.raises(DagsterBentoRunError) as info:
        run(tmp_path, url)
    assert time.monotonic() - started < 60, "the run waited for the query instead of cancelling it"
    assert "notebooks/slow_sql.ipynb" in str(info.value)
    with _file_lock(Path(str(tmp_path / "wh.duckdb") + ".bento.lock"), exclusive=True, timeout=1):
        pass  # no fetch holds the warehouse any more


def test_write_cell_keeps_a_named_index_and_refuses_one_it_would_lose(tmp_path, clean_run_dirs):
    """A new user's counts per weekday: the weekday names are the index. They land as a column; an unnamed
    label index is refused by the write cell, naming notebook, cell and fix."""
    url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.events AS SELECT * FROM "
                      "(VALUES ('Mon', 1), ('Tue', 2), ('Mon', 3)) AS t(weekday, n);")
    write_policy(tmp_path, {"raw.events": ["ANALYTICS"]})
    add_notebook(tmp_path, "per_weekday", [sql_cell("events", "SELECT weekday, n FROM raw.events"),
                                           code("counts = events.groupby('weekday')['n'].count().to_frame('events')"),
                                           write_cell("counts", "mart.per_weekday")])
    run(tmp_path, url)
    assert query(url, "SELECT weekday, events FROM mart.per_weekday ORDER BY 1") == [("Mon", 2), ("Tue", 1)]
    add_notebook(tmp_path, "unnamed", [sql_cell("events", "SELECT weekday, n FROM raw.events"),
                                       code("labels = events.set_index('weekday').rename_axis(None)"),
                                       write_cell("labels", "mart.unnamed")])
    with pytest.raises(DagsterBentoCellError) as info:
        run(tmp_path, url, select="unnamed")
    message = str(info.value)
    assert "notebooks/unnamed.ipynb: cell 2" in message and "mart.unnamed" in message
    assert "labels = labels.rename_axis('<name>')" in message and "reset_index(drop=True)" in message
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'unnamed'") == [(0,)]
