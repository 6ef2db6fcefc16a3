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
        'segment_customers = _bento_pd.read_parquet("inputs/segment_customers.parquet", dtype_backend="pyarrow")']
    assert "{{ segment }}" in sql[0].metadata["bento"]["original_source"]
    write = [c for c in cells if c.metadata.get("bento", {}).get("type") == "write"]
    assert [c.source for c in write] == ['_bento_write_parquet(top, "outputs/analytics.top_customers_automobile.parquet")']
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
