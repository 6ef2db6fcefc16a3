"""The IPython extension (`%load_ext dagster_bento`): interactive cells behave as the scheduled run.

Most behaviours run in an in-process IPython shell (fast); the guarantees named in the issue run in a
real kernel started by nbclient: the same dataframes (values and dtypes) as the scheduled run of the
same notebook, on DuckDB and PostgreSQL, and the zone and BENTO004 refusals inside Jupyter.
"""

import copy
import uuid
from pathlib import Path

import nbformat
import psycopg
import pytest
from nbclient import NotebookClient

from dagster_bento.ipython import dev_table_for, find_project_dir
from tests.nbfactory import add_notebook, code, params, sql_cell, write_cell, write_policy
from tests.test_execution import PG_URL, clean_run_dirs, query, run, seed_duckdb  # noqa: F401 (fixture)

EXT = "%load_ext dagster_bento.ipython"
FINGERPRINT = ('print(df.dtypes.astype(str).to_dict())\n'
               'print(df.astype(object).to_dict("list"))')


# ------------------------------------------------------------------------------------------------
# in-process shell


@pytest.fixture
def shell(monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("BENTO_WAREHOUSE_URL", raising=False)
    sh = InteractiveShell.instance()
    sh.run_cell("%reload_ext dagster_bento.ipython")
    yield sh
    sh.run_cell("%unload_ext dagster_bento.ipython")
    for name in ("df", "out", "lim", "ds", "region", "__session__", "__vsc_ipynb_file__"):
        sh.user_ns.pop(name, None)


def cell(sh, source):
    """Run one cell; return (result value, error or None)."""
    result = sh.run_cell(source)
    return result.result, result.error_before_exec or result.error_in_exec


def ok(sh, source):
    value, err = cell(sh, source)
    assert err is None, err
    return value


def project(tmp_path: Path, tables=None, **spec) -> tuple[Path, str, Path]:
    url = seed_duckdb(tmp_path / "wh.duckdb", """
        CREATE SCHEMA raw; CREATE SCHEMA crm;
        CREATE TABLE raw.orders AS SELECT * FROM (VALUES (1, 'emea', 5.5::DOUBLE, DATE '2026-01-01'),
          (2, 'apac', 7.25::DOUBLE, DATE '2026-01-02'), (3, 'emea', NULL, NULL)) AS t(id, region, amount, day);
        CREATE TABLE crm.customers AS SELECT 1 AS id, 'Ada' AS name;""")
    (tmp_path / "bento.yaml").write_text("warehouse_url: duckdb:///wh.duckdb\n")
    write_policy(tmp_path, tables or {"raw.orders": ["ANALYTICS"], "crm.customers": ["CRM"], "mart.orders_out": ["ANALYTICS"],
                                      "mart.declared": ["PUBLIC"]},
                 zones={"ANALYTICS": {"permits": ["ANALYTICS"]}, "PUBLIC": {"permits": "*"},
                        "CRM": {"permits": ["CRM"]}})
    nb = add_notebook(tmp_path, "orders", [
        params("region = 'emea'"),
        sql_cell("df", "SELECT id, amount FROM raw.orders WHERE region = '{{ region }}'"),
        code("out = df"),
        write_cell("out", "mart.orders_out"),
    ], **spec)
    return tmp_path, url, nb


def test_load_ext_dagster_bento_registers_the_magics():
    from IPython.core.interactiveshell import InteractiveShell

    sh = InteractiveShell.instance()
    result = sh.run_cell("%load_ext dagster_bento")
    try:
        assert result.error_in_exec is None and result.error_before_exec is None
        assert "bento_sql" in sh.magics_manager.magics["cell"] and "bento_write" in sh.magics_manager.magics["line"]
    finally:
        sh.run_cell("%unload_ext dagster_bento")


def test_find_project_dir(tmp_path):
    root, _url, nb = project(tmp_path)
    assert find_project_dir(nb.parent) == root
    assert find_project_dir(root / "notebooks") == root
    lone = tmp_path / "elsewhere" / "deep"
    lone.mkdir(parents=True)
    assert find_project_dir(lone) == root  # upwards
    assert find_project_dir(Path("/")) is None


def test_sql_renders_namespace_parameters_and_reads_with_the_runs_reader(tmp_path, shell, monkeypatch):
    root, _url, nb = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))  # what Jupyter sets for the kernel
    ok(shell, "region = 'apac'")
    ok(shell, "%%bento_sql df\nSELECT id, amount FROM raw.orders WHERE region = '{{ region }}'")
    df = shell.user_ns["df"]
    assert df["id"].tolist() == [2]
    assert [str(t) for t in df.dtypes] == ["int32[pyarrow]", "double[pyarrow]"]  # the run's pyarrow dtypes
    magics = shell.magics_manager.registry["BentoMagics"]
    assert magics.last_sql.tables == ("raw.orders",)
    assert "region = 'apac'" in magics.last_sql.sql


