"""Warehouse tests against real DuckDB files (in tmp_path) and the real PostgreSQL on 127.0.0.1:5432."""

import contextlib
import dataclasses
import datetime as dt
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_bento.errors import DagsterBentoFetchError, DagsterBentoOutputError, DagsterBentoUploadError
from dagster_bento.warehouse import (
    ColumnInfo,
    DuckDBWarehouse,
    PostgresWarehouse,
    UploadRequest,
    Warehouse,
    csv_schema_path,
    register_warehouse,
    warehouse_from_url,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NB = "notebooks/revenue.ipynb"


# --------------------------------------------------------------------------------------------------
# Fixtures: one "Env" per warehouse kind, with a way to run setup/check SQL outside the warehouse API


@dataclasses.dataclass
class Env:
    wh: Warehouse
    schema: str
    execute: Callable[[str], list[tuple[Any, ...]]]
    tmp: Path

    def t(self, name: str) -> str:
        return f"{self.schema}.{name}"

    def scalar(self, sql: str) -> Any:
        return self.execute(sql)[0][0]

    def count(self, table: str) -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table}"))

    def exists(self, table: str) -> bool:
        return self.wh.table_exists(table)

    def parquet(self, name: str, data: dict[str, Any] | pa.Table) -> Path:
        path = self.tmp / f"{name}.parquet"
        table = data if isinstance(data, pa.Table) else pa.table(data)
        pq.write_table(table, path)
        return path


def _duck_execute(path: Path) -> Callable[[str], list[tuple[Any, ...]]]:
    def execute(sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(path))
        try:
            rel = con.sql(sql)
            return rel.fetchall() if rel is not None else []
        finally:
            con.close()

    return execute


def _pg_execute(sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def pg_schema() -> Iterator[str]:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as err:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({err}). The postgres-marked tests need it: start the "
            "server on 127.0.0.1:5432 (trust auth, database 'test'), or deselect them with -m 'not postgres'.",
            pytrace=False,
        )
    schema = f"bt_{uuid.uuid4().hex[:10]}"
    yield schema
    _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    if _pg_execute("SELECT to_regclass('bento_meta.landings') IS NOT NULL")[0][0]:
        _pg_execute(f"DELETE FROM bento_meta.landings WHERE table_name LIKE '{schema}.%'")
        _pg_execute(f"DELETE FROM bento_meta.table_labels WHERE table_name LIKE '{schema}.%'")


@pytest.fixture
def duck_env(tmp_path: Path) -> Iterator[Env]:
    db = tmp_path / "wh.duckdb"
    wh = DuckDBWarehouse(db)
    _duck_execute(db)("CREATE SCHEMA analytics")
    yield Env(wh, "analytics", _duck_execute(db), tmp_path)
    wh.close()


@pytest.fixture
def pg_env(pg_schema: str, tmp_path: Path) -> Iterator[Env]:
    _pg_execute(f'CREATE SCHEMA "{pg_schema}"')
    wh = PostgresWarehouse(PG_URL)
    yield Env(wh, pg_schema, _pg_execute, tmp_path)
    wh.close()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest) -> Env:
    return request.getfixturevalue("duck_env" if request.param == "duckdb" else "pg_env")


# --------------------------------------------------------------------------------------------------
# URLs


def test_duckdb_url_relative_path_resolves_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wh = warehouse_from_url("duckdb:///data/wh.duckdb")
    assert isinstance(wh, DuckDBWarehouse)
    assert (wh.kind, wh.dialect) == ("duckdb", "duckdb")
    assert wh.path == tmp_path / "data" / "wh.duckdb"
    assert wh.url == "duckdb:///data/wh.duckdb"
    assert wh.table_exists("main.nothing") is False  # creates the file (and its directory) on first use
    assert wh.path.exists()


def test_duckdb_url_absolute_and_memory(tmp_path: Path) -> None:
    wh = warehouse_from_url(f"duckdb:///{tmp_path}/abs.duckdb?lock_timeout=7")
    assert isinstance(wh, DuckDBWarehouse)
    assert wh.path == tmp_path / "abs.duckdb"
    assert wh.lock_timeout == 7.0
    assert wh.lock_path == tmp_path / "abs.duckdb.bento.lock"
    mem = warehouse_from_url("duckdb:///:memory:")
    assert isinstance(mem, DuckDBWarehouse) and mem.path is None
    mem.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg", "postgresql+adbc", "postgres"])
def test_postgres_url_masks_password(scheme: str) -> None:
    wh = warehouse_from_url(f"{scheme}://alice:s3cr%40t@db.example.com:6543/sales?sslmode=require")
    assert isinstance(wh, PostgresWarehouse)
    assert (wh.kind, wh.dialect) == ("postgres", "postgres")
    assert "s3cr" not in wh.url and "***" in wh.url
    assert "db.example.com:6543/sales" in wh.url and "s3cr" not in repr(wh)
    assert wh._uri == "postgresql://alice:s3cr%40t@db.example.com:6543/sales?sslmode=require"


