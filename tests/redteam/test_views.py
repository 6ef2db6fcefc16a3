"""Red team: a view is judged by what it reads, at run time, on the real warehouses.

The policy labels a view ANALYTICS (an operator's mistake, or an attacker's view over an HR table); the static
check sees only the view's name and passes. Before any row is fetched, the fetch asks the warehouse's planner
which base tables the query scans (views expanded) and zone-checks them for the notebook's zone like the
tables the analysis listed: the run is refused, naming the view and the base table, and writes nothing.
Each refusal test fails when that wiring (``check_tables`` in runner._fetch / the warehouses' fetch) is removed.
"""

import uuid

import dagster as dg
import psycopg
import pytest

from dagster_bento import warehouse as wh
from dagster_bento.errors import DagsterBentoFetchError, DagsterBentoPolicyError
from tests.nbfactory import add_notebook, sql_cell, write_cell, write_policy
from tests.test_execution import PG_URL, clean_run_dirs, query, resource_for, run, seed_duckdb  # noqa: F401

pytestmark = pytest.mark.kernel

ZONES = {"ANALYTICS": {"permits": ["ANALYTICS"]}, "HR": {"permits": ["HR"]}}


@pytest.fixture
def rows_read(monkeypatch):
    """Every call that writes fetched rows to a file (the only consumer of a fetch's rows)."""
    calls = []
    real = wh._write_result

    def spy(reader, tmp, fmt):
        calls.append(str(tmp))
        return real(reader, tmp, fmt)

    monkeypatch.setattr(wh, "_write_result", spy)
    return calls


def refused(project, url):
    with pytest.raises(DagsterBentoPolicyError) as info:
        run(project, url)
    return str(info.value)


# ------------------------------------------------------------------------------------------------
# DuckDB

DUCK_SEED = """
CREATE SCHEMA hr; CREATE TABLE hr.salaries AS SELECT 'alice' AS employee, 100 AS salary;
CREATE SCHEMA pub; CREATE TABLE pub.orders AS SELECT 1 AS id, 'x' AS item;
CREATE VIEW pub.v AS SELECT * FROM hr.salaries;
CREATE VIEW pub.ok AS SELECT * FROM pub.orders;
CREATE VIEW pub.cnt AS SELECT count(*) AS n FROM hr.salaries;
"""


def duck_project(tmp_path, sql):
    url = seed_duckdb(tmp_path / "wh.duckdb", DUCK_SEED)
    write_policy(tmp_path, {"hr.salaries": ["HR"], "pub.v": ["ANALYTICS"], "pub.orders": ["ANALYTICS"],
                            "pub.ok": ["ANALYTICS"], "pub.cnt": ["ANALYTICS"], "out.*": ["ANALYTICS"]},
                 zones=ZONES)
    add_notebook(tmp_path, "nb", [sql_cell("df", sql), write_cell("df", "out.t")])
    return tmp_path, url