def test_ds_is_today_unless_set(tmp_path, shell, monkeypatch):
    import datetime as dt

    root, _url, _nb = project(tmp_path)
    monkeypatch.chdir(root)
    ok(shell, "%bento_zone ANALYTICS")
    ok(shell, "%%bento_sql df\nSELECT '{{ ds }}' AS ds")
    assert shell.user_ns["df"]["ds"].tolist() == [dt.datetime.now(dt.timezone.utc).date().isoformat()]
    ok(shell, "ds = '2026-01-02'")
    ok(shell, "%%bento_sql df\nSELECT id FROM raw.orders WHERE day = DATE '{{ ds }}'")
    assert shell.user_ns["df"]["id"].tolist() == [2]


def test_zone_refusal_has_the_runs_pz_message(tmp_path, shell, monkeypatch):
    from dagster_bento import zones

    root, _url, nb = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))
    _value, err = cell(shell, "%%bento_sql df\nSELECT * FROM crm.customers")
    assert type(err).__name__ == "DagsterBentoPolicyError"
    policy = zones.load_policy(root / "purpose_zones.yaml")
    expected = zones.check_read(policy, notebook="orders", notebook_path="notebooks/orders.ipynb",
                                notebook_zone="ANALYTICS", cell=None, table="crm.customers",
                                label=frozenset({"CRM"}), phase="pre_fetch")
    assert str(err) == expected.message()  # the message a scheduled run's pre-fetch check gives
    assert "df" not in shell.user_ns


def test_draft_needs_a_zone_and_unknown_tables_fail_closed(tmp_path, shell, monkeypatch):
    root, _url, _nb = project(tmp_path)
    monkeypatch.chdir(root)
    _value, err = cell(shell, "%%bento_sql df\nSELECT * FROM raw.orders")
    assert "no purpose zone is known" in str(err) and "%bento_zone" in str(err)
    ok(shell, "%bento_zone CRM")
    _value, err = cell(shell, "%%bento_sql df\nSELECT * FROM raw.orders")
    assert "PZ001" in str(err) and "zone CRM" in str(err)
    _value, err = cell(shell, "%%bento_sql df\nSELECT * FROM raw.nowhere")
    assert "PZ003" in str(err)
    ok(shell, "%%bento_sql df\nSELECT * FROM crm.customers")


def test_bento004_is_refused_before_the_warehouse(tmp_path, shell, monkeypatch):
    root, url, _nb = project(tmp_path)
    monkeypatch.chdir(root)
    ok(shell, "%bento_zone ANALYTICS")
    for sql in ("DELETE FROM raw.orders", "SELECT 1; SELECT 2", "SELECT * FROM read_csv('/etc/passwd')"):
        _value, err = cell(shell, f"%%bento_sql df\n{sql}")
        assert "BENTO004" in str(err), (sql, err)
        assert "cannot run this cell" in str(err)
    assert query(url, "SELECT count(*) FROM raw.orders") == [(3,)]
    _value, err = cell(shell, "%%bento_sql df\nSELECT * FROM raw.orders WHERE region = '{{ nowhere }}'")
    assert "BENTO005" in str(err) and "nowhere" in str(err)
    _value, err = cell(shell, "%%bento_sql 1df\nSELECT 1")
    assert "BENTO003" in str(err)


