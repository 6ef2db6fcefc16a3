"""Kept notebooks read like the author's notebook, and a failure shows its cell in the Dagster UI.

Pure tests build the kept view from a real rewrite; two kernel runs (DuckDB) check it end to end.
"""

import inspect
import types
import urllib.parse
from pathlib import Path

import nbformat
import pytest

from dagster_bento.errors import DagsterBentoCellError, failing_cell_markdown, notebook_url
from dagster_bento.execution import artifacts
from dagster_bento.execution.rewrite import SETUP_TAG, restore_original, rewrite_notebook
from tests.nbfactory import add_notebook, code, params, sql_cell, write_cell, write_policy
from tests.test_execution import clean_run_dirs, materializations, run, seed_duckdb  # noqa: F401


def _rewritten(magic: bool = True):
    nb = nbformat.v4.new_notebook(cells=[
        params("n = 1"),
        sql_cell("df", "SELECT * FROM raw.t WHERE x > {{ n }}", magic=magic),
        code("out = df"),
        write_cell("out", "mart.out", magic=magic),
    ])
    return rewrite_notebook(nb, sql_cells=[(1, "df")], write_cells=[(3, "out", "mart.out")],
                            parameters={"n": 2, "ds": "2024-01-02"}, parameters_cell=0)


FACTS_SQL = {1: {"sql": "SELECT * FROM raw.t WHERE x > 2", "output": "df", "rows": 1234, "seconds": 0.25,
                 "tables": ["raw.t"]}}
FACTS_WRITE = {3: {"input": "out", "table": "mart.out", "mode": "overwrite", "rows": 7, "bytes": 2048}}


@pytest.mark.parametrize("magic", [True, False])
def test_sql_and_write_cells_show_the_authors_source_and_facts(magic):
    executed = _rewritten(magic)
    view = artifacts.sanitize(artifacts.author_view(executed, sql=FACTS_SQL, writes=FACTS_WRITE))
    nbformat.validate(view)
    by_kind = {c.metadata.get("bento", {}).get("type"): c for c in view.cells}
    sql, write = by_kind["sql"], by_kind["write"]
    # the SQL rendered with the run's parameters; the magic line stays when the author wrote one
    assert sql.source == ("%%bento_sql df\n" if magic else "") + "SELECT * FROM raw.t WHERE x > 2"
    assert write.source == ("%bento_write out mart.out" if magic else "")
    # what ran, and what the author wrote, stay in metadata (restore_original, dagster-bento show)
    assert sql.metadata["dagster_bento"]["executed_source"].startswith("df = ")
    assert "{{ n }}" in sql.metadata["bento"]["original_source"]
    assert write.metadata["dagster_bento"]["executed_source"].startswith("_bento_write_parquet(out")
    text = sql.outputs[0]["data"]["text/plain"]
    assert "rows: 1,234" in text and "seconds: 0.25" in text and "raw.t" in text and "into: df" in text
    html = sql.outputs[0]["data"]["text/html"]
    assert "<table" in html and "<td>1,234</td>" in html  # kept by the sanitiser as a table
    wtext = write.outputs[0]["data"]["text/plain"]
    assert "rows: 7" in wtext and "file size: 2.0 KiB" in wtext and "table: mart.out" in wtext
    # the kept notebook still restores to the author's notebook
    assert [c.source for c in restore_original(view).cells] == [c.source for c in restore_original(executed).cells]


def test_setup_cell_is_hidden_and_marked():
    view = artifacts.sanitize(artifacts.author_view(_rewritten(), sql=FACTS_SQL, writes=FACTS_WRITE))
    setup = next(c for c in view.cells if SETUP_TAG in c.metadata.get("tags", []))
    assert setup.metadata["jupyter"]["source_hidden"] is True and setup.metadata["collapsed"] is True
    assert setup.source.startswith(artifacts.SETUP_BANNER)
    again = artifacts.author_view(view, sql=FACTS_SQL, writes=FACTS_WRITE)  # idempotent banner
    assert next(c for c in again.cells if SETUP_TAG in c.metadata.get("tags", [])).source.count("dagster-bento setup") == 1


def test_cell_errors_stay_after_the_facts():
    executed = _rewritten()
    cell = next(c for c in executed.cells if c.metadata.get("bento", {}).get("type") == "write")
    cell.outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="out has an unnamed index",
                                           traceback=[])]
    view = artifacts.author_view(executed, sql={}, writes={3: {"table": "mart.out"}})
    write = next(c for c in view.cells if c.metadata.get("bento", {}).get("type") == "write")
    assert [o.output_type for o in write.outputs] == ["display_data", "error"]
    assert "nothing was written" in write.outputs[0]["data"]["text/plain"]