def test_duckdb_view_over_an_hr_table_is_refused_before_any_row(tmp_path, rows_read, clean_run_dirs):
    project, url = duck_project(tmp_path, "SELECT * FROM pub.v")
    text = refused(project, url)
    assert "PZ001" in text and "hr.salaries" in text and "pub.v" in text and "HR" in text, text
    assert rows_read == []  # refused before the query ran
    assert query(url, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'out'") == [(0,)]
    assert query(url, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'bento_meta' "
                      "AND table_name = 'table_labels'") in ([(0,)], [(1,)])
    if query(url, "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'bento_meta'") != [(0,)]:
        assert query(url, "SELECT count(*) FROM bento_meta.table_labels WHERE table_name = 'out.t'") == [(0,)]


def test_duckdb_view_answered_from_statistics_is_still_judged(tmp_path, rows_read, clean_run_dirs):
    """`count(*)` of a table plans to no scan once optimised (DuckDB answers from statistics): the check
    reads the unoptimised plan, so the HR table behind the view is still seen (independent review)."""
    project, url = duck_project(tmp_path, "SELECT * FROM pub.cnt")
    text = refused(project, url)
    assert "PZ001" in text and "hr.salaries" in text, text
    assert rows_read == []


def test_duckdb_view_over_an_analytics_table_passes(tmp_path, rows_read, clean_run_dirs):
    project, url = duck_project(tmp_path, "SELECT * FROM pub.ok")
    assert run(project, url).success
    assert query(url, "SELECT * FROM out.t") == [(1, "x")]
    assert len(rows_read) == 1


# ------------------------------------------------------------------------------------------------
# PostgreSQL (127.0.0.1:5432, database test): unique schemas per test, dropped afterwards


@pytest.fixture
def pg_schemas():
    tag = uuid.uuid4().hex[:8]
    hr, pub, out = f"hr_{tag}", f"pub_{tag}", f"out_{tag}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"""
            CREATE SCHEMA {hr}; CREATE TABLE {hr}.salaries AS SELECT 'alice'::text AS employee, 100 AS salary;
            CREATE SCHEMA {pub}; CREATE TABLE {pub}.orders AS SELECT 1 AS id, 'x'::text AS item;
            CREATE VIEW {pub}.v AS SELECT * FROM {hr}.salaries;
            CREATE VIEW {pub}.ok AS SELECT * FROM {pub}.orders;
            -- the same bare name in the HR schema: what a search_path through {hr} would resolve
            CREATE VIEW {hr}.ok AS SELECT employee AS item, salary AS id FROM {hr}.salaries;
            -- reads hr.salaries through SQL text: no scan in the plan; a view over it hides it one level deeper
            CREATE VIEW {pub}.fx AS SELECT query_to_xml('SELECT * FROM {hr}.salaries', true, true, '') AS d;
            CREATE VIEW {pub}.fx2 AS SELECT * FROM {pub}.fx;""")
    try:
        yield hr, pub, out
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            for schema in (hr, pub, out):
                con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            if con.execute("SELECT to_regclass('bento_meta.table_labels') IS NOT NULL").fetchone()[0]:
                con.execute(f"DELETE FROM bento_meta.table_labels WHERE table_name LIKE '{out}.%'")
            if con.execute("SELECT to_regclass('bento_meta.landings') IS NOT NULL").fetchone()[0]:
                con.execute(f"DELETE FROM bento_meta.landings WHERE table_name LIKE '{out}.%'")


def pg_project(tmp_path, schemas, sql):
    hr, pub, out = schemas
    write_policy(tmp_path, {f"{hr}.salaries": ["HR"], f"{hr}.ok": ["HR"], f"{pub}.v": ["ANALYTICS"],
                            f"{pub}.orders": ["ANALYTICS"], f"{pub}.ok": ["ANALYTICS"], f"{pub}.fx2": ["ANALYTICS"],
                            f"{out}.*": ["ANALYTICS"]},
                 zones=ZONES, default_schema=pub)
    add_notebook(tmp_path, "nb", [sql_cell("df", sql), write_cell("df", f"{out}.t")])
    return tmp_path


def test_postgres_view_over_an_hr_table_is_refused_before_any_row(tmp_path, pg_schemas, rows_read, clean_run_dirs):
    hr, pub, out = pg_schemas
    project = pg_project(tmp_path, pg_schemas, f"SELECT * FROM {pub}.v")
    text = refused(project, PG_URL)
    assert "PZ001" in text and f"{hr}.salaries" in text and f"{pub}.v" in text and "HR" in text, text
    assert rows_read == []  # refused before the query ran
    assert query(PG_URL, f"SELECT count(*) FROM pg_tables WHERE schemaname = '{out}'") == [(0,)]


def test_postgres_bare_names_resolve_in_the_default_schema_and_a_clean_view_passes(
        tmp_path, pg_schemas, rows_read, clean_run_dirs):
    """The analysis resolved the bare ``ok`` in the default schema ({pub}); the connection's own search_path
    says {hr} first. The fetch sets ``search_path = pg_catalog, {pub}``, so the warehouse reads what was
    checked: {pub}.ok, a view over an ANALYTICS table, which passes. (Without that, {hr}.ok is read — and the
    planner check refuses it.)"""
    hr, pub, out = pg_schemas
    project = pg_project(tmp_path, pg_schemas, "SELECT * FROM ok")
    url = f"{PG_URL}?options=-csearch_path%3D{hr}%2C{pub}"
    assert run(project, url).success
    assert query(PG_URL, f"SELECT id, item FROM {out}.t") == [(1, "x")]
    assert len(rows_read) == 1


def test_postgres_view_reading_through_sql_text_is_refused_before_any_row(
        tmp_path, pg_schemas, rows_read, clean_run_dirs):
    """The planner shows no scan for a table read by SQL text a view hands to a function; the views a query
    reads (and the views those read) may call only allowlisted functions, like a SQL cell."""
    hr, pub, out = pg_schemas
    project = pg_project(tmp_path, pg_schemas, f"SELECT * FROM {pub}.fx2")
    with pytest.raises(DagsterBentoFetchError) as info:
        run(project, PG_URL)
    text = str(info.value)
    assert f"{pub}.fx" in text and "query_to_xml" in text, text
    assert rows_read == []
    assert query(PG_URL, f"SELECT count(*) FROM pg_tables WHERE schemaname = '{out}'") == [(0,)]
