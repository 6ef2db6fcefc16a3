"""The notebook rewrite is pure, idempotent and golden-tested (set BENTO_UPDATE_GOLDEN=1 to refresh)."""

import json
import os

import nbformat
import pytest

from dagster_bento.execution.rewrite import INJECTED_TAG, SETUP_TAG, original_index, restore_original, rewrite_notebook
from dagster_bento.project import load_project
from tests.nbfactory import REPO

GOLDEN = REPO / "tests" / "golden"


def rewrite(stem: str, schedule: str, fmt: str = "parquet"):
    project = load_project(REPO)
    job = project.job(schedule)
    nb = nbformat.read(REPO / job.notebook_path, as_version=4)
    return nb, rewrite_notebook(
        nb, sql_cells=[(c.index, c.output) for c in job.sql_cells],
        write_cells=[(w.index, w.input, w.table) for w in job.write_cells],
        parameters={**job.parameters, "ds": "2026-11-26"}, parameters_cell=job.parameters_cell, fmt=fmt,
        run_info={"schedule": job.name})


@pytest.mark.parametrize(("stem", "schedule", "fmt"), [
    ("customer_revenue", "customer_revenue", "parquet"),
    ("segment_top_customers", "top_customers_automobile", "parquet"),
    ("segment_top_customers", "top_customers_building", "csv"),
    ("region_summary", "region_summary", "arrow"),
])
def test_golden(stem, schedule, fmt):
    _, out = rewrite(stem, schedule, fmt)
    text = nbformat.writes(out)
    path = GOLDEN / f"{schedule}.{fmt}.ipynb"
    if os.environ.get("BENTO_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"rewrite changed; inspect and refresh {path} with BENTO_UPDATE_GOLDEN=1"


def test_rewrite_shape():
    original, out = rewrite("segment_top_customers", "top_customers_automobile")
    cells = out.cells
    assert SETUP_TAG in cells[0].metadata["tags"]
    # papermill's convention: injected cell right after the parameters cell
    params_at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    assert INJECTED_TAG in cells[params_at + 1].metadata["tags"]
    assert "segment = 'AUTOMOBILE'" in cells[params_at + 1].source and "ds = '2026-11-26'" in cells[params_at + 1].source
    sql = [c for c in cells if c.metadata.get("bento", {}).get("type") == "sql"]
    assert [c.source for c in sql] == [
        'segment_customers = _bento_read_parquet("inputs/segment_customers.parquet")']
    assert "{{ segment }}" in sql[0].metadata["bento"]["original_source"]
    write = [c for c in cells if c.metadata.get("bento", {}).get("type") == "write"]
    assert [c.source for c in write] == ['_bento_write_parquet(top, "outputs/analytics.top_customers_automobile.parquet", "top")']
    record = out.metadata["dagster_bento"]
    assert [r["cell"] for r in record["rewritten_cells"]] == [2, 4]
    assert record["parameters"]["segment"] == "AUTOMOBILE"
    assert all(len(c.source.splitlines()) == 1 for c in sql + write)
    assert original.cells[2].source.startswith("%%bento_sql")  # input untouched


def test_idempotent_and_reversible():
    original, once = rewrite("customer_revenue", "customer_revenue")
    project = load_project(REPO)
    job = project.job("customer_revenue")
    twice = rewrite_notebook(once, sql_cells=[(c.index, c.output) for c in job.sql_cells],
                             write_cells=[(w.index, w.input, w.table) for w in job.write_cells],
                             parameters={**job.parameters, "ds": "2026-11-26"}, parameters_cell=job.parameters_cell,
                             run_info={"schedule": job.name})
    assert json.dumps(twice, sort_keys=True) == json.dumps(once, sort_keys=True)
    restored = restore_original(once)
    assert [c.source for c in restored.cells] == [c.source for c in original.cells]


def test_original_index_maps_back():
    original, out = rewrite("segment_top_customers", "top_customers_building")
    for i, cell in enumerate(out.cells):
        if {SETUP_TAG, INJECTED_TAG} & set(cell.metadata.get("tags", [])):
            continue
        assert original.cells[original_index(out, i)].cell_type == cell.cell_type
        assert original_index(out, i) == next(j for j, c in enumerate(original.cells) if c.id == cell.id)


# ------------------------------------------------------------------------------------------------
# The write cells' helpers keep the dataframe's index (reset_index semantics) or refuse it; never drop it.
# Run here in-process from the setup cell's own source, for every interchange format.

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dagster_bento.execution.rewrite import _FRAME_HELPER, _HELPERS  # noqa: E402
from dagster_bento.warehouse import read_csv_sidecar, read_csv_with_schema  # noqa: E402

FORMATS = ["parquet", "arrow", "csv"]


def write_with_setup_cell(df, tmp_path, fmt: str, name: str = "counts"):
    """Write ``df`` the way a rewritten write cell does (the setup cell's helpers); return the file as Arrow."""
    scope: dict = {"_bento_pd": pd}
    exec(_FRAME_HELPER + "\n" + _HELPERS[fmt], scope)  # noqa: S102 - the injected setup cell's source
    (tmp_path / "outputs").mkdir(exist_ok=True)
    path = tmp_path / "outputs" / f"analytics.t.{fmt}"
    scope[f"_bento_write_{fmt}"](df, str(path), name)
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "arrow":
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return read_csv_with_schema(path, read_csv_sidecar(path))


def weekday_counts() -> pd.DataFrame:
    events = pd.DataFrame({"weekday": ["Mon", "Tue", "Mon", "Sun"], "n": [1, 2, 3, 4]})
    return events.groupby("weekday").agg(events=("n", "count"), total=("n", "sum"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_named_index_becomes_columns(tmp_path, fmt):
    table = write_with_setup_cell(weekday_counts(), tmp_path, fmt)
    assert table.column_names == ["weekday", "events", "total"]
    assert table.column("weekday").to_pylist() == ["Mon", "Sun", "Tue"]
    multi = pd.DataFrame({"region": ["eu", "eu", "us"], "day": [1, 2, 1], "n": [5, 6, 7]}).set_index(["region", "day"])
    table = write_with_setup_cell(multi, tmp_path, fmt)
    assert table.column_names == ["region", "day", "n"] and table.column("day").to_pylist() == [1, 2, 1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_named_series_becomes_a_frame(tmp_path, fmt):
    counts = pd.DataFrame({"weekday": ["Mon", "Tue", "Mon"]})["weekday"].value_counts()  # Series "count"
    table = write_with_setup_cell(counts, tmp_path, fmt)
    assert table.column_names == ["weekday", "count"]
    assert dict(zip(*table.to_pydict().values())) == {"Mon": 2, "Tue": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_positional_index_is_dropped(tmp_path, fmt):
    df = pd.DataFrame({"v": [3, 1, 2]})
    for frame in (df, df.sort_values("v"), df[df.v > 1], df.head(2)):  # RangeIndex, or row numbers left over
        assert write_with_setup_cell(frame, tmp_path, fmt).column_names == ["v"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("frame", "match"), [
    (pd.DataFrame({"n": [1, 2]}, index=["Mon", "Tue"]), r"counts has an unnamed index \('Mon', 'Tue', \.\.\.\)"),
    (pd.DataFrame({"n": [1, 2]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", None])),
     r"rename_axis\(\['<name>', '<name>'\]\)"),
    (pd.DataFrame({"n": [1]}, index=pd.DatetimeIndex(["2026-01-01"])), "unnamed index"),
    (pd.DataFrame({"n": [1, 2]}).groupby("n").size(), r"unnamed pandas Series.*to_frame\('count'\)"),
    (pd.DataFrame({"k": [1, 2]}, index=pd.Index([5, 6], name="k")), "both an index level and a column named 'k'"),
    ([1, 2], "not a pandas DataFrame"),
])
def test_index_that_would_be_lost_is_refused_with_the_fix(tmp_path, fmt, frame, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        write_with_setup_cell(frame, tmp_path, fmt)
    assert "analytics.t" in str(info.value)  # names the table; the run's error names notebook and cell
    assert not (tmp_path / "outputs" / f"analytics.t.{fmt}").exists()


def test_index_equal_to_a_column_is_written_once(tmp_path):
    df = pd.DataFrame({"k": ["a", "b"], "n": [1, 2]}).set_index("k", drop=False)
    assert write_with_setup_cell(df, tmp_path, "parquet").column_names == ["k", "n"]
