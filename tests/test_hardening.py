"""What a hostile or careless notebook cannot do to the orchestrator (beyond the sandbox tests)."""

import datetime as dt

import nbformat
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_bento import load_project
from dagster_bento.errors import DagsterBentoOutputError
from dagster_bento.execution.artifacts import sanitize
from tests.nbfactory import add_notebook, code, params, sql_cell, write_cell, write_policy
from tests.test_execution import query, run, seed_duckdb


@pytest.fixture
def project(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"], "raw.types": ["ANALYTICS"]})
    return tmp_path


def problems(project_dir, code_):
    return [p for p in load_project(project_dir, use_cache=False).problems if p.code == code_]


def test_templates_cannot_reach_python_internals(project):
    add_notebook(project, "ssti", [sql_cell("df", "SELECT '{{ cycler.__init__.__globals__.os.environ }}' AS x "
                                                  "FROM raw.a"), write_cell("df", "mart.x")])
    (p,) = problems(project, "BENTO005")
    assert p.cell == 0 and "template refused" in p.message


def test_cell_dialect_must_be_the_warehouses(project):
    cell = sql_cell("df", "SELECT 'a\\' AS s, (SELECT 1 FROM raw.a) AS n --'")
    cell.metadata["bento"]["dialect"] = "mysql"
    add_notebook(project, "dia", [cell, write_cell("df", "mart.x")])
    (p,) = problems(project, "BENTO003")
    assert p.cell == 0 and "'mysql'" in p.message and "duckdb" in p.message


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM query_table('raw.a')", "SELECT * FROM 'secret.parquet'", "SELECT getenv('HOME') FROM raw.a",
    "SELECT * FROM raw.a WHERE x IN (SELECT * FROM read_parquet('/x.parquet'))",
])
def test_sql_cells_read_only_named_tables(project, sql):
    add_notebook(project, "fn", [sql_cell("df", sql), write_cell("df", "mart.x")])
    (p,) = problems(project, "BENTO004")
    assert p.cell == 0
    assert any(text in p.message for text in ("SQL cells may only read warehouse tables",
                                               "not on the list of functions", "reads files"))


def test_injected_cells_in_the_source_are_refused(project):
    injected = code("a = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    add_notebook(project, "executed_copy", [params("a = 1"), injected, sql_cell("df", "SELECT * FROM raw.a"),
                                            write_cell("df", "mart.x")])
    (p,) = problems(project, "BENTO003")
    assert p.cell == 1 and "delete the cell" in p.message


def test_table_names_cannot_depend_on_ds(project):
    add_notebook(project, "dsname", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x_{{ ds_nodash }}")])
    (p,) = problems(project, "BENTO003")
    assert p.cell == 1 and "overwrite_partition" in p.message


def test_spec_cannot_turn_the_sandbox_off(project):
    add_notebook(project, "nosandbox", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x")],
                 sandbox="none")
    (p,) = problems(project, "BENTO009")
    assert "cannot be set by a notebook's spec" in p.message


def test_parameters_must_be_plain_values(project):
    add_notebook(project, "dates", [params("start = '2026-01-01'"), sql_cell("df", "SELECT * FROM raw.a"),
                                    write_cell("df", "mart.x")],
                 schedules=[{"name": "dates", "parameters": {"start": dt.date(2026, 1, 1)}}])
    (p,) = problems(project, "BENTO009")
    assert "quote dates" in p.message


def test_computed_default_in_a_template_is_named(project):
    add_notebook(project, "computed", [params("import datetime\nstart = str(datetime.date.today())"),
                                       sql_cell("df", "SELECT * FROM raw.a WHERE d >= '{{ start }}'"),
                                       write_cell("df", "mart.x")])
    (p,) = problems(project, "BENTO005")
    assert p.cell == 1 and "computed in the parameters cell" in p.message


def test_parameters_cell_is_checked_for_side_effects(project):
    add_notebook(project, "sneaky", [params("import socket\nhost = 'x'"), sql_cell("df", "SELECT * FROM raw.a"),
                                     write_cell("df", "mart.x")])
    assert [p.cell for p in problems(project, "BENTO-E101")] == [0]


@pytest.mark.kernel
def test_only_scheduled_parameters_are_injected(tmp_path):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "inj", [params("n = 1\ntag = 'x' * 3"), sql_cell("df", "SELECT id FROM raw.types LIMIT {{ n }}"),
                                   code("df['tag'] = tag\ndf['n'] = n"), write_cell("df", "mart.inj")],
                 schedules=[{"name": "inj", "parameters": {"n": 2}}])
    assert run(tmp_path, url).success
    assert query(url, "SELECT id, tag, n FROM mart.inj ORDER BY id") == [(1, "xxx", 2), (2, "xxx", 2)]


def _host_parquet(tmp_path):
    secret = tmp_path / "host_secret.parquet"
    pq.write_table(pa.table({"id": ["123-45-6789"]}), secret)
    return secret


@pytest.mark.kernel
@pytest.mark.parametrize("attack", ["symlink", "fifo"])
def test_orchestrator_does_not_follow_what_the_notebook_leaves(tmp_path, attack):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    target = "outputs/mart.leak.parquet"
    swap = (f"os.symlink({str(_host_parquet(tmp_path))!r}, {target!r})" if attack == "symlink"
            else f"os.mkfifo({target!r})")
    add_notebook(tmp_path, "leak", [sql_cell("df", "SELECT id FROM raw.types"), write_cell("df", "mart.leak"),
                                    code(f"import os\nos.remove({target!r})\n{swap}")],
                 exemptions=[{"rule": "file_write", "reason": "test of the orchestrator's output handling"}])
    with pytest.raises(DagsterBentoOutputError, match="not a regular file"):
        run(tmp_path, url)
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'leak'") == [(0,)]


def test_kept_notebooks_cannot_run_script():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x")])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("display_data", data={
            "text/html": "<style>td{}</style><table><tr><td onclick='alert(1)'>1</td></tr></table>"
                         "<script>fetch('/graphql')</script><img src=x onerror=alert(1)>",
            "text/plain": "1"}),
        nbformat.v4.new_output("display_data", data={"application/javascript": "alert(1)"}),
    ]
    clean = sanitize(nb)
    html = clean.cells[0].outputs[0].data["text/html"]
    assert "<table>" in html and "<td>1</td>" in html
    assert "<script" not in html and "onclick" not in html and "onerror" not in html and "<img" not in html
    assert "application/javascript" not in clean.cells[0].outputs[1].data
    assert "not kept" in clean.cells[0].outputs[1].data["text/plain"]
    assert nb.cells[0].outputs[1].data["application/javascript"] == "alert(1)"  # input untouched


@pytest.mark.kernel
def test_inputs_are_read_only_for_the_notebook(tmp_path):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "ro", [
        code("""
            import os
            attempts = {}
            for name, attempt in [("write", lambda: open("inputs/x", "w")), ("rename", lambda: os.rename("inputs", "gone"))]:
                try:
                    attempt()
                    attempts[name] = "ESCAPED"
                except OSError as err:
                    attempts[name] = type(err).__name__
            assert "ESCAPED" not in attempts.values(), attempts"""),
        sql_cell("df", "SELECT id FROM raw.types"), code("df['n'] = len(os.listdir('inputs'))"),
        write_cell("df", "mart.ro")])
    assert run(tmp_path, url).success
    assert query(url, "SELECT DISTINCT n FROM mart.ro") == [(1,)]