def test_failing_cell_markdown_fence_cannot_be_closed_by_the_source():
    source = "x = '````'\n```\n# **bold** <script>alert(1)</script>\n1 / 0"
    text = failing_cell_markdown(source, cell=4, notebook="notebooks/a.ipynb", ename="ZeroDivisionError",
                                 evalue="division by ``` zero")
    fence = "`````"  # longer than the source's longest run (4)
    assert f"{fence}python\n{source}\n{fence}\n" in text
    assert "````text\nZeroDivisionError: division by ``` zero\n````" in text
    assert "Cell 4" in text and "notebooks/a.ipynb" in text


def test_notebook_url_is_the_webservers_notebook_route():
    url = notebook_url("http://dagster:3000/", "/srv/art/x y&z.ipynb", "bento loc")
    parsed = urllib.parse.urlsplit(url)
    assert parsed.path == "/notebook"
    assert urllib.parse.parse_qs(parsed.query) == {"path": ["/srv/art/x y&z.ipynb"], "repoLocName": ["bento loc"]}
    # the route and the parameters dagster-webserver reads (installed version)
    import dagster_webserver.webserver as webserver

    src = inspect.getsource(webserver)
    assert '"/notebook"' in src and 'query_params["path"]' in src and 'query_params["repoLocName"]' in src


def test_failure_metadata_links_the_kept_notebook(tmp_path):
    from dagster_bento.execution.runner import BentoInvocation

    (tmp_path / "bento.yaml").write_text("notifications:\n  webserver_url: http://ui.example:3000\n")
    inv = BentoInvocation.__new__(BentoInvocation)
    inv.project_dir = tmp_path
    origin = types.SimpleNamespace(location_name="bento")
    inv.context = types.SimpleNamespace(dagster_run=types.SimpleNamespace(remote_job_origin=origin))
    url = inv._notebook_url(Path("/art/sales/run.ipynb"))
    assert url == "http://ui.example:3000/notebook?path=%2Fart%2Fsales%2Frun.ipynb&repoLocName=bento"
    inv.context.dagster_run.remote_job_origin = None  # an in-process run: no code location to ask
    assert inv._notebook_url(Path("/art/sales/run.ipynb")) is None
    err = DagsterBentoCellError("boom", ename="KeyError", evalue="'v'", notebook="notebooks/a.ipynb", cell=2)
    err.attach_executed_notebook("/art/sales/run.ipynb", url=url)
    assert err.metadata["executed_notebook"].path == "/art/sales/run.ipynb"
    assert err.metadata["executed_notebook_url"].url == url


# ------------------------------------------------------------------------------------------------ real runs

pytestmark_kernel = pytest.mark.kernel

SEED = """
CREATE SCHEMA raw;
CREATE TABLE raw.orders AS SELECT * FROM (VALUES (1, 5.0), (2, 7.5), (3, 1.0)) AS t(order_id, amount);
"""


