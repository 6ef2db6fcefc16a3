"""Red team: a notebook's outputs are judged before the orchestrator copies or decodes them.

The notebook writes whatever bytes it likes where a write cell's file goes. Found before: a sparse 6 GB file
became 6 GB of real disk on the host when it was copied, before anything refused it; a 646-byte Parquet file
decoded to 2 GB and ~7 GB of orchestrator memory. Now: the file's size and allocated blocks are judged before a
byte is copied (runner.collect_outputs), and what it decodes to is judged before it is loaded — fixed-width
columns from the footer, variable-width ones decoded in bounded batches, dictionaries counted value by value,
compressed or view-typed Arrow files refused unread (warehouse._prepare_one). Limits: max_output_mb and
max_output_decoded_mb.
"""

import multiprocessing
import os
import resource
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dagster_bento.errors import DagsterBentoOutputError
from dagster_bento.execution.runner import collect_outputs
from dagster_bento.warehouse import DuckDBWarehouse, PostgresWarehouse, UploadRequest
from tests.test_execution import clean_run_dirs, run, seed_duckdb  # noqa: F401 - fixture
from tests.nbfactory import add_notebook, code, sql_cell, write_cell, write_policy

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NB = "notebooks/bomb.ipynb"
MiB = 1024 * 1024


def dictionary_bomb(rows: int, width: int = 1000) -> pa.Table:
    """One ``width``-byte string standing for every row: a few KB as Parquet, rows × width bytes decoded."""
    indices = pa.array(np.zeros(rows, dtype="int32"))
    return pa.table({"s": pa.DictionaryArray.from_arrays(indices, pa.array(["x" * width]))})


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def wh(request, tmp_path):
    if request.param == "duckdb":
        warehouse = DuckDBWarehouse(tmp_path / "wh.duckdb")
    else:
        warehouse = PostgresWarehouse(PG_URL)
    yield warehouse
    warehouse.close()


def _table(wh) -> str:
    return f"{'main' if isinstance(wh, DuckDBWarehouse) else 'public'}.bomb_{os.getpid()}_{time.monotonic_ns()}"


# ------------------------------------------------------------------------------------------------
# decoded size: judged before anything is decoded into memory or loaded


def test_parquet_dictionary_bomb_is_refused_before_it_is_decoded(wh, tmp_path):
    path = tmp_path / "bomb.parquet"
    pq.write_table(dictionary_bomb(2_000_000), path, compression="zstd", write_statistics=False)  # 2 GB decoded
    assert path.stat().st_size < 16 * 1024
    target = _table(wh)
    started = time.monotonic()
    with pytest.raises(DagsterBentoOutputError, match="decodes to more than 256 MiB") as info:
        wh.upload([UploadRequest(target, path, notebook=NB, cell=4, max_decoded_bytes=256 * MiB)], run_id="r")
    assert time.monotonic() - started < 10
    assert f"write cell 4 of {NB}" in str(info.value) and "max_output_decoded_mb" in str(info.value)
    assert not wh.table_exists(target)


def _peak_rss_growth_mb(path: str, limit: int) -> tuple[float, str]:
    """In a forked child: the growth of peak RSS while uploading ``path``, and the error message."""
    def child(conn) -> None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        message = ""
        try:
            DuckDBWarehouse(":memory:").upload([UploadRequest("t", Path(path), max_decoded_bytes=limit)], run_id="r")
        except DagsterBentoOutputError as err:
            message = str(err)
        conn.send(((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, message))

    ctx = multiprocessing.get_context("fork")
    parent, child_end = ctx.Pipe()
    process = ctx.Process(target=child, args=(child_end,))
    process.start()
    try:
        return parent.recv() if parent.poll(120) else (float("inf"), "no answer")
    finally:
        process.join(30)


def test_parquet_bomb_costs_the_orchestrator_little_memory(tmp_path):
    """Measuring stops at the limit, batch by batch: peak memory grows by about a batch, not the bomb."""
    path = tmp_path / "bomb.parquet"
    pq.write_table(dictionary_bomb(2_000_000), path, write_statistics=False)
    growth, message = _peak_rss_growth_mb(str(path), 64 * MiB)
    assert "decodes to more than 64 MiB" in message
    assert growth < 300, f"peak RSS grew by {growth:.0f} MB while judging a 2 GB bomb"


def test_declared_rows_are_judged_from_the_footer(wh, tmp_path):
    """Fifty million NULLs: a tiny file; at least a byte a row, refused without decoding."""
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"n": pa.nulls(50_000_000)}), path)
    with pytest.raises(DagsterBentoOutputError, match=r"50,000,000 rows declared"):
        wh.upload([UploadRequest(_table(wh), path, max_decoded_bytes=16 * MiB)], run_id="r")