def test_metadata_form_cells_run_from_the_saved_notebook(tmp_path, shell, monkeypatch):
    root, _url, _nb = project(tmp_path)
    nb = add_notebook(root, "meta_form", [
        sql_cell("df", "SELECT id FROM raw.orders ORDER BY id", magic=False),
        code("out = df"),
        write_cell("out", "mart.meta_out", magic=False),
    ])
    saved = nbformat.read(nb, as_version=4)
    saved.cells[2].source = "# written by dagster-bento"
    nbformat.write(saved, nb)
    monkeypatch.chdir(root / "notebooks")
    ok(shell, f"%bento_notebook {nb}")
    ok(shell, "SELECT id FROM raw.orders ORDER BY id")  # no magic line: its metadata says it is a SQL cell
    assert shell.user_ns["df"]["id"].tolist() == [1, 2, 3]
    ok(shell, "out = df")
    preview = ok(shell, "# written by dagster-bento")
    assert preview.table == "mart.meta_out"
    # an ordinary cell is untouched
    assert ok(shell, "1 + 1") == 2


def test_write_preview_validates_and_writes_nothing(tmp_path, shell, monkeypatch):
    root, url, nb = project(tmp_path)
    duck = url.removeprefix("duckdb:///")
    import duckdb

    con = duckdb.connect(duck)
    con.execute("CREATE SCHEMA mart; CREATE TABLE mart.orders_out AS SELECT 9 AS id, 1.0::DOUBLE AS amount")
    con.close()
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))
    ok(shell, "%%bento_sql df\nSELECT id, amount FROM raw.orders")
    ok(shell, "out = df")
    preview = ok(shell, "%bento_write out mart.orders_out")
    assert (preview.table, preview.mode, preview.rows) == ("mart.orders_out", "overwrite", 3)
    assert preview.existing_rows == 1 and preview.change == "1 rows replaced by 3 rows (same columns)"
    assert preview.label == ("ANALYTICS",)
    assert "nothing was written" in preview.text()
    ok(shell, "out = df.assign(extra=1)")
    preview = ok(shell, "%bento_write out mart.orders_out")
    assert "columns differ (added extra)" in preview.change
    # append must fit the table: the upload's own column check and message
    _value, err = cell(shell, "%bento_write out mart.orders_out append")
    assert "does not fit table mart.orders_out (mode 'append')" in str(err) and "extra" in str(err)
    preview = ok(shell, "%bento_write out mart.brand_new")
    assert preview.change == "new table: created with 3 rows"
    # index handling is the run writer's: row numbers dropped, a named index kept, any other refused
    ok(shell, "import pandas as pd; out = df.iloc[[2, 0]]")
    preview = ok(shell, "%bento_write out mart.brand_new")
    assert "not written" in preview.index_note and [n for n, _t in preview.columns] == ["id", "amount"]
    assert preview.rows == 2
    ok(shell, "out = df.set_index('id')")
    preview = ok(shell, "%bento_write out mart.brand_new")
    assert preview.index_note == "the index is written as column(s) id" and preview.rows == 3
    ok(shell, "out = df.set_index(pd.Index(['a', 'b', 'c']))")
    _value, err = cell(shell, "%bento_write out mart.brand_new")
    assert "unnamed index" in str(err)
    # not a dataframe / duplicate columns / reserved schema
    ok(shell, "out = [1, 2]")
    _value, err = cell(shell, "%bento_write out mart.brand_new")
    assert "not a pandas DataFrame" in str(err) and "TypeError" in str(err)
    ok(shell, "import pandas as pd; out = pd.DataFrame([[1, 2]], columns=['a', 'A'])")
    _value, err = cell(shell, "%bento_write out mart.brand_new")
    assert "duplicate column names" in str(err)
    _value, err = cell(shell, "%bento_write out bento_meta.table_labels")
    assert "BENTO003" in str(err) and "reserved schema" in str(err)
    assert query(url, "SELECT count(*) FROM mart.orders_out") == [(1,)]
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'brand_new'") == [(0,)]