@pytestmark_kernel
def test_kept_notebook_of_a_run_reads_like_the_author_wrote_it(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb", SEED)
    write_policy(tmp_path, {"raw.orders": ["ANALYTICS"]})
    add_notebook(tmp_path, "sales", [
        params("min_amount = 0"),
        sql_cell("orders", "SELECT order_id, amount FROM raw.orders WHERE amount > {{ min_amount }}"),
        code("big = orders[orders.amount > 2]"),
        write_cell("big", "mart.big"),
    ], schedules=[{"name": "sales", "parameters": {"min_amount": 1}}])
    result = run(tmp_path, url)
    meta = materializations(result)["mart/big"]
    kept = Path(meta["dagster_bento/executed_notebook"].path)
    nb = nbformat.read(kept, as_version=4)
    nbformat.validate(nb)
    sql = next(c for c in nb.cells if c.metadata.get("bento", {}).get("type") == "sql")
    write = next(c for c in nb.cells if c.metadata.get("bento", {}).get("type") == "write")
    assert sql.source == "%%bento_sql orders\nSELECT order_id, amount FROM raw.orders WHERE amount > 1"
    facts = sql.outputs[0]["data"]["text/plain"]
    assert "rows: 2" in facts and "raw.orders" in facts and "seconds:" in facts
    assert write.source == "%bento_write big mart.big"
    size = meta["dagster_bento/bytes_written"].value
    assert isinstance(size, int) and size > 0
    wfacts = write.outputs[0]["data"]["text/plain"]
    assert "rows: 2" in wfacts and "table: mart.big" in wfacts and "file size:" in wfacts
    assert not any("_bento_read" in c.source or "read_parquet" in c.source for c in nb.cells
                   if SETUP_TAG not in c.metadata.get("tags", []))
    setup = next(c for c in nb.cells if SETUP_TAG in c.metadata.get("tags", []))
    assert setup.metadata["jupyter"]["source_hidden"] is True
    # numeric metadata, one key per number
    assert meta["dagster/row_count"].value == 2 and type(meta["dagster/row_count"].value) is int
    assert meta["dagster_bento/rows_written"].value == 2 and meta["dagster_bento/rows_fetched_total"].value == 2
    for key in ("fetch_seconds", "execute_seconds", "upload_seconds"):
        assert isinstance(meta[f"dagster_bento/{key}"].value, float)


@pytestmark_kernel
def test_failed_run_shows_the_failing_cell_as_markdown(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb", SEED)
    write_policy(tmp_path, {"raw.orders": ["ANALYTICS"]})
    add_notebook(tmp_path, "boom", [sql_cell("orders", "SELECT * FROM raw.orders"),
                                    code("total = orders.amount.sum()\nratio = total / 0 if False else 1 / 0"),
                                    write_cell("orders", "mart.never")])
    with pytest.raises(DagsterBentoCellError) as info:
        run(tmp_path, url)
    err = info.value
    md = err.metadata["failing_cell"].value
    assert "```python\ntotal = orders.amount.sum()\nratio = total / 0 if False else 1 / 0\n```" in md
    assert "ZeroDivisionError: division by zero" in md and "Cell 1" in md
    kept = Path(err.metadata["executed_notebook"].path)
    nb = nbformat.read(kept, as_version=4)
    sql = next(c for c in nb.cells if c.metadata.get("bento", {}).get("type") == "sql")
    assert sql.source == "%%bento_sql orders\nSELECT * FROM raw.orders" and "rows: 3" in sql.outputs[0]["data"]["text/plain"]
    write = next(c for c in nb.cells if c.metadata.get("bento", {}).get("type") == "write")
    assert "nothing was written" in write.outputs[0]["data"]["text/plain"]


def test_show_prints_the_notebook_page_from_the_failure_metadata():
    from dagster_bento.debug import RunDetail, RunSummary, format_run

    summary = RunSummary(run_id="r1", status="FAILURE", schedules=("sales",), dagster_schedule=None, partition=None,
                         start=None, duration_s=None, notebook="notebooks/a.ipynb", failing_cell=2, error="boom")
    page = "http://ui:3000/notebook?path=%2Fk.ipynb&repoLocName=bento"
    detail = RunDetail(summary=summary, cell_source="1/0", ename="ZeroDivisionError", evalue="division by zero",
                       traceback=None, error_message=None, inputs=(), outputs=(), parameters={},
                       executed_notebook="/k.ipynb", executed_html=None, run_url="http://ui:3000/runs/r1",
                       executed_notebook_url=page)
    assert f"notebook page: {page}" in format_run(detail)


# ------------------------------------------------------------------------------------------------ pandas habits

DECIMALS = """
CREATE SCHEMA raw;
CREATE TABLE raw.nums AS SELECT range AS id, 1.25::DECIMAL(10,2) AS v, range * 1.5 AS w,
  12345678901234567.5::DECIMAL(38,1) AS big, (range + 0.001)::DECIMAL(38,3) AS total,
  TIMESTAMP '2024-01-02 03:04:05' + range * INTERVAL 1 DAY AS ts FROM range(3);
"""


@pytestmark_kernel
@pytest.mark.parametrize("fmt", ["parquet", "arrow", "csv"])
def test_decimal_arithmetic_and_datetimes_work_and_types_come_back(tmp_path, fmt, clean_run_dirs):
    """`df.w * 2` on DuckDB's DECIMAL(21,1) failed ("Decimal precision out of range [1, 38]: 42"). Columns
    whose values are exact as doubles are read as double[pyarrow] and written back as their DECIMAL; a
    column that needs more digits stays an exact decimal."""
    from tests.test_execution import query

    url = seed_duckdb(tmp_path / "wh.duckdb", DECIMALS)
    write_policy(tmp_path, {"raw.nums": ["ANALYTICS"]})
    add_notebook(tmp_path, "nums", [
        sql_cell("df", "SELECT * FROM raw.nums ORDER BY id"),
        code("""
            import pandas as pd
            df["v2"] = df["v"] * 1.5
            df["w2"] = df["w"] * 2 * 2
            df["month"] = df["ts"].dt.month
            by_day = pd.Series(1, index=pd.DatetimeIndex(df["ts"])).resample("D").sum()
            assert len(by_day) == 3, by_day
            print("dtypes", dict(df.dtypes.astype(str)))"""),
        write_cell("df", "mart.nums"),
    ])
    assert run(tmp_path, url, data_format=fmt).success
    types = dict(query(url, "SELECT column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = 'mart' AND table_name = 'nums'"))
    assert types["v"] == "DECIMAL(10,2)" and types["w"] == "DECIMAL(21,1)" and types["total"] == "DECIMAL(38,3)"
    assert types["big"] == "DECIMAL(38,1)"  # 18 digits: kept as an exact decimal all the way
    assert types["v2"] == "DOUBLE" and types["w2"] == "DOUBLE"
    assert query(url, "SELECT v, w, big, total, v2, w2, month FROM mart.nums ORDER BY id") == query(
        url, "SELECT v, w, big, total, v * 1.5, w * 4.0, month(ts) FROM raw.nums ORDER BY id")