def test_unknown_scheme_and_register_warehouse(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dagster_bento.warehouse as module

    with pytest.raises(ValueError, match="No warehouse is registered for URL scheme 'snowflake'.*duckdb, postgresql"):
        warehouse_from_url("snowflake://u:pw@acct/db")
    monkeypatch.setattr(module, "_FACTORIES", dict(module._FACTORIES))
    seen: list[str] = []

    def factory(url: str) -> Warehouse:
        seen.append(url)
        return DuckDBWarehouse(tmp_path / "custom.duckdb", url=url)

    register_warehouse("snowflake", factory)
    wh = warehouse_from_url("snowflake://u:pw@acct/db")
    assert seen == ["snowflake://u:pw@acct/db"] and isinstance(wh, DuckDBWarehouse)
    assert "pw" not in wh.url


# --------------------------------------------------------------------------------------------------
# Fetch


def test_duckdb_fetch_writes_parquet_with_rows_and_types(duck_env: Env) -> None:
    duck_env.execute(
        "CREATE TABLE analytics.orders AS SELECT range AS id, (range % 3)::INTEGER AS qty, 'x' || range AS name "
        "FROM range(10)"
    )
    out = duck_env.tmp / "out" / "orders.parquet"
    result = duck_env.wh.fetch(
        "SELECT id, qty, name FROM analytics.orders WHERE id < 5 ORDER BY id; -- trailing\n", out, notebook=NB, cell=2
    )
    assert result.path == out and result.rows == 5 and result.seconds >= 0
    assert result.columns == (ColumnInfo("id", "BIGINT"), ColumnInfo("qty", "INTEGER"), ColumnInfo("name", "VARCHAR"))
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert table.schema.field("qty").type == pa.int32()
    assert [p.name for p in out.parent.iterdir()] == ["orders.parquet"]  # no temp files left


@pytest.mark.postgres
def test_postgres_fetch_writes_parquet_with_rows_and_types(pg_env: Env) -> None:
    t = pg_env.t("orders")
    pg_env.execute(
        f"CREATE TABLE {t} AS SELECT g::bigint AS id, (g % 3)::int AS qty, 'x' || g AS name, "
        "(g / 4.0)::numeric(10,2) AS amount FROM generate_series(0, 9) g"
    )
    out = pg_env.tmp / "orders.parquet"
    result = pg_env.wh.fetch(f"SELECT * FROM {t} WHERE id < 5 ORDER BY id;", out, notebook=NB, cell=2)
    assert result.rows == 5
    assert result.columns == (
        ColumnInfo("id", "bigint"),
        ColumnInfo("qty", "integer"),
        ColumnInfo("name", "text"),
        ColumnInfo("amount", "numeric(10,2)"),
    )
    table = pq.read_table(out)
    assert table.schema.field("amount").type == pa.decimal128(10, 2)
    assert [str(v) for v in table.column("amount").to_pylist()] == ["0.00", "0.25", "0.50", "0.75", "1.00"]


@pytest.mark.postgres
def test_postgres_fetch_empty_result_keeps_schema(pg_env: Env) -> None:
    out = pg_env.tmp / "empty.parquet"
    result = pg_env.wh.fetch("SELECT 1::bigint AS a, 'x'::text AS b WHERE false", out)
    assert result.rows == 0
    assert pq.read_schema(out).names == ["a", "b"]


def test_fetch_bad_sql_names_notebook_and_cell(env: Env) -> None:
    out = env.tmp / "bad.parquet"
    with pytest.raises(DagsterBentoFetchError) as info:
        env.wh.fetch(f"SELECT * FROM {env.t('no_such_table')}", out, notebook=NB, cell=3)
    err = info.value
    assert err.notebook == NB and err.cell == 3
    assert f"SQL cell 3 of {NB}" in str(err)
    assert "no_such_table" in str(err) and "does not exist" in str(err)
    assert not out.exists()


def test_fetch_refuses_multiple_statements(env: Env) -> None:
    with pytest.raises(DagsterBentoFetchError, match="more than one statement"):
        env.wh.fetch("SELECT 1; SELECT 2", env.tmp / "x.parquet", notebook=NB, cell=1)
    # a semicolon inside a string literal is not a statement separator
    result = env.wh.fetch("SELECT ';' AS s;;", env.tmp / "y.parquet")
    assert pq.read_table(result.path).column("s").to_pylist() == [";"]


def test_fetch_is_read_only(env: Env) -> None:
    with pytest.raises(DagsterBentoFetchError):
        env.wh.fetch(f"CREATE TABLE {env.t('sneaky')} AS SELECT 1 AS a", env.tmp / "x.parquet", notebook=NB, cell=1)
    assert not env.exists(env.t("sneaky"))


# --------------------------------------------------------------------------------------------------
# Type fidelity: warehouse -> fetch -> pandas (pyarrow dtypes) -> to_parquet -> upload -> compare in SQL

_SRC_COLUMNS = (
    "id BIGINT, big BIGINT, dbl DOUBLE PRECISION, s TEXT, b BOOLEAN, ts TIMESTAMP WITH TIME ZONE, d DATE, tsn TIMESTAMP"
)
_SRC_ROWS = (
    "(1, 9007199254740993, 1.5, 'O''Brien, \"Jr\"' || chr(10) || 'line2', true, "
    "'2024-03-10 01:30:00.123456+00', '2024-03-10', '2024-03-10 01:30:00.654321'), "
    "(2, NULL, NULL, '', NULL, NULL, NULL, NULL), "
    "(3, -1152921504606846977, -0.1, NULL, false, '1970-01-01 00:00:00+00', '1900-01-01', '1999-12-31 23:59:59'), "
    "(4, 1152921504606846977, 1e-300, 'a,b', true, '2262-04-11 23:47:16.854775+00', '2999-12-31', "
    "'2000-01-01 00:00:00')"
)


def test_type_round_trip_is_exact(env: Env) -> None:
    src, dst = env.t("src"), env.t("dst")
    env.execute(f"CREATE TABLE {src} ({_SRC_COLUMNS})")
    env.execute(f"INSERT INTO {src} VALUES {_SRC_ROWS}")
    fetched = env.wh.fetch(f"SELECT * FROM {src}", env.tmp / "src.parquet", notebook=NB, cell=1)
    assert fetched.rows == 4

    df = pd.read_parquet(fetched.path, dtype_backend="pyarrow")
    assert str(df["big"].dtype) == "int64[pyarrow]"
    out = env.tmp / "dst.parquet"
    df.to_parquet(out, index=False)

    [result] = env.wh.upload([UploadRequest(dst, out, notebook=NB, cell=4)], run_id="r1")
    assert (result.table, result.rows_written, result.rows_in_table) == (dst, 4, 4)
    assert env.wh.table_columns(dst) == env.wh.table_columns(src)  # same names, same warehouse types
    assert env.count(f"(SELECT * FROM {src} EXCEPT SELECT * FROM {dst}) x") == 0
    assert env.count(f"(SELECT * FROM {dst} EXCEPT SELECT * FROM {src}) x") == 0
    assert env.scalar(f"SELECT count(*) FROM {dst} WHERE s = ''") == 1
    assert env.scalar(f"SELECT count(*) FROM {dst} WHERE s IS NULL") == 1
    assert env.scalar(f"SELECT big FROM {dst} WHERE id = 1") == 2**53 + 1
    assert env.scalar(f"SELECT s FROM {dst} WHERE id = 1") == 'O\'Brien, "Jr"\nline2'


# --------------------------------------------------------------------------------------------------
# Upload semantics


def test_overwrite_replaces_rows_and_columns(env: Env) -> None:
    t = env.t("daily")
    first = env.parquet("first", {"id": [1, 2, 3], "name": ["a", "b", "c"]})
    second = env.parquet("second", {"id": [10, 20], "amount": [1.5, 2.5]})
    [r1] = env.wh.upload([UploadRequest(t, first)], run_id="r1", notebook=NB)
    assert (r1.rows_written, r1.rows_in_table) == (3, 3)
    [r2] = env.wh.upload([UploadRequest(t, second, mode="overwrite")], run_id="r2", notebook=NB)
    assert (r2.rows_written, r2.rows_in_table) == (2, 2)
    assert [c.name for c in r2.columns] == ["id", "amount"]
    assert sorted(r[0] for r in env.execute(f"SELECT id FROM {t}")) == [10, 20]


def test_append_adds_rows_matching_by_name_with_widening(env: Env) -> None:
    t = env.t("events")
    env.wh.upload([UploadRequest(t, env.parquet("a", {"id": [1, 2], "name": ["a", "b"]}), mode="append")], run_id="r1")
    # columns in another order, and int32 into a BIGINT column
    more = env.parquet("b", pa.table({"name": ["c", "d", "e"], "id": pa.array([3, 4, 5], pa.int32())}))
    [result] = env.wh.upload([UploadRequest(t, more, mode="append")], run_id="r2")
    assert (result.rows_written, result.rows_in_table) == (3, 5)
    assert sorted(env.execute(f"SELECT id, name FROM {t}")) == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]
    assert [c.type.lower() for c in env.wh.table_columns(t) or ()] == [
        "bigint",
        "text" if env.wh.kind == "postgres" else "varchar",
    ]


def test_overwrite_partition_semantics(env: Env) -> None:
    t = env.t("sales")
    d1, d2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
    env.wh.upload([UploadRequest(t, env.parquet("p0", {"ds": [d1, d1, d2, d2], "amount": [1, 2, 3, 4]}))], run_id="r0")
    replacement = env.parquet("p2", {"amount": [30, 31, 32], "ds": [d2, d2, d2]})
    [result] = env.wh.upload(
        [UploadRequest(t, replacement, mode="overwrite_partition", partition_value="2024-01-02")], run_id="r1"
    )
    assert (result.rows_written, result.rows_in_table) == (3, 5)
    rows = sorted(env.execute(f"SELECT ds, amount FROM {t}"))
    assert rows == [(d1, 1), (d1, 2), (d2, 30), (d2, 31), (d2, 32)]
    # a new table is created by the first partition
    fresh = env.t("fresh")
    env.wh.upload(
        [
            UploadRequest(
                fresh,
                env.parquet("f", {"ds": ["2024-01-05"], "v": [1]}),
                mode="overwrite_partition",
                partition_value="2024-01-05",
            )
        ],
        run_id="r2",
    )
    assert env.count(fresh) == 1
    # text partition column: compared as text
    env.wh.upload(
        [
            UploadRequest(
                fresh,
                env.parquet("f2", {"ds": ["2024-01-05", "2024-01-05"], "v": [2, 3]}),
                mode="overwrite_partition",
                partition_value="2024-01-05",
            )
        ],
        run_id="r3",
    )
    assert sorted(r[0] for r in env.execute(f"SELECT v FROM {fresh}")) == [2, 3]


def test_overwrite_partition_validates_rows(env: Env) -> None:
    t = env.t("sales")
    mixed = env.parquet("mixed", {"ds": [dt.date(2024, 1, 1), dt.date(2024, 1, 2), None], "amount": [1, 2, 3]})
    with pytest.raises(DagsterBentoOutputError, match=r"2 of 3 rows have another ds") as info:
        env.wh.upload(
            [UploadRequest(t, mixed, mode="overwrite_partition", partition_value="2024-01-01", notebook=NB, cell=5)],
            run_id="r1",
        )
    assert info.value.cell == 5 and f"write cell 5 of {NB}" in str(info.value)
    no_ds = env.parquet("nods", {"amount": [1]})
    with pytest.raises(DagsterBentoOutputError, match="has no such column"):
        env.wh.upload([UploadRequest(t, no_ds, mode="overwrite_partition", partition_value="2024-01-01")], run_id="r1")
    with pytest.raises(DagsterBentoOutputError, match="no partition value"):
        env.wh.upload([UploadRequest(t, mixed, mode="overwrite_partition")], run_id="r1")
    assert not env.exists(t)


def test_append_column_mismatch_lists_columns_and_fix(env: Env) -> None:
    t = env.t("customers")
    env.wh.upload(
        [UploadRequest(t, env.parquet("c0", {"id": [1], "name": ["a"], "signup": [dt.date(2024, 1, 1)]}))], run_id="r0"
    )
    bad = env.parquet("c1", {"id": ["not-an-int"], "nme": ["b"], "signup": [dt.date(2024, 1, 2)], "extra": [1.0]})
    with pytest.raises(DagsterBentoOutputError) as info:
        env.wh.upload([UploadRequest(t, bad, mode="append", notebook=NB, cell=7)], run_id="r1")
    message = str(info.value)
    assert f"write cell 7 of {NB} does not fit table {t}" in message
    assert "missing columns (in the table, not in the output): name" in message
    assert "extra columns (in the output, not in the table): nme, extra" in message
    assert "incompatible types: id (output string" in message
    assert "mode 'overwrite'" in message
    assert env.count(t) == 1