def test_write_zone_rule_and_partition(tmp_path, shell, monkeypatch):
    root, _url, _nb = project(tmp_path)
    add_notebook(root, "daily", [params("x = 1"), sql_cell("df", "SELECT 1 AS a"),
                                 write_cell("df", "mart.daily", "overwrite_partition")],
                 partitioned="daily", start_date="2026-01-01")
    monkeypatch.chdir(root / "notebooks")
    ok(shell, f"%bento_notebook {root / 'notebooks' / 'orders.ipynb'}")
    ok(shell, "%%bento_sql df\nSELECT id, amount FROM raw.orders")
    ok(shell, "out = df")
    _value, err = cell(shell, "%bento_write out mart.declared")  # declared PUBLIC, data needs ANALYTICS
    assert type(err).__name__ == "DagsterBentoPolicyError" and "PZ004" in str(err)
    _value, err = cell(shell, "%bento_write out mart.orders_out overwrite_partition")
    assert "BENTO003" in str(err) and "partitioned: daily" in str(err)
    ok(shell, f"%bento_notebook {root / 'notebooks' / 'daily.ipynb'}")
    ok(shell, "ds = '2026-01-05'")
    _value, err = cell(shell, "%bento_write out mart.daily overwrite_partition")
    assert "no such column" in str(err) and "ds" in str(err)
    ok(shell, "out = df.assign(ds='2026-01-05')")
    preview = ok(shell, "%bento_write out mart.daily overwrite_partition")
    assert preview.partition == ("ds", "2026-01-05", 0)


def test_to_dev_schema_writes_a_labelled_scratch_table_only(tmp_path, shell, monkeypatch):
    root, url, nb = project(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))
    ok(shell, "%%bento_sql df\nSELECT id, amount FROM raw.orders")
    ok(shell, "out = df")
    preview = ok(shell, "%bento_write out mart.orders_out --to-dev-schema")
    dev = dev_table_for("mart.orders_out")
    assert preview.written_to == dev and dev.startswith("dev_") and dev.endswith(".mart_orders_out")
    assert query(url, f"SELECT count(*) FROM {dev}") == [(3,)]
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'orders_out' "
                      "AND table_schema = 'mart'") == [(0,)]
    labels = query(url, f"SELECT zones FROM bento_meta.table_labels WHERE table_name = '{dev}'")
    assert labels and "ANALYTICS" in str(labels[0][0])
    _value, err = cell(shell, "%bento_write out mart.orders_out --to-production")
    assert "unknown option" in str(err)


# ------------------------------------------------------------------------------------------------
# real kernels


def _interactive_copy(nb_path: Path, extra_first: list | None = None) -> nbformat.NotebookNode:
    nb = nbformat.read(nb_path, as_version=4)
    nb = copy.deepcopy(nb)
    nb.cells.insert(0, nbformat.v4.new_code_cell(EXT))
    for i, c in enumerate(extra_first or []):
        nb.cells.insert(1 + i, c)
    return nb