def test_ordinary_output_under_the_limit_loads(wh, tmp_path):
    path = tmp_path / "ok.parquet"
    pq.write_table(pa.table({"id": list(range(1000)), "s": [f"row {i}" for i in range(1000)]}), path)
    target = _table(wh)
    [result] = wh.upload([UploadRequest(target, path, max_decoded_bytes=1 * MiB)], run_id="r")
    assert result.rows_in_table == 1000


def test_delta_byte_array_is_refused(tmp_path):
    """Each DELTA_BYTE_ARRAY value may repeat its predecessor: a page can stand for quadratically many bytes."""
    path = tmp_path / "delta.parquet"
    pq.write_table(pa.table({"s": ["a" * 100] * 100}), path, use_dictionary=False,
                   column_encoding={"s": "DELTA_BYTE_ARRAY"})
    with pytest.raises(DagsterBentoOutputError, match="DELTA_BYTE_ARRAY.*in s;"):
        DuckDBWarehouse(":memory:").upload([UploadRequest("t", path)], run_id="r")


def test_write_cell_parquet_is_cheap_to_judge(tmp_path):
    """The write cells' helper uses dictionaries only for strings that repeat, so the orchestrator counts those
    without decoding them and reads unique ones plain (no dictionary fallback pages to rebuild)."""
    import pandas as pd

    from dagster_bento.execution.rewrite import _FRAME_HELPER, _HELPERS

    scope: dict = {"_bento_pd": pd}
    exec(_FRAME_HELPER + _HELPERS["parquet"], scope)  # noqa: S102 - the injected setup cell's source
    path = tmp_path / "out.parquet"
    n = 200_000
    scope["_bento_write_parquet"](pd.DataFrame({"segment": [f"s{i % 5}" for i in range(n)],
                                                "name": [f"n{i}" for i in range(n)]}), str(path), "df")
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(0).column(i).has_dictionary_page for i in range(2)] == [True, False]
    [result] = DuckDBWarehouse(":memory:").upload([UploadRequest("t", path)], run_id="r")
    assert result.rows_in_table == n


def test_arrow_dictionary_bomb_is_refused(wh, tmp_path):
    path = tmp_path / "bomb.arrow"
    table = dictionary_bomb(500_000)  # 2 MB of indices standing for 500 MB
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(DagsterBentoOutputError, match="decodes to more than 64 MiB"):
        wh.upload([UploadRequest(_table(wh), path, fmt="arrow", max_decoded_bytes=64 * MiB)], run_id="r")


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_arrow_file_is_refused_unread(tmp_path, codec):
    path = tmp_path / "packed.arrow"
    table = pa.table({"s": ["x" * 1000] * 1000})
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    wh = DuckDBWarehouse(":memory:")
    with pytest.raises(DagsterBentoOutputError, match="compressed buffers"):
        wh.upload([UploadRequest("t", path, fmt="arrow", notebook=NB, cell=2)], run_id="r")
    assert not wh.table_exists("t")