def test_missing_output_file(env: Env) -> None:
    missing = env.tmp / "never_written.parquet"
    with pytest.raises(DagsterBentoOutputError) as info:
        env.wh.upload([UploadRequest(env.t("x"), missing, notebook=NB, cell=4)], run_id="r1")
    assert f"write cell 4 of {NB} did not write {missing}" in str(info.value)
    assert "must run to the end" in str(info.value)
    assert info.value.notebook == NB and info.value.cell == 4


def test_unreadable_parquet(env: Env) -> None:
    garbage = env.tmp / "garbage.parquet"
    garbage.write_text("id,name\n1,a\n")
    with pytest.raises(DagsterBentoOutputError, match="not a readable Parquet file"):
        env.wh.upload([UploadRequest(env.t("x"), garbage, notebook=NB, cell=4)], run_id="r1")


def test_pandas_index_column_is_dropped(env: Env) -> None:
    df = pd.DataFrame({"v": [1, 2]}, index=[10, 11])
    path = env.tmp / "indexed.parquet"
    df.to_parquet(path)  # writes __index_level_0__
    [result] = env.wh.upload([UploadRequest(env.t("indexed"), path)], run_id="r1")
    assert [c.name for c in result.columns] == ["v"]


# --------------------------------------------------------------------------------------------------
# Atomicity and labels


def test_failure_after_first_table_changes_nothing(env: Env) -> None:
    a, b = env.t("a"), env.t("b")
    env.wh.upload([UploadRequest(a, env.parquet("old", {"id": [1, 2]}), label=frozenset({"finance"}))], run_id="r0")
    requests = [
        UploadRequest(
            a, env.parquet("new_a", {"id": [7, 8, 9, 10, 11]}), label=frozenset({"marketing"}), notebook=NB, cell=2
        ),
        UploadRequest(b, env.parquet("new_b", {"id": [1]}), notebook=NB, cell=3),
    ]
    with pytest.raises(DagsterBentoUploadError) as info:
        env.wh.upload(requests, run_id="r1", _fail_after=1)  # type: ignore[call-arg]
    assert "Nothing was written" in str(info.value) and "injected failure" in str(info.value)
    assert sorted(r[0] for r in env.execute(f"SELECT id FROM {a}")) == [1, 2]
    assert not env.exists(b)
    assert env.wh.read_labels([a, b]) == {a: frozenset({"finance"})}


def test_database_error_in_second_table_rolls_back_first(env: Env) -> None:
    a, narrow = env.t("a"), env.t("narrow")
    env.execute(f"CREATE TABLE {narrow} (v INTEGER)")
    env.wh.upload([UploadRequest(a, env.parquet("old", {"id": [1, 2]}))], run_id="r0")
    too_big = env.parquet("too_big", pa.table({"v": pa.array([2**40], pa.int64())}))
    requests = [
        UploadRequest(a, env.parquet("new_a", {"id": [5]}), mode="append"),
        UploadRequest(narrow, too_big, mode="append", notebook=NB, cell=6),
    ]
    with pytest.raises(DagsterBentoUploadError) as info:
        env.wh.upload(requests, run_id="r1")
    message = str(info.value)
    assert f"Loading table {narrow} (append" in message and f"write cell 6 of {NB}" in message
    assert "Nothing was written" in message
    assert info.value.notebook == NB and info.value.cell == 6
    assert env.count(a) == 2 and env.count(narrow) == 0


def test_labels_stored_with_data_and_kept_on_failure(env: Env) -> None:
    t, other = env.t("labelled"), env.t("plain")
    assert env.wh.read_labels([t]) == {}  # no label store yet
    env.wh.upload(
        [
            UploadRequest(
                t, env.parquet("l1", {"id": [1]}), label=frozenset({"pii", "finance"}), label_origin="reclassified"
            ),
            UploadRequest(other, env.parquet("p1", {"id": [1]})),
        ],
        run_id="run-1",
        notebook=NB,
    )
    assert env.wh.read_labels([t, other, "analytics.unknown"]) == {t: frozenset({"pii", "finance"})}
    row = env.execute(f"SELECT zones, origin, notebook, run_id FROM bento_meta.table_labels WHERE table_name = '{t}'")
    assert row == [('["finance", "pii"]', "reclassified", NB, "run-1")]

    with pytest.raises(DagsterBentoUploadError):
        env.wh.upload(
            [UploadRequest(t, env.parquet("l2", {"id": [2]}), label=frozenset({"finance"}))],
            run_id="run-2",
            _fail_after=1,
        )  # type: ignore[call-arg]
    assert env.wh.read_labels([t]) == {t: frozenset({"pii", "finance"})}

    env.wh.upload([UploadRequest(t, env.parquet("l3", {"id": [3]}), label=frozenset({"finance"}))], run_id="run-3")
    assert env.wh.read_labels([t]) == {t: frozenset({"finance"})}
    landed = env.wh.last_modified([t, other, env.t("never")])
    assert landed[env.t("never")] is None
    stamp = landed[t]
    assert stamp is not None and stamp.endswith("+00:00")
    assert dt.datetime.fromisoformat(stamp) > dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    assert env.scalar(f"SELECT count(*) FROM bento_meta.landings WHERE table_name = '{t}'") == 2


def test_table_schemas_and_exists(env: Env) -> None:
    t = env.t("wide")
    env.wh.upload([UploadRequest(t, env.parquet("w", {"id": [1], "name": ["x"]}), label=frozenset({"z"}))], run_id="r")
    schemas = env.wh.table_schemas()
    assert list(schemas[t]) == ["id", "name"]
    assert not any(k.startswith("bento_meta.") for k in schemas)
    assert env.wh.table_exists(t) and not env.wh.table_exists(env.t("nope"))
    assert env.wh.table_columns(env.t("nope")) is None


# --------------------------------------------------------------------------------------------------
# CSV opt-in


def test_csv_fetch_and_upload_round_trip(env: Env) -> None:
    src, dst = env.t("src"), env.t("dst_csv")
    env.execute(f"CREATE TABLE {src} ({_SRC_COLUMNS})")
    env.execute(f"INSERT INTO {src} VALUES {_SRC_ROWS}")
    out = env.tmp / "src.csv"
    fetched = env.wh.fetch(f"SELECT * FROM {src}", out, fmt="csv", notebook=NB, cell=1)
    assert fetched.rows == 4 and csv_schema_path(out).exists()
    env.wh.upload([UploadRequest(dst, out, fmt="csv")], run_id="r1")
    assert env.wh.table_columns(dst) == env.wh.table_columns(src)
    assert env.count(f"(SELECT * FROM {src} EXCEPT SELECT * FROM {dst}) x") == 0
    assert env.count(f"(SELECT * FROM {dst} EXCEPT SELECT * FROM {src}) x") == 0


def test_arrow_ipc_fetch_and_upload_round_trip(env: Env) -> None:
    """data_format: arrow — Arrow IPC files both ways, every mode, and the checks Parquet gets."""
    import pyarrow as pa

    src, dst = env.t("src"), env.t("dst_arrow")
    env.execute(f"CREATE TABLE {src} ({_SRC_COLUMNS})")
    env.execute(f"INSERT INTO {src} VALUES {_SRC_ROWS}")
    out = env.tmp / "src.arrow"
    assert env.wh.fetch(f"SELECT * FROM {src}", out, fmt="arrow", notebook=NB, cell=1).rows == 4
    assert pa.ipc.open_file(pa.memory_map(str(out))).read_all().num_rows == 4
    for mode in ("overwrite", "append"):
        env.wh.upload([UploadRequest(dst, out, mode=mode, fmt="arrow")], run_id="r1")  # type: ignore[arg-type]
    assert env.wh.table_columns(dst) == env.wh.table_columns(src)
    assert env.count(f"(SELECT * FROM {src} EXCEPT SELECT * FROM {dst}) x") == 0
    assert env.count(f"(SELECT * FROM {dst} EXCEPT SELECT * FROM {src}) x") == 0
    assert env.count(dst) == 8
    broken = env.tmp / "broken.arrow"
    broken.write_bytes(b"not arrow")
    with pytest.raises(DagsterBentoOutputError, match="not a valid Arrow IPC file"):
        env.wh.upload([UploadRequest(dst, broken, fmt="arrow", notebook=NB, cell=3)], run_id="r2")
    assert env.count(dst) == 8  # nothing written