def _execute(nb, cwd: Path, notebook: Path, monkeypatch, allow_errors=False):
    monkeypatch.setenv("JPY_SESSION_NAME", str(notebook))  # what Jupyter's server sets for the kernel
    client = NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def _stream(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _fingerprint_from(nb) -> str:
    for c in nb.cells:
        src = c.source
        meta = c.get("metadata", {}).get("bento", {})
        if FINGERPRINT in src or FINGERPRINT in meta.get("original_source", ""):
            return _stream(c)
    raise AssertionError("no fingerprint cell")


@pytest.mark.kernel
def test_kernel_gives_the_scheduled_runs_dataframes_duckdb(tmp_path, monkeypatch, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")  # the typed table of the execution tests (ints, tz, NULLs, '')
    (tmp_path / "bento.yaml").write_text("warehouse_url: duckdb:///wh.duckdb\n")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    nb = add_notebook(tmp_path, "types", [
        params("low = 0"),
        sql_cell("df", "SELECT * FROM raw.types WHERE id > {{ low }} ORDER BY id"),
        code(FINGERPRINT),
        write_cell("df", "mart.types_copy"),
    ])
    result = run(tmp_path, url)
    assert result.success
    kept = next((tmp_path / "artifacts" / "types").glob("*.ipynb"))
    scheduled = _fingerprint_from(nbformat.read(kept, as_version=4))
    landings = query(url, "SELECT count(*) FROM bento_meta.landings")
    executed = _execute(_interactive_copy(nb), tmp_path / "notebooks", nb, monkeypatch)
    interactive = _fingerprint_from(executed)
    assert "int64[pyarrow]" in interactive and "timestamp[us, tz=UTC][pyarrow]" in interactive
    assert interactive == scheduled  # same values, same dtypes
    preview = _stream(executed.cells[-1]) + "".join(
        o.get("data", {}).get("text/plain", "") for o in executed.cells[-1].outputs)
    assert "mart.types_copy (mode overwrite)" in preview and "3 rows replaced by 3 rows (same columns)" in preview
    assert query(url, "SELECT count(*) FROM bento_meta.landings") == landings  # the preview wrote nothing


@pytest.mark.kernel
def test_kernel_refuses_what_the_schedule_refuses(tmp_path, monkeypatch):
    root, url, nb = project(tmp_path)
    draft = add_notebook(root, "draft", [code("%bento_zone ANALYTICS"),
                                         sql_cell("a", "SELECT * FROM crm.customers"),
                                         sql_cell("b", "DELETE FROM raw.orders"),
                                         sql_cell("c", "SELECT count(*) AS n FROM raw.orders")], draft=True)
    executed = _execute(_interactive_copy(draft), root / "notebooks", draft, monkeypatch, allow_errors=True)
    errors = [next((o for o in c.outputs if o.output_type == "error"), None) for c in executed.cells]
    assert errors[0] is None and errors[1] is None
    assert errors[2].ename == "DagsterBentoPolicyError"
    assert errors[2].evalue.startswith("[PZ001 READ_NOT_PERMITTED] pre_fetch: notebook 'draft' (zone ANALYTICS) "
                                       "may not read 'crm.customers'")
    assert errors[3] is not None and "BENTO004" in errors[3].evalue
    assert not any("Traceback" in line or "site-packages" in line for line in errors[2].traceback)  # message only
    assert errors[4] is None and "bento_sql: 1 rows" in _stream(executed.cells[4])
    assert query(url, "SELECT count(*) FROM raw.orders") == [(3,)]


@pytest.mark.kernel
@pytest.mark.postgres
def test_kernel_gives_the_scheduled_runs_dataframes_postgres(tmp_path, monkeypatch, clean_run_dirs):
    schema = f"bento_ip_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"""CREATE SCHEMA {schema};
            CREATE TABLE {schema}.t (id bigint, amount numeric(12, 2), name text, at timestamptz, d date, ok boolean);
            INSERT INTO {schema}.t VALUES (1, 10.25, 'Ada', '2024-03-10 01:30:00.123456-05', '2024-03-10', true),
                                          (2, NULL, '', NULL, NULL, NULL);""")
    try:
        (tmp_path / "bento.yaml").write_text(f"warehouse_url: {PG_URL}\n")
        write_policy(tmp_path, {f"{schema}.t": ["ANALYTICS"]}, default_schema="public")
        nb = add_notebook(tmp_path, "pg", [sql_cell("df", f"SELECT * FROM {schema}.t ORDER BY id"),
                                           code(FINGERPRINT), write_cell("df", f"{schema}.t_copy")])
        assert run(tmp_path, PG_URL).success
        kept = next((tmp_path / "artifacts" / "pg").glob("*.ipynb"))
        scheduled = _fingerprint_from(nbformat.read(kept, as_version=4))
        executed = _execute(_interactive_copy(nb), tmp_path / "notebooks", nb, monkeypatch)
        assert _fingerprint_from(executed) == scheduled
        assert "'amount': 'double[pyarrow]'" in scheduled  # numeric(12,2): exact as a double (rewrite._bento_frame)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")
            con.execute(f"DELETE FROM bento_meta.table_labels WHERE table_name LIKE '{schema}.%'")





def test_strip_session_magics_for_the_scheduled_rewrite():
    from dagster_bento.ipython import strip_session_magics

    src = "%load_ext dagster_bento\nx = 1\nif x:\n    %bento_zone ANALYTICS\n%load_ext other\n%bento_zoned"
    out = strip_session_magics(src)
    assert out.splitlines() == [
        "pass  # %load_ext dagster_bento  (interactive only: dagster-bento)", "x = 1", "if x:",
        "    pass  # %bento_zone ANALYTICS  (interactive only: dagster-bento)", "%load_ext other", "%bento_zoned"]
    compile(out.replace("%load_ext other\n%bento_zoned", ""), "cell", "exec")
    assert strip_session_magics("%reload_ext dagster_bento.ipython").startswith("pass  #")
    assert strip_session_magics("y = 2") == "y = 2"


@pytest.mark.kernel
def test_a_notebook_loading_the_extension_runs_on_schedule(tmp_path, clean_run_dirs):
    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "ext", [code("%load_ext dagster_bento"), sql_cell("df", "SELECT * FROM raw.types"),
                                   write_cell("df", "mart.ext")])
    assert run(tmp_path, url, raise_on_error=False).success


def test_write_label_counts_every_sql_cell_of_the_saved_notebook(tmp_path, shell, monkeypatch):
    """A run's output label is the union of everything the notebook reads, so the preview's is too, even
    for SQL cells not run in this session."""
    url = seed_duckdb(tmp_path / "wh.duckdb", """CREATE SCHEMA raw;
        CREATE TABLE raw.orders AS SELECT 1 AS id; CREATE TABLE raw.sales AS SELECT 2 AS id;""")
    (tmp_path / "bento.yaml").write_text("warehouse_url: duckdb:///wh.duckdb\n")
    write_policy(tmp_path, {"raw.orders": ["ANALYTICS"], "raw.sales": ["SALES"], "mart.out": ["ANALYTICS"]},
                 zones={"ANALYTICS": {"permits": ["ANALYTICS"]}, "SALES": {"permits": ["SALES", "ANALYTICS"]}})
    nb = add_notebook(tmp_path, "two", [sql_cell("a", "SELECT id FROM raw.orders"),
                                        sql_cell("b", "SELECT id FROM raw.sales"), write_cell("a", "mart.out")])
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))
    ok(shell, "%%bento_sql a\nSELECT id FROM raw.orders")
    _value, err = cell(shell, "%bento_write a mart.out")
    assert "PZ004" in str(err) and "missing {SALES}" in str(err)
    assert query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'out'") == [(0,)]


def test_a_view_is_judged_by_what_it_reads_interactively_too(tmp_path, shell, monkeypatch):
    """A view labelled ANALYTICS over a CRM table is refused in Jupyter as a run refuses it (planner's base
    tables checked before any row is read)."""
    import duckdb

    root, url, nb = project(tmp_path, tables={"raw.orders": ["ANALYTICS"], "crm.customers": ["CRM"],
                                              "raw.leak": ["ANALYTICS"], "mart.orders_out": ["ANALYTICS"]})
    con = duckdb.connect(str(root / "wh.duckdb"))
    con.execute("CREATE VIEW raw.leak AS SELECT * FROM crm.customers")
    con.close()
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.setenv("JPY_SESSION_NAME", str(nb))
    _value, err = cell(shell, "%%bento_sql df\nSELECT * FROM raw.leak")
    assert type(err).__name__ == "DagsterBentoPolicyError" and "crm.customers" in str(err), err
    assert "df" not in shell.user_ns
