"""Red team: SQL cells that tried to read a restricted table past the static checks, run through the real
`dagster-bento check` command. Each must end as an error (BENTO004 or a purpose-zone error) at its cell."""

import json
import subprocess
import sys

import pytest

from tests.nbfactory import add_notebook, sql_cell, write_cell, write_policy

ZONES = {"ANALYTICS": {"permits": ["ANALYTICS"]}, "HR": {"permits": ["HR"]}, "PUBLIC": {"permits": "*"}}


def check(project):
    out = subprocess.run([sys.executable, "-m", "dagster_bento.cli", "check", str(project), "--json", "--no-cache"],
                         capture_output=True, text=True, timeout=120)
    return out.returncode, json.loads(out.stdout)["problems"]


def errors_at(problems, notebook, cell):
    return [p for p in problems if p["notebook"] == f"notebooks/{notebook}.ipynb" and p["cell"] == cell
            and (p["code"] == "BENTO004" or p["code"].startswith("PZ"))]


@pytest.fixture
def duck_project(tmp_path):
    write_policy(tmp_path, {"main.salaries": ["HR"], "main.orders": ["ANALYTICS"], "main.*": ["PUBLIC"],
                            "analytics.*": ["ANALYTICS"]}, zones=ZONES)
    return tmp_path


ATTACKS_DUCKDB = {
    # the example: a lateral column alias made qualify() raise, and the fallback dropped `salaries`
    # because a CTE elsewhere in the query had the same name
    "lateral_alias": "SELECT employee AS e, salary AS pay, e AS n FROM salaries, "
                     "(WITH salaries AS (SELECT 1 AS one) SELECT one FROM salaries) t",
    "cte_in_where": "SELECT * FROM orders WHERE id IN (WITH salaries AS (SELECT 1 AS id) SELECT id FROM salaries) "
                    "UNION ALL SELECT salary FROM salaries",
    "cte_in_set_arm": "(WITH salaries AS (SELECT 1 AS s) SELECT s FROM salaries) UNION ALL SELECT salary FROM salaries",
    "forward_cte": "WITH a AS (SELECT * FROM salaries), salaries AS (SELECT 1 AS s) SELECT * FROM a",
    "query_text": "SELECT * FROM query('SELECT * FROM main.salaries')",
    "catalog_view": "SELECT sql FROM duckdb_tables",
}


def test_duckdb_attacks_end_as_errors_in_check(duck_project):
    for name, sql in ATTACKS_DUCKDB.items():  # one project, one `check` run (each run costs a process start)
        add_notebook(duck_project, name, [sql_cell("df", sql), write_cell("df", f"analytics.out_{name}")])
    code, problems = check(duck_project)
    assert code == 1
    missed = [name for name in ATTACKS_DUCKDB if not errors_at(problems, name, 0)]
    assert not missed, (missed, problems)


def test_the_same_shapes_without_the_restricted_table_pass(duck_project):
    add_notebook(duck_project, "fine", [
        sql_cell("df", "SELECT id AS e, e AS n FROM orders, (WITH salaries AS (SELECT 1 AS one) "
                       "SELECT one FROM salaries) t"),
        write_cell("df", "analytics.out")])
    code, problems = check(duck_project)
    assert code == 0, problems


@pytest.fixture
def pg_project(tmp_path):
    (tmp_path / "bento.yaml").write_text("warehouse_url: postgresql://postgres@127.0.0.1:5432/test\n")
    # (naming both public.salaries and public."Salaries" in the policy needs the policy parser to pass its
    # default_dialect to the table-name normaliser; until then the two spellings fold together: see the report)
    write_policy(tmp_path, {"public.salaries": ["HR"], "public.orders": ["ANALYTICS"], "analytics.*": ["ANALYTICS"]},
                 zones=ZONES, default_schema="public", default_dialect="postgres")
    return tmp_path


ATTACKS_POSTGRES = {
    "ts_stat": "SELECT * FROM ts_stat('SELECT to_tsvector(salary::text) FROM public.salaries')",
    "ts_rewrite": "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery FROM public.salaries')",
    "query_to_xml": "SELECT query_to_xml('SELECT * FROM public.salaries', true, true, '')",
    "pg_authid": "SELECT rolname, rolpassword FROM pg_authid",
    "pg_user": "SELECT * FROM pg_user",
    "sibling_cte": "SELECT * FROM salaries, (WITH salaries AS (SELECT 1 AS one) SELECT one FROM salaries) t",
    "unquoted_folds": "SELECT * FROM SALARIES",  # folds to salaries (HR)
}


def test_postgres_attacks_end_as_errors_in_check(pg_project):
    for name, sql in ATTACKS_POSTGRES.items():
        add_notebook(pg_project, name, [sql_cell("df", sql), write_cell("df", f"analytics.out_{name}")])
    code, problems = check(pg_project)
    assert code == 1
    assert not [p for p in problems if p["cell"] is None and p["severity"] == "error"], problems  # policy loads
    missed = [name for name in ATTACKS_POSTGRES if not errors_at(problems, name, 0)]
    assert not missed, (missed, problems)