def test_csv_append_uses_table_types_without_sidecar(env: Env) -> None:
    t = env.t("csv_target")
    env.execute(f"CREATE TABLE {t} (id BIGINT, flag BOOLEAN, ts TIMESTAMP WITH TIME ZONE, note TEXT)")
    df = pd.DataFrame(
        {
            "id": pd.array([2**60 + 1, None], dtype="Int64"),
            "flag": [True, False],
            "ts": pd.to_datetime(["2024-01-01 01:02:03.5+00:00", "2024-06-01 00:00:00+00:00"], format="ISO8601"),
            "note": ['say "hi", ok\nbye', "plain"],
        }
    )
    path = env.tmp / "out.csv"
    df.to_csv(path, index=False)
    env.wh.upload([UploadRequest(t, path, mode="append", fmt="csv")], run_id="r1")
    rows = env.execute(f"SELECT id, flag, note FROM {t} ORDER BY note")
    assert rows == [(None, False, "plain"), (2**60 + 1, True, 'say "hi", ok\nbye')]
    ts = env.scalar(f"SELECT min(ts) FROM {t}")
    assert ts.astimezone(dt.timezone.utc) == dt.datetime(2024, 1, 1, 1, 2, 3, 500000, tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------------------------------
# Concurrency: two processes appending to the same table


def _append_worker(url: str, table: str, path: str, times: int, start: Any) -> int:
    start.wait(30)
    wh = warehouse_from_url(url)
    total = 0
    for i in range(times):
        [result] = wh.upload([UploadRequest(table, Path(path), mode="append")], run_id=f"w{i}")
        total += result.rows_written
    wh.close()
    return total


def _run_concurrent_appends(
    url: str, table: str, paths: list[Path], times: int, while_waiting: Callable[[], None]
) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(len(paths)) as pool:
        start = manager.Event()
        pending = [pool.apply_async(_append_worker, (url, table, str(p), times, start)) for p in paths]
        start.set()
        while not all(r.ready() for r in pending):
            while_waiting()
        totals = [r.get(timeout=120) for r in pending]  # re-raises a worker's error
    assert totals == [pq.ParquetFile(p).metadata.num_rows * times for p in paths]


def test_duckdb_concurrent_appends_from_two_processes(duck_env: Env) -> None:
    t = duck_env.t("concurrent")
    n, times = 2000, 8
    paths = [duck_env.parquet(f"w{k}", {"worker": [k] * n, "i": list(range(n))}) for k in range(2)]
    assert isinstance(duck_env.wh, DuckDBWarehouse)
    url = f"duckdb:///{duck_env.wh.path}"
    fetches: list[int] = []

    def read_meanwhile() -> None:  # readers coexist with the writers in other processes
        if duck_env.wh.table_exists(t):
            fetches.append(duck_env.wh.fetch(f"SELECT count(*) AS c FROM {t}", duck_env.tmp / "c.parquet").rows)
        time.sleep(0.01)

    _run_concurrent_appends(url, t, paths, times, read_meanwhile)
    assert fetches, "no fetch ran while the writers were busy"
    assert duck_env.count(t) == 2 * n * times
    assert duck_env.execute(f"SELECT worker, count(*) FROM {t} GROUP BY 1 ORDER BY 1") == [
        (0, n * times),
        (1, n * times),
    ]
    assert duck_env.scalar(f"SELECT count(*) FROM bento_meta.landings WHERE table_name = '{t}'") == 2 * times


@pytest.mark.postgres
def test_postgres_concurrent_appends_from_two_processes(pg_env: Env) -> None:
    t = pg_env.t("concurrent")
    n, times = 2000, 5
    paths = [pg_env.parquet(f"w{k}", {"worker": [k] * n, "i": list(range(n))}) for k in range(2)]
    _run_concurrent_appends(PG_URL, t, paths, times, lambda: time.sleep(0.05))
    assert pg_env.count(t) == 2 * n * times
    assert pg_env.execute(f"SELECT worker, count(*) FROM {t} GROUP BY 1 ORDER BY 1") == [(0, n * times), (1, n * times)]


def test_duckdb_read_waits_for_writer_lock(duck_env: Env) -> None:
    """A fetch while another holder has the write lock waits for it instead of failing."""
    import threading

    from dagster_bento.warehouse import _file_lock

    wh = duck_env.wh
    assert isinstance(wh, DuckDBWarehouse)
    wh.table_exists("analytics.x")  # make sure the file exists
    released = threading.Event()

    def hold() -> None:
        with _file_lock(wh.lock_path, exclusive=True, timeout=5):
            time.sleep(0.4)
            released.set()

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    result = wh.fetch("SELECT 1 AS one", duck_env.tmp / "one.parquet")
    assert released.is_set() and result.rows == 1
    thread.join()


def test_duckdb_memory_warehouse_round_trip(tmp_path: Path) -> None:
    wh = warehouse_from_url("duckdb:///:memory:")
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "a.parquet")
    [result] = wh.upload([UploadRequest("t", tmp_path / "a.parquet")], run_id="r")
    assert result.table == "main.t" and result.rows_in_table == 2
    assert wh.fetch("SELECT sum(a) AS s FROM t", tmp_path / "s.parquet").rows == 1
    assert pq.read_table(tmp_path / "s.parquet").column("s").to_pylist() == [3]
    wh.close()


# --------------------------------------------------------------------------------------------------
# Security: what a SQL cell can reach through fetch


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('{secret}')",
        "SELECT content FROM read_blob('{secret}')",
        "SELECT * FROM glob('{tmp}/*')",
        "SELECT * FROM '{secret}'",
        "SELECT * FROM sniff_csv('{secret}')",
    ],
)
def test_duckdb_fetch_cannot_read_host_files(duck_env: Env, query: str) -> None:
    secret = duck_env.tmp / "secret.txt"
    secret.write_text("orchestrator-only\n")
    out = duck_env.tmp / "leak.parquet"
    with pytest.raises(DagsterBentoFetchError) as info:
        duck_env.wh.fetch(query.format(secret=secret, tmp=duck_env.tmp), out, notebook=NB, cell=1)
    assert "orchestrator-only" not in str(info.value)
    assert not out.exists()


def test_duckdb_fetch_cannot_write_files_or_unlock_settings(duck_env: Env) -> None:
    target = duck_env.tmp / "written.csv"
    with pytest.raises(DagsterBentoFetchError):
        duck_env.wh.fetch(f"COPY (SELECT 42 AS x) TO '{target}'", duck_env.tmp / "x.parquet")
    assert not target.exists()
    for sql in ("SET enable_external_access = true", "SET lock_configuration = false", f"ATTACH '{target}.db'"):
        with pytest.raises(DagsterBentoFetchError):
            duck_env.wh.fetch(sql, duck_env.tmp / "x.parquet")
    assert not Path(f"{target}.db").exists()
    # the database file itself is still read (read-only) and later fetches work normally
    assert duck_env.wh.fetch("SELECT 1 AS one", duck_env.tmp / "one.parquet").rows == 1


def test_duckdb_memory_warehouse_has_no_external_access(tmp_path: Path) -> None:
    wh = warehouse_from_url("duckdb:///:memory:")
    secret = tmp_path / "secret.txt"
    secret.write_text("orchestrator-only")
    with pytest.raises(DagsterBentoFetchError):
        wh.fetch(f"SELECT * FROM read_text('{secret}')", tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), tmp_path / "a.parquet")
    wh.upload([UploadRequest("t", tmp_path / "a.parquet")], run_id="r1")  # uploads still load files
    wh.upload([UploadRequest("t", tmp_path / "a.parquet", mode="append")], run_id="r2")
    assert wh.fetch("SELECT count(*) AS n FROM t", tmp_path / "n.parquet").rows == 1
    assert pq.read_table(tmp_path / "n.parquet").column("n").to_pylist() == [4]
    wh.close()


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM query_table('analytics.orders')",
        "SELECT * FROM main.query_table(['analytics.orders'])",
        "SELECT * FROM query('SELECT * FROM analytics.orders')",
        'SELECT * FROM "QUERY"($$SELECT * FROM analytics.orders$$)',
        "WITH x AS (SELECT * FROM (SELECT * FROM query('SELECT 1'))) SELECT * FROM x",
        "SELECT (SELECT count(*) FROM query_table('analytics.orders')) AS n",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM analytics.orders'))",
        "SELECT * FROM duckdb_table_sample('analytics.orders')",
        "SELECT * FROM pragma_storage_info('analytics.orders')",
        "SELECT * FROM histogram('analytics.orders', id)",
        "PIVOT (FROM query_table('analytics.orders')) ON qty USING sum(id)",
        "PRAGMA storage_info('analytics.orders')",
    ],
)
def test_duckdb_fetch_refuses_tables_named_by_string(duck_env: Env, query: str) -> None:
    duck_env.execute("CREATE TABLE analytics.orders AS SELECT range AS id, (range % 3)::INTEGER AS qty FROM range(10)")
    with pytest.raises(DagsterBentoFetchError, match="purpose-zone checks cannot see which tables") as info:
        duck_env.wh.fetch(query, duck_env.tmp / "x.parquet", notebook=NB, cell=4)
    assert info.value.cell == 4 and "Name the tables in the query itself" in str(info.value)


def test_duckdb_fetch_allows_ordinary_functions_of_the_same_names(duck_env: Env) -> None:
    duck_env.execute("CREATE TABLE analytics.orders AS SELECT range AS id, (range % 3)::INTEGER AS qty FROM range(10)")
    ok = [
        "SELECT histogram(qty) AS h FROM analytics.orders",  # the aggregate, not the table macro
        "SELECT 'query_table(x)' AS s, id AS query FROM analytics.orders",
        "PIVOT analytics.orders ON qty USING sum(id)",
    ]
    for query in ok:
        assert duck_env.wh.fetch(query, duck_env.tmp / "ok.parquet").rows >= 1


