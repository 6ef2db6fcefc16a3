"""`dagster-bento runs` / `show` (dagster_bento.debug) against a real Dagster instance holding real runs."""

from pathlib import Path

import dagster as dg
import pytest

from dagster_bento.debug import describe_run, format_run, format_runs, list_runs
from tests.nbfactory import add_notebook, code, params, sql_cell, write_cell, write_policy
from tests.test_execution import run, seed_duckdb

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One instance with three runs: a success, a failing code cell, a failing SQL cell (at the fetch)."""
    project = tmp_path_factory.mktemp("debug")
    url = seed_duckdb(project / "wh.duckdb")
    write_policy(project, {"raw.types": ["ANALYTICS"]})
    add_notebook(project, "good", [sql_cell("df", "SELECT * FROM raw.types"), write_cell("df", "mart.good")])
    add_notebook(project, "boom", [params("low = 0"), sql_cell("df", "SELECT * FROM raw.types WHERE id > {{ low }}"),
                                   code("y = 2"), code("out = df.assign(r=1 / 0)"), write_cell("out", "mart.never")],
                 schedules=[{"name": "boom_daily", "parameters": {"low": 1}}])
    add_notebook(project, "badsql", [sql_cell("df", "SELECT CAST(s AS INTEGER) AS v FROM raw.types"),
                                     write_cell("df", "mart.bad")])
    with dg.instance_for_test() as instance:
        ids = {}
        for name in ("good", "boom_daily", "badsql"):
            result = run(project, url, select=name, instance=instance, raise_on_error=False)
            ids[name] = result.run_id
        yield instance, ids, project


def test_list_runs_newest_first_with_status_and_failing_cell(runs):
    instance, ids, _project = runs
    listed = list_runs(instance)
    assert [r.run_id for r in listed] == [ids["badsql"], ids["boom_daily"], ids["good"]]
    good, boom = listed[2], listed[1]
    assert (good.status, good.schedules, good.failing_cell, good.notebook) == (
        "SUCCESS", ("good",), None, "notebooks/good.ipynb")
    assert (boom.status, boom.schedules, boom.failing_cell, boom.notebook) == (
        "FAILURE", ("boom_daily",), 3, "notebooks/boom.ipynb")
    assert boom.duration_s and boom.duration_s > 0 and boom.start and boom.start.endswith("+00:00")
    assert "ZeroDivisionError" in boom.error
    assert [r.run_id for r in list_runs(instance, failed=True)] == [ids["badsql"], ids["boom_daily"]]
    for query in ("boom", "boom_daily", "notebooks/boom.ipynb", "boom.ipynb"):
        assert [r.run_id for r in list_runs(instance, query)] == [ids["boom_daily"]], query
    assert list_runs(instance, "nothing") == []
    assert [r.run_id for r in list_runs(instance, limit=1)] == [ids["badsql"]]
    text = format_runs(listed)
    assert "boom_daily" in text and "notebooks/boom.ipynb cell 3" in text and ids["good"][:8] in text


def test_show_a_failed_code_cell(runs):
    instance, ids, project = runs
    detail = describe_run(instance, ids["boom_daily"], project_dir=project)
    assert detail.summary.failing_cell == 3
    assert detail.cell_source == "out = df.assign(r=1 / 0)"  # the author's source
    assert (detail.ename, detail.evalue) == ("ZeroDivisionError", "division by zero")
    assert "ZeroDivisionError" in detail.traceback and "\x1b[" not in detail.traceback
    assert "notebooks/boom.ipynb: cell 3 raised ZeroDivisionError" in detail.error_message
    assert detail.inputs == ({"cell": 1, "output": "df", "rows": 2, "tables": ["raw.types"]},)
    assert detail.outputs == ({"cell": 4, "table": "mart.never", "mode": "overwrite", "rows_written": None,
                               "rows_in_table": None},)
    assert detail.parameters["low"] == 1
    assert Path(detail.executed_notebook).is_file() and detail.executed_notebook.endswith(f"{ids['boom_daily']}.ipynb")
    assert detail.run_url == f"http://127.0.0.1:3000/runs/{ids['boom_daily']}"
    assert detail.executed_html == detail.executed_notebook.removesuffix(".ipynb") + ".html"
    text = format_run(detail)
    for part in ("FAILURE", "failed at cell 3: ZeroDivisionError: division by zero", "out = df.assign(r=1 / 0)",
                 "cell 1: df <- raw.types (2 rows)", "mart.never (overwrite): not written", detail.executed_notebook,
                 detail.run_url):
        assert part in text, part
    assert describe_run(instance, ids["boom_daily"][:8]).summary.run_id == ids["boom_daily"]  # a prefix


def test_show_a_failed_sql_cell_and_a_success(runs):
    instance, ids, project = runs
    bad = describe_run(instance, ids["badsql"], project_dir=project, webserver_url="http://dagster.internal:3000/")
    assert bad.summary.failing_cell == 0
    assert bad.cell_source.startswith("%%bento_sql df\nSELECT CAST(s AS INTEGER)")
    assert "Conversion Error" in bad.error_message or "convert" in bad.error_message.lower()
    assert bad.run_url == f"http://dagster.internal:3000/runs/{ids['badsql']}"
    good = describe_run(instance, ids["good"], project_dir=project)
    assert good.summary.status == "SUCCESS" and good.ename is None and good.cell_source is None
    assert good.outputs == ({"cell": 1, "table": "mart.good", "mode": "overwrite", "rows_written": 3,
                             "rows_in_table": 3},)
    assert good.inputs == ({"cell": 0, "output": "df", "rows": 3, "tables": ["raw.types"]},)
    text = format_run(good)
    assert "mart.good (overwrite): 3 rows written, 3 in the table" in text and "failed at" not in text
    with pytest.raises(LookupError, match="no run"):
        describe_run(instance, "does-not-exist")


def test_the_commands_read_the_instance_of_dagster_home(runs):
    """`dagster-bento runs` and `show` as a user types them, against DAGSTER_HOME."""
    import os
    import subprocess
    import sys

    instance, ids, project = runs
    exe = str(Path(sys.executable).with_name("dagster-bento"))
    env = {**os.environ, "DAGSTER_HOME": instance.root_directory}
    listed = subprocess.run([exe, "runs", "--failed"], env=env, capture_output=True, text=True, cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert ids["boom_daily"][:8] in listed.stdout and ids["good"][:8] not in listed.stdout
    shown = subprocess.run([exe, "show", ids["boom_daily"][:8], "--project-dir", str(project)], env=env,
                           capture_output=True, text=True, cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "out = df.assign(r=1 / 0)" in shown.stdout and "ZeroDivisionError" in shown.stdout
    missing = subprocess.run([exe, "show", "ffffffff"], env=env, capture_output=True, text=True, cwd=project)
    assert missing.returncode == 1 and missing.stderr