def test_view_typed_arrow_columns_are_refused(tmp_path):
    path = tmp_path / "views.arrow"
    table = pa.table({"s": pa.array(["a", "b"], pa.string_view())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(DagsterBentoOutputError, match="view or run-end encoded columns"):
        DuckDBWarehouse(":memory:").upload([UploadRequest("t", path, fmt="arrow")], run_id="r")


def test_truncated_arrow_footer_is_refused(tmp_path):
    path = tmp_path / "cut.arrow"
    table = pa.table({"a": [1, 2, 3]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    data = path.read_bytes()
    path.write_bytes(data[:-10] + (10**6).to_bytes(4, "little") + b"ARROW1")  # footer length past the start
    with pytest.raises(DagsterBentoOutputError, match="not a valid Arrow IPC file"):
        DuckDBWarehouse(":memory:").upload([UploadRequest("t", path, fmt="arrow")], run_id="r")


def test_csv_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a\n" + "1\n" * 600_000)
    with pytest.raises(DagsterBentoOutputError, match="bytes of CSV"):
        DuckDBWarehouse(":memory:").upload([UploadRequest("t", path, fmt="csv", max_decoded_bytes=MiB)], run_id="r")


# ------------------------------------------------------------------------------------------------
# size on disk and sparse files: judged before a byte is copied out of the run directory


def _job(table: str = "mart.out"):
    cell = types.SimpleNamespace(index=3, table=table, input="df")
    return types.SimpleNamespace(notebook_path=NB, write_cells=[cell])


def _run_dir(tmp_path: Path) -> Path:
    (tmp_path / "nb" / "outputs").mkdir(parents=True)
    (tmp_path / "dest").mkdir()
    return tmp_path / "nb"


def test_sparse_output_is_refused_before_it_is_copied(tmp_path):
    run_dir = _run_dir(tmp_path)
    with open(run_dir / "outputs" / "mart.out.parquet", "wb") as f:
        f.truncate(6 * 1024**3)  # 6 GB long, nothing allocated
    started = time.monotonic()
    with pytest.raises(DagsterBentoOutputError, match="is a sparse file") as info:
        collect_outputs(_job(), run_dir, tmp_path / "dest", "parquet")
    assert time.monotonic() - started < 5 and f"write cell 3 of {NB}" in str(info.value)
    assert list((tmp_path / "dest").iterdir()) == []  # nothing copied


def test_output_larger_than_the_limit_is_refused_before_it_is_copied(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / "outputs" / "mart.out.parquet").write_bytes(os.urandom(3 * MiB))
    with pytest.raises(DagsterBentoOutputError, match=r"3\.0 MiB, more than the 2\.0 MiB.*max_output_mb"):
        collect_outputs(_job(), run_dir, tmp_path / "dest", "parquet", max_bytes=2 * MiB)
    assert list((tmp_path / "dest").iterdir()) == []
    files = collect_outputs(_job(), run_dir, tmp_path / "dest", "parquet", max_bytes=4 * MiB)
    assert files["mart.out"].read_bytes() == (run_dir / "outputs" / "mart.out.parquet").read_bytes()


def test_sparse_csv_sidecar_is_refused_too(tmp_path):
    run_dir = _run_dir(tmp_path)
    (run_dir / "outputs" / "mart.out.csv").write_text("a\n1\n")
    with open(run_dir / "outputs" / "mart.out.csv.schema.json", "wb") as f:
        f.truncate(1024**3)
    with pytest.raises(DagsterBentoOutputError, match="schema.json is a sparse file"):
        collect_outputs(_job(), run_dir, tmp_path / "dest", "csv")


@pytest.mark.kernel
def test_notebook_that_makes_its_output_sparse_is_refused_without_filling_the_disk(tmp_path, clean_run_dirs):  # noqa: F811
    """The real path: the kernel, in its sandbox, stretches its output to 6 GB of holes after the write cell."""
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "sparse", [
        sql_cell("df", "SELECT id FROM raw.types"), write_cell("df", "mart.sparse"),
        code("with open('outputs/mart.sparse.parquet', 'r+b') as f:\n    f.truncate(6 * 1024**3)")])
    free_before = os.statvfs(clean_run_dirs).f_bavail * os.statvfs(clean_run_dirs).f_frsize
    with pytest.raises(DagsterBentoOutputError, match="sparse file") as info:
        run(tmp_path, url)
    assert "notebooks/sparse.ipynb" in str(info.value) and "write cell 1" in str(info.value)
    free_after = os.statvfs(clean_run_dirs).f_bavail * os.statvfs(clean_run_dirs).f_frsize
    assert free_before - free_after < 1024**3