def test_duckdb_fetch_streams_types_parquet_cannot_hold(duck_env: Env) -> None:
    out = duck_env.tmp / "types.parquet"
    result = duck_env.wh.fetch(
        "SELECT INTERVAL 3 DAY AS i, [INTERVAL 1 HOUR] AS li, 12345678901234567890::BIGNUM AS bn, "
        "union_value(num := 2)::UNION(num INTEGER, s VARCHAR) AS u, TIMESTAMPTZ '2024-03-10 01:30:00+00' AS ts, "
        "[TIMESTAMPTZ '2024-03-10 01:30:00+00'] AS lts, 42::HUGEINT AS h, 7 AS n",
        out,
    )
    assert [c.type for c in result.columns][:4] == ["INTERVAL", "INTERVAL[]", "BIGNUM", "UNION(num INTEGER, s VARCHAR)"]
    table = pq.read_table(out)
    assert table.to_pylist()[0] | {"ts": None, "lts": None, "h": None} == {
        "i": "3 days", "li": "['01:00:00']", "bn": "12345678901234567890", "u": "2", "ts": None, "lts": None,
        "h": None, "n": 7,
    }  # fmt: skip
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("lts").type == pa.list_(pa.timestamp("us", tz="UTC"))
    assert table.column("ts").to_pylist()[0] == dt.datetime(2024, 3, 10, 1, 30, tzinfo=dt.timezone.utc)
    assert int(table.column("h").to_pylist()[0]) == 42


def test_duckdb_fetch_streams_large_results_in_batches(duck_env: Env) -> None:
    duck_env.execute(
        "CREATE TABLE analytics.big AS SELECT range AS id, 'row ' || range AS s, range * 0.5 AS x FROM range(400000)"
    )
    out = duck_env.tmp / "big.parquet"
    result = duck_env.wh.fetch(f"SELECT * FROM {duck_env.t('big')} ORDER BY id", out)
    meta = pq.ParquetFile(out).metadata
    assert result.rows == meta.num_rows == 400000
    assert meta.num_row_groups >= 3  # written batch by batch, never collected in memory first
    assert pq.read_table(out, columns=["id"]).column(0).to_pylist()[-3:] == [399997, 399998, 399999]
    csv_out = duck_env.tmp / "big.csv"
    assert duck_env.wh.fetch(f"SELECT * FROM {duck_env.t('big')}", csv_out, fmt="csv").rows == 400000


@pytest.fixture
def pg_role(pg_env: Env) -> Iterator[str]:
    """A NOLOGIN role, dropped (with its privileges) afterwards."""
    role = f"bento_test_{uuid.uuid4().hex[:10]}"
    _pg_execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        yield role
    finally:
        _pg_execute(f'DROP OWNED BY "{role}"')
        _pg_execute(f'DROP ROLE "{role}"')


def test_postgres_fetch_role_is_taken_out_of_the_connection_url() -> None:
    wh = warehouse_from_url("postgresql://alice:pw@db.example.com/sales?sslmode=require&bento_fetch_role=reader")
    assert isinstance(wh, PostgresWarehouse)
    assert wh.fetch_role == "reader"
    assert wh._uri == "postgresql://alice:pw@db.example.com/sales?sslmode=require"
    assert "bento_fetch_role=reader" in wh.url and "pw" not in wh.url
    assert PostgresWarehouse("postgresql://alice@db/sales").fetch_role is None


@pytest.mark.postgres
def test_postgres_fetch_runs_as_the_fetch_role(pg_env: Env, pg_role: str) -> None:
    readable, secret = pg_env.t("readable"), pg_env.t("secret")
    pg_env.execute(f"CREATE TABLE {readable} AS SELECT 1::bigint AS id")
    pg_env.execute(f"CREATE TABLE {secret} AS SELECT 'top'::text AS s")
    pg_env.execute(f'GRANT USAGE ON SCHEMA "{pg_env.schema}" TO "{pg_role}"')
    pg_env.execute(f'GRANT SELECT ON {readable} TO "{pg_role}"')
    wh = warehouse_from_url(f"{PG_URL}?bento_fetch_role={pg_role}")
    assert wh.fetch(f"SELECT * FROM {readable}", pg_env.tmp / "ok.parquet").rows == 1
    assert wh.fetch("SELECT current_user::text AS u", pg_env.tmp / "u.parquet").rows == 1
    assert pq.read_table(pg_env.tmp / "u.parquet").column("u").to_pylist() == [pg_role]
    out = pg_env.tmp / "secret.parquet"
    with pytest.raises(DagsterBentoFetchError, match="permission denied for table secret"):
        wh.fetch(f"SELECT * FROM {secret}", out, notebook=NB, cell=2)
    assert not out.exists()
    # SET ROLE could be undone from SQL (set_config('role', ...)) and then dynamic SQL would run as the login role
    escape = (
        f"SELECT set_config('role', 'none', true) AS r, query_to_xml('SELECT * FROM {secret}', true, false, '') AS x"
    )
    with pytest.raises(DagsterBentoFetchError, match="set_config"):
        wh.fetch(escape, out)
    assert not out.exists()
    # the role is LOCAL to the fetch transaction: uploads still run as the URL's role
    wh.upload([UploadRequest(pg_env.t("landed"), pg_env.parquet("l", {"id": [1]}))], run_id="r1")
    assert pg_env.count(pg_env.t("landed")) == 1
    # without a fetch role, the same warehouse reads everything the login role can
    assert PostgresWarehouse(PG_URL).fetch(f"SELECT * FROM {secret}", out).rows == 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("SELECT query_to_xml('SELECT 1', true, false, '') AS x", r"query_to_xml\(\), which reads tables named"),
        ("SELECT table_to_xml('pg_class', true, false, '') AS x", r"table_to_xml\(\)"),
        ("SELECT * FROM ts_stat('SELECT to_tsvector(''a'')')", r"ts_stat\(\)"),
        ("SELECT pg_catalog.set_config('search_path', 'x', true) AS s", "set_config"),
        ('SELECT U&"\\0073et_config"(\'role\', \'none\', true) AS s', r'U&"\.\.\."'),
        ("DO $$ BEGIN PERFORM 1; END $$", "a DO statement is not allowed"),
        ("COPY (SELECT 1) TO STDOUT", "a COPY statement is not allowed"),
        ("SET ROLE NONE", "a SET statement is not allowed"),
        ("EXPLAIN ANALYZE SELECT 1", "a EXPLAIN statement is not allowed"),
    ],
)
def test_postgres_fetch_refuses_dynamic_sql_and_non_queries(pg_env: Env, query: str, match: str) -> None:
    with pytest.raises(DagsterBentoFetchError, match=match):
        pg_env.wh.fetch(query, pg_env.tmp / "x.parquet", notebook=NB, cell=1)


@pytest.mark.postgres
def test_postgres_fetch_accepts_queries_of_every_shape(pg_env: Env) -> None:
    t = pg_env.t("shapes")
    pg_env.execute(f"CREATE TABLE {t} AS SELECT 1::bigint AS id")
    for query in (
        f"/* leading comment */ SELECT * FROM {t}",
        f"WITH x AS (SELECT * FROM {t}) SELECT * FROM x",
        "VALUES (1), (2)",
        f"TABLE {t}",
        f"(SELECT id FROM {t}) UNION ALL (SELECT 2)",
    ):
        assert pg_env.wh.fetch(query, pg_env.tmp / "s.parquet").rows >= 1


# --------------------------------------------------------------------------------------------------
# Overwrite keeps the table when its columns stay the same


def test_overwrite_with_same_columns_keeps_dependent_view(env: Env) -> None:
    t, v = env.t("kept"), env.t("kept_view")
    first = {
        "id": [1, 2, 3],
        "name": ["a", "b", "c"],
        "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),  # timestamp[ns]: staged, then compared
    }
    env.wh.upload([UploadRequest(t, env.parquet("k1", pd.DataFrame(first).pipe(pa.Table.from_pandas)))], run_id="r1")
    env.execute(f"CREATE VIEW {v} AS SELECT id, name FROM {t} WHERE id > 1")
    assert env.count(v) == 2
    # same columns (here in another order): rows replaced in place
    second = pa.table({"name": ["x", "y", "z", "w"], "id": [10, 20, 30, 40]})
    second = second.append_column("ts", pa.array([dt.datetime(2024, 2, 1)] * 4, pa.timestamp("ns")))
    [result] = env.wh.upload([UploadRequest(t, env.parquet("k2", second))], run_id="r2")
    assert (result.rows_written, result.rows_in_table) == (4, 4)
    assert sorted(env.execute(f"SELECT id, name FROM {v}")) == [(10, "x"), (20, "y"), (30, "z"), (40, "w")]
    # exactly the copy types (bigint, text): straight into the emptied table
    third = env.parquet("k3", pa.table({"id": [5], "name": ["q"], "ts": pa.array([dt.datetime(2024, 3, 1)])}))
    env.wh.upload([UploadRequest(t, third)], run_id="r3")
    assert env.execute(f"SELECT id, name FROM {v}") == [(5, "q")]


@pytest.mark.postgres
def test_postgres_overwrite_keeps_grants_indexes_and_comments(pg_env: Env, pg_role: str) -> None:
    t = pg_env.t("granted")
    env = pg_env
    env.wh.upload([UploadRequest(t, env.parquet("g1", {"id": [1, 2], "amount": [1.5, 2.5]}))], run_id="r1")
    env.execute(f'GRANT SELECT ON {t} TO "{pg_role}"')
    env.execute(f"CREATE INDEX granted_id_idx ON {t} (id)")
    env.execute(f"COMMENT ON TABLE {t} IS 'curated'")
    oid = env.scalar(f"SELECT '{t}'::regclass::oid")
    [result] = env.wh.upload(
        [UploadRequest(t, env.parquet("g2", {"id": [7, 8, 9], "amount": [0.5, 1.0, 1.5]}))], run_id="r2"
    )
    assert result.rows_in_table == 3 and sorted(r[0] for r in env.execute(f"SELECT id FROM {t}")) == [7, 8, 9]
    assert env.scalar(f"SELECT '{t}'::regclass::oid") == oid  # the same table, not a new one
    assert env.scalar(f"SELECT has_table_privilege('{pg_role}', '{t}', 'SELECT')") is True
    indexes = f"SELECT count(*) FROM pg_indexes WHERE schemaname = '{env.schema}' AND tablename = 'granted'"
    assert env.scalar(indexes) == 1
    assert env.scalar(f"SELECT obj_description('{t}'::regclass, 'pg_class')") == "curated"


@pytest.mark.postgres
def test_postgres_overwrite_changing_columns_under_a_view_is_refused(pg_env: Env) -> None:
    env = pg_env
    t, v, other = env.t("base"), env.t("base_view"), env.t("other")
    env.wh.upload([UploadRequest(t, env.parquet("b1", {"id": [1, 2], "name": ["a", "b"]}))], run_id="r1")
    env.execute(f"CREATE VIEW {v} AS SELECT id FROM {t}")
    requests = [
        UploadRequest(other, env.parquet("o", {"x": [1]})),
        UploadRequest(t, env.parquet("b2", {"id": ["one"], "extra": [1.0]}), notebook=NB, cell=6),
    ]
    with pytest.raises(DagsterBentoUploadError) as info:
        env.wh.upload(requests, run_id="r2")
    message = str(info.value)
    assert f"these views depend on it: {v}" in message
    assert "name removed" in message and "extra added (double precision)" in message and "id bigint -> text" in message
    assert "Nothing was written" in message and f"write cell 6 of {NB}" in message
    assert info.value.cell == 6
    assert env.wh.table_columns(t) == (ColumnInfo("id", "bigint"), ColumnInfo("name", "text"))
    assert sorted(env.execute(f"SELECT id, name FROM {t}")) == [(1, "a"), (2, "b")]
    assert env.count(v) == 2 and not env.exists(other)
    # without the view the table is replaced as before
    env.execute(f"DROP VIEW {v}")
    [result] = env.wh.upload([UploadRequest(t, env.parquet("b3", {"id": ["one"], "extra": [1.0]}))], run_id="r3")
    assert [c.name for c in result.columns] == ["id", "extra"]


# --------------------------------------------------------------------------------------------------
# last_modified is one query


class _CountingProxy:
    """Wraps a DB-API connection or cursor (DuckDB or ADBC) and records every statement it executes."""

    def __init__(self, inner: Any, statements: list[str]):
        self._inner, self._statements = inner, statements

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        self._statements.append(sql)
        result = self._inner.execute(sql, *args, **kwargs)
        return self if result is self._inner else result

    def cursor(self, *args: Any, **kwargs: Any) -> "_CountingProxy":
        return _CountingProxy(self._inner.cursor(*args, **kwargs), self._statements)

    def __enter__(self) -> "_CountingProxy":
        self._inner.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._inner.__exit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_last_modified_runs_one_query_for_all_tables(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    landed = [env.t(f"landed_{i}") for i in range(3)]
    for i, table in enumerate(landed):
        env.wh.upload([UploadRequest(table, env.parquet(f"lm{i}", {"id": [i]}))], run_id=f"r{i}")
    env.wh.upload([UploadRequest(landed[0], env.parquet("lm_again", {"id": [9]}))], run_id="again")
    never = [env.t(f"never_{i}") for i in range(30)]
    statements: list[str] = []
    original = type(env.wh)._connect

    @contextlib.contextmanager
    def counting(self: Warehouse, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with original(self, *args, **kwargs) as inner:  # type: ignore[attr-defined]
            yield _CountingProxy(inner, statements)

    monkeypatch.setattr(type(env.wh), "_connect", counting)
    stamps = env.wh.last_modified([*landed, *never, landed[1].upper()])
    landings = [s for s in statements if "landings" in s and "landed_at" in s]
    assert len(landings) == 1, statements
    assert len(statements) <= 3, statements  # the meta table check plus the one query
    assert all(stamps[t] is None for t in never)
    assert all(stamps[t] is not None for t in landed)
    first_two = env.execute(
        f"SELECT max(landed_at) FROM bento_meta.landings WHERE table_name = '{landed[0]}' GROUP BY table_name"
    )
    assert dt.datetime.fromisoformat(stamps[landed[0]] or "").replace(tzinfo=None) == first_two[0][0].replace(
        tzinfo=None
    )


# --------------------------------------------------------------------------------------------------
# Outputs must be regular files (defence in depth: the runner copies them with O_NOFOLLOW first)


def _upload_with_deadline(wh: Warehouse, requests: list[UploadRequest], fifo: Path | None) -> BaseException | None:
    """Run ``upload`` in a thread; if it is still blocked (reading a FIFO) after 5 s, unblock it and fail."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            wh.upload(requests, run_id="r1")
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    hung = thread.is_alive()
    if hung and fifo is not None:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the blocked reader
        thread.join(5)
    assert not hung, "upload blocked on a FIFO instead of refusing it"
    return box.get("error")


def test_upload_refuses_symlinked_data_file(duck_env: Env) -> None:
    real = duck_env.parquet("real", {"id": [1]})
    link = duck_env.tmp / "out.parquet"
    link.symlink_to(real)
    error = _upload_with_deadline(duck_env.wh, [UploadRequest(duck_env.t("x"), link, notebook=NB, cell=3)], None)
    assert isinstance(error, DagsterBentoOutputError)
    assert f"write cell 3 of {NB} left a symlink at {link}" in str(error) and "not a regular file" in str(error)
    assert error.cell == 3 and not duck_env.exists(duck_env.t("x"))


def test_upload_refuses_fifo_data_file(duck_env: Env) -> None:
    fifo = duck_env.tmp / "out.parquet"
    os.mkfifo(fifo)
    error = _upload_with_deadline(duck_env.wh, [UploadRequest(duck_env.t("x"), fifo, notebook=NB, cell=3)], fifo)
    assert isinstance(error, DagsterBentoOutputError) and "left a FIFO (named pipe)" in str(error)
    assert not duck_env.exists(duck_env.t("x"))


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dangling symlink"])
def test_upload_refuses_non_regular_csv_sidecar(duck_env: Env, kind: str) -> None:
    data = duck_env.tmp / "out.csv"
    data.write_text("id\n1\n")
    sidecar = csv_schema_path(data)
    fifo = None
    if kind == "fifo":
        os.mkfifo(sidecar)
        fifo = sidecar
    else:
        real = duck_env.tmp / "elsewhere.json"
        if kind == "symlink":
            real.write_text('{"format": "dagster-bento.csv-schema/1", "columns": {"id": "int64"}}')
        sidecar.symlink_to(real)
    request = UploadRequest(duck_env.t("x"), data, fmt="csv", notebook=NB, cell=8)
    error = _upload_with_deadline(duck_env.wh, [request], fifo)
    assert isinstance(error, DagsterBentoOutputError), error
    assert f"at {sidecar}" in str(error) and "not a regular file" in str(error)
    assert not duck_env.exists(duck_env.t("x"))


def test_label_check_runs_inside_the_upload_transaction(env: Env) -> None:
    """The purpose-zone write check gets the labels stored when the upload holds its locks, chooses the
    labels stored with the data, and can refuse the whole upload (nothing is written)."""
    from dagster_bento.errors import DagsterBentoPolicyError

    labelled, fresh, refused = env.t("labelled"), env.t("fresh"), env.t("refused")
    path = env.tmp / "out.parquet"
    pd.DataFrame({"id": [1, 2]}).to_parquet(path, index=False)
    env.wh.upload([UploadRequest(labelled, path, label=frozenset({"A"}))], run_id="r0")
    seen: dict[str, Any] = {}

    def check(stored: Any, existing: Any) -> dict[str, frozenset[str]]:
        seen.update(stored=dict(stored), existing=set(existing))
        return {labelled: frozenset({"A", "B"}), fresh: frozenset({"B"})}

    env.wh.upload([UploadRequest(labelled, path), UploadRequest(fresh, path)], run_id="r1", check_labels=check)
    assert seen == {"stored": {labelled: frozenset({"A"})}, "existing": {labelled}}
    assert env.wh.read_labels([labelled, fresh]) == {labelled: frozenset({"A", "B"}), fresh: frozenset({"B"})}

    def refuse(stored: Any, existing: Any) -> dict[str, frozenset[str]]:
        raise DagsterBentoPolicyError("refused by the zone check")

    with pytest.raises(DagsterBentoPolicyError, match="refused"):
        env.wh.upload([UploadRequest(fresh, path, mode="append"), UploadRequest(refused, path)], run_id="r2",
                      check_labels=refuse)
    assert not env.wh.table_exists(refused) and env.count(fresh) == 2  # rolled back as a whole


def test_arrow_file_with_corrupt_offsets_is_refused_before_loading(duck_env: Env) -> None:
    """A notebook controls its output files; Arrow's IPC reader does not check string offsets, so a crafted
    file could make the orchestrator read outside its buffers. The upload validates it fully first."""
    table = pa.table({"s": pa.array(["ab", "cd", "ef"])})
    path = duck_env.tmp / "crafted.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = path.read_bytes()
    offsets = b"".join(i.to_bytes(4, "little") for i in (0, 2, 4, 6))
    assert data.count(offsets) == 1
    path.write_bytes(data.replace(offsets, b"".join(i.to_bytes(4, "little") for i in (0, 2, 4, 1 << 30))))
    target = duck_env.t("crafted")
    with pytest.raises(DagsterBentoOutputError, match="not a valid Arrow IPC file"):
        duck_env.wh.upload([UploadRequest(target, path, fmt="arrow", notebook=NB, cell=2)], run_id="r1")
    assert not duck_env.exists(target)


# --------------------------------------------------------------------------------------------------
# Atomicity under faults and load: a failure after the first table, an in-memory warehouse whose connection
# outlives the failed upload, kill -9 of an uploading process, the loading connection terminated mid-COPY,
# four concurrent writers of one table. Each upload is all or nothing.


@pytest.fixture
def mem_env(tmp_path: Path) -> Iterator[Env]:
    """The in-memory DuckDB warehouse: one connection for everything, so a failed upload that is not rolled
    back stays visible to every later read (a file warehouse closes its connection, which rolls back)."""
    wh = DuckDBWarehouse(":memory:")

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with wh._connect(write=False) as con:  # noqa: SLF001 - the same connection the uploads use
            rel = con.sql(sql)
            return rel.fetchall() if rel is not None else []

    execute("CREATE SCHEMA analytics")
    yield Env(wh, "analytics", execute, tmp_path)
    wh.close()


@pytest.fixture(params=["duckdb", "duckdb-memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def atomic_env(request: pytest.FixtureRequest) -> Env:
    return request.getfixturevalue({"duckdb": "duck_env", "duckdb-memory": "mem_env"}.get(request.param, "pg_env"))


def test_injected_failure_after_first_table_is_rolled_back(atomic_env: Env) -> None:
    """Fails when the rollback is a no-op: on the in-memory warehouse the open transaction would keep the first
    table's new rows; and the next upload must start a fresh transaction on the same connection."""
    env = atomic_env
    a, b = env.t("a"), env.t("b")
    env.wh.upload([UploadRequest(a, env.parquet("old", {"id": [1, 2]}))], run_id="r0")
    requests = [UploadRequest(a, env.parquet("new_a", {"id": [7, 8, 9]}), notebook=NB, cell=2),
                UploadRequest(b, env.parquet("new_b", {"id": [1]}), notebook=NB, cell=3)]
    for fail_after in (1, 2):  # after the first table; after both, right before the commit
        with pytest.raises(DagsterBentoUploadError, match="Nothing was written"):
            env.wh.upload(requests, run_id="r1", _fail_after=fail_after)  # type: ignore[call-arg]
        assert sorted(r[0] for r in env.execute(f"SELECT id FROM {a}")) == [1, 2]
        assert not env.exists(b)
        assert env.scalar(f"SELECT count(*) FROM bento_meta.landings WHERE table_name = '{b}'") == 0
    [result, _] = env.wh.upload(requests, run_id="r2")  # the warehouse is usable afterwards
    assert result.rows_in_table == 3 and env.count(b) == 1


def _paused_batches(monkeypatch: pytest.MonkeyPatch, *, table: str) -> tuple[threading.Event, threading.Event]:
    """Make the load of ``table`` stop after its first row has been sent (mid-COPY) until ``release`` is set;
    ``paused`` is set when it stops."""
    from dagster_bento import warehouse

    paused, release = threading.Event(), threading.Event()
    real = warehouse._PreparedUpload.batches  # noqa: SLF001

    def batches(self: Any) -> pa.RecordBatchReader:
        reader = real(self)
        if self.table != table:
            return reader

        def gen() -> Iterator[pa.RecordBatch]:
            first = True
            for batch in reader:
                if first and batch.num_rows > 1:
                    yield batch.slice(0, 1)
                    paused.set()
                    release.wait(30)
                    batch, first = batch.slice(1), False
                yield batch

        return pa.RecordBatchReader.from_batches(reader.schema, gen())

    monkeypatch.setattr(warehouse._PreparedUpload, "batches", batches)  # noqa: SLF001
    return paused, release


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.mark.postgres
def test_postgres_overwrite_does_not_block_readers(pg_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """While an overwrite is loading, another session still reads the old rows, without waiting (TRUNCATE would
    hold an ACCESS EXCLUSIVE lock until commit and block this SELECT)."""
    t = pg_env.t("busy")
    pg_env.wh.upload([UploadRequest(t, pg_env.parquet("old", {"id": [1, 2, 3]}))], run_id="r0")
    paused, release = _paused_batches(monkeypatch, table=t)
    thread, box = _in_thread(lambda: pg_env.wh.upload(
        [UploadRequest(t, pg_env.parquet("new", {"id": list(range(10))}))], run_id="r1"))
    try:
        assert paused.wait(20), "the overwrite did not start loading"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '3s'")  # blocked behind a lock: fails instead of hanging
            started = time.monotonic()
            assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
            assert time.monotonic() - started < 1.0
    finally:
        release.set()
        thread.join(30)
    assert "error" not in box, box.get("error")
    assert pg_env.count(t) == 10


@pytest.mark.postgres
def test_postgres_overwrite_changing_columns_keeps_readers_on_the_old_table(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overwrite that replaces the table loads the new one first; readers see the old table meanwhile."""
    t = pg_env.t("reshaped")
    pg_env.wh.upload([UploadRequest(t, pg_env.parquet("old", {"id": [1, 2, 3]}))], run_id="r0")
    paused, release = _paused_batches(monkeypatch, table=t)
    thread, box = _in_thread(lambda: pg_env.wh.upload(
        [UploadRequest(t, pg_env.parquet("new", {"id": [1, 2], "name": ["a", "b"]}))], run_id="r1"))
    try:
        assert paused.wait(20), "the overwrite did not start loading"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '3s'")
            assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (3,)
    finally:
        release.set()
        thread.join(30)
    assert "error" not in box, box.get("error")
    assert pg_env.execute(f"SELECT id, name FROM {t} ORDER BY id") == [(1, "a"), (2, "b")]
    assert pg_env.scalar(f"SELECT count(*) FROM pg_tables WHERE schemaname = '{pg_env.schema}'") == 1


@pytest.mark.postgres
def test_postgres_loading_connection_terminated_mid_copy_writes_nothing(
    pg_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ends the loading connection in the middle of a COPY (pg_terminate_backend from another
    session, as a stopped server or a failover would): the upload fails cleanly and nothing is written."""
    a, b = pg_env.t("a"), pg_env.t("b")
    pg_env.wh.upload([UploadRequest(a, pg_env.parquet("old", {"id": [1, 2]}))], run_id="r0")
    paused, release = _paused_batches(monkeypatch, table=b)
    thread, box = _in_thread(lambda: pg_env.wh.upload(
        [UploadRequest(a, pg_env.parquet("new_a", {"id": [5, 6, 7]}), notebook=NB, cell=2),
         UploadRequest(b, pg_env.parquet("new_b", {"id": [1, 2, 3]}), notebook=NB, cell=3)], run_id="r1"))
    try:
        assert paused.wait(20), "the upload did not reach the second table"
        [(pid,)] = pg_env.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid::bigint = "
            f"(hashtext('bento:{b}')::bigint & 4294967295)")
        assert pg_env.execute(f"SELECT pg_terminate_backend({pid})") == [(True,)]
    finally:
        release.set()
        thread.join(30)
    assert isinstance(box.get("error"), DagsterBentoUploadError), box
    assert "Nothing was written" in str(box["error"])
    assert sorted(r[0] for r in pg_env.execute(f"SELECT id FROM {a}")) == [1, 2]
    assert not pg_env.exists(b)
    pg_env.wh.upload([UploadRequest(b, pg_env.parquet("again", {"id": [1]}))], run_id="r2")  # locks released
    assert pg_env.count(b) == 1


# Writers are forked (everything is imported already: a spawned child would spend ~3 s importing Dagster).
_FORK = multiprocessing.get_context("fork")


def _upload_then_hang(url: str, requests: list[UploadRequest], marker: Path) -> None:
    """Upload, but stop inside the transaction once the first table is loaded (until killed)."""
    from dagster_bento import warehouse

    def hang(fail_after: int | None, loaded: int) -> None:
        if loaded == 1:
            marker.write_text("loading")
            time.sleep(120)

    warehouse._maybe_inject = hang  # noqa: SLF001 - this forked child only
    warehouse_from_url(url).upload(requests, run_id="killed")


def _overwrite_repeatedly(url: str, table: str, path: Path, times: int, go: Any) -> None:
    wh = warehouse_from_url(url)
    go.wait(30)
    for i in range(times):
        wh.upload([UploadRequest(table, path)], run_id=f"o{i}")


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_kill_9_during_upload_writes_nothing(kind: str, request: pytest.FixtureRequest) -> None:
    env: Env = request.getfixturevalue("duck_env" if kind == "duckdb" else "pg_env")
    url = f"duckdb:///{env.wh.path}" if isinstance(env.wh, DuckDBWarehouse) else PG_URL
    a, b = env.t("a"), env.t("b")
    env.wh.upload([UploadRequest(a, env.parquet("old", {"id": [1, 2]}))], run_id="r0")
    marker = env.tmp / "marker"
    requests = [UploadRequest(a, env.parquet("new_a", {"id": [5, 6, 7]})),
                UploadRequest(b, env.parquet("new_b", {"id": [1]}))]
    child = _FORK.Process(target=_upload_then_hang, args=(url, requests, marker))
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.is_alive() and time.monotonic() < deadline, "the child never reached the upload"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    finally:
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert sorted(r[0] for r in env.execute(f"SELECT id FROM {a}")) == [1, 2]
    assert not env.exists(b)
    # the dead process's locks (DuckDB's file lock, PostgreSQL's advisory lock) are gone: a new upload proceeds
    [result, _] = env.wh.upload(requests, run_id="r1")
    assert result.rows_in_table == 3


@pytest.mark.parametrize("kind", ["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_four_concurrent_overwriters_leave_one_whole_version(kind: str, request: pytest.FixtureRequest) -> None:
    """Four processes overwrite one table over and over while this one reads it: every read sees exactly one
    writer's whole output (its own row count, one writer id), never a mix or a partial load."""
    env: Env = request.getfixturevalue("duck_env" if kind == "duckdb" else "pg_env")
    url = f"duckdb:///{env.wh.path}" if isinstance(env.wh, DuckDBWarehouse) else PG_URL
    t = env.t("contended")
    sizes = {k: 500 * (k + 1) for k in range(4)}
    paths = [env.parquet(f"o{k}", {"worker": [k] * n, "i": list(range(n))}) for k, n in sizes.items()]
    seen: list[tuple[int, int, int]] = []
    go = _FORK.Event()
    children = [_FORK.Process(target=_overwrite_repeatedly, args=(url, t, p, 2, go)) for p in paths]
    for c in children:
        c.start()
    try:
        go.set()
        while any(c.is_alive() for c in children):
            if env.exists(t):
                out = env.tmp / "seen.parquet"
                env.wh.fetch(f"SELECT min(worker) AS lo, max(worker) AS hi, count(*) AS n FROM {t}", out)
                seen.append(tuple(pq.read_table(out).to_pylist()[0].values()))
            time.sleep(0.02)
    finally:
        for c in children:
            if c.is_alive():
                c.kill()
            c.join(30)
    assert [c.exitcode for c in children] == [0] * 4  # a writer's error is printed above
    assert seen, "no read ran while the writers were busy"
    for lo, hi, n in seen:
        assert lo == hi and n == sizes[lo], f"a read saw a mixed or partial table: {(lo, hi, n)}"
    [(lo, hi, n)] = env.execute(f"SELECT min(worker), max(worker), count(*) FROM {t}")
    assert lo == hi and n == sizes[lo]
    assert env.scalar(f"SELECT count(*) FROM bento_meta.landings WHERE table_name = '{t}'") == 8


# --------------------------------------------------------------------------------------------------
# Nothing lost in a write cell: the dataframe's index


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "csv"])
def test_named_index_lands_as_columns_in_every_format(env: Env, fmt: str) -> None:
    """The write cells' helper turns named index levels into columns; both warehouses load them as such."""
    from tests.test_rewrite import weekday_counts, write_with_setup_cell

    write_with_setup_cell(weekday_counts(), env.tmp, fmt)
    path = env.tmp / "outputs" / f"analytics.t.{fmt}"
    t = env.t(f"per_weekday_{fmt}")
    [result] = env.wh.upload([UploadRequest(t, path, fmt=fmt)], run_id="r1")  # type: ignore[arg-type]
    assert [c.name for c in result.columns] == ["weekday", "events", "total"]
    assert env.execute(f"SELECT weekday, events FROM {t} ORDER BY weekday") == [("Mon", 2), ("Sun", 1), ("Tue", 1)]


def test_unnamed_non_integer_index_in_a_file_is_refused(env: Env) -> None:
    """A file written some other way (pandas ``to_parquet`` keeps an unnamed index as ``__index_level_0__``):
    integer row numbers are dropped (test_pandas_index_column_is_dropped), anything else would be lost."""
    path = env.tmp / "labels.parquet"
    pd.DataFrame({"n": [1, 2]}, index=["Mon", "Tue"]).to_parquet(path)
    with pytest.raises(DagsterBentoOutputError, match=r"unnamed index \(__index_level_0__: \w*string\).*rename_axis"):
        env.wh.upload([UploadRequest(env.t("labels"), path, notebook=NB, cell=5)], run_id="r1")
    assert not env.exists(env.t("labels"))


# --------------------------------------------------------------------------------------------------
# The run's time limit covers the fetch: a slow query is cancelled and its locks released


def _slow_query(env: Env) -> str:
    t = env.t("big")
    env.execute(f"CREATE TABLE {t} AS SELECT i FROM (SELECT generate_series AS i FROM generate_series(1, 3000)) s"
                if isinstance(env.wh, PostgresWarehouse) else f"CREATE TABLE {t} AS SELECT range AS i FROM range(3000)")
    # 2.7e10 hashes: hours, unless stopped
    return f"SELECT count(*) AS n FROM {t} a, {t} b, {t} c WHERE md5(a.i::VARCHAR || b.i::VARCHAR || c.i::VARCHAR) = 'x'"


def test_fetch_past_its_deadline_is_cancelled(env: Env) -> None:
    sql = _slow_query(env)
    started = time.monotonic()
    thread, box = _in_thread(lambda: env.wh.fetch(sql, env.tmp / "slow.parquet", notebook=NB, cell=3,
                                                  deadline=time.monotonic() + 1.0))
    thread.join(8)
    hung = thread.is_alive()
    if hung and isinstance(env.wh, PostgresWarehouse):  # clean up after a broken mechanism
        env.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%md5(a.i%' "
                    "AND pid <> pg_backend_pid()")
    assert not hung and time.monotonic() - started < 8, "the query was not stopped at its deadline"
    error = box.get("error")
    assert isinstance(error, DagsterBentoFetchError), box
    assert "the run's time limit ran out while its query was running" in str(error)
    assert f"SQL cell 3 of {NB}" in str(error) and "timeout_seconds" in str(error)
    assert not (env.tmp / "slow.parquet").exists()
    if isinstance(env.wh, PostgresWarehouse):  # the server stopped the query too
        assert env.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%md5(a.i%' "
                           "AND pid <> pg_backend_pid() AND state = 'active'") == [(0,)]


def test_stopped_fetch_releases_its_locks_for_uploads(duck_env: Env) -> None:
    """A DuckDB fetch holds the file's shared lock: an upload of another run waits behind it. Cancelling the
    fetch (the run failed or timed out) lets the upload through at once, not when the query would end."""
    sql = _slow_query(duck_env)
    cancel = threading.Event()
    fetch, fetch_box = _in_thread(lambda: duck_env.wh.fetch(sql, duck_env.tmp / "slow.parquet", cancel=cancel))
    time.sleep(0.5)  # the query is running and holds the shared lock
    other = DuckDBWarehouse(duck_env.wh.path, lock_timeout=30)  # type: ignore[arg-type]
    upload, upload_box = _in_thread(lambda: other.upload(
        [UploadRequest(duck_env.t("out"), duck_env.parquet("o", {"id": [1]}))], run_id="other"))
    time.sleep(0.5)
    assert "result" not in upload_box, "the upload did not wait for the fetch's lock"
    stopped = time.monotonic()
    cancel.set()
    upload.join(5)
    assert "result" in upload_box, f"the upload still waits for the stopped fetch's lock: {upload_box}"
    assert time.monotonic() - stopped < 3
    fetch.join(5)
    assert isinstance(fetch_box.get("error"), DagsterBentoFetchError)
    assert "the run was stopped" in str(fetch_box["error"])
