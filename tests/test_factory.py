"""Definition shape: keys, edges, metadata, kinds, owners, zones and code versions."""

import dagster as dg
import pytest

from dagster_bento import BentoTableProps, DagsterBentoTranslator, build_bento_definitions
from dagster_bento.project import load_project
from tests.nbfactory import REPO, add_notebook, params, sql_cell, write_cell, write_policy

K = dg.AssetKey


@pytest.fixture
def graph():
    defs = build_bento_definitions(project_dir=REPO)
    return defs.resolve_asset_graph()


def parents(graph, key):
    return sorted(k.to_user_string() for k in graph.get(K(key.split("/"))).parent_keys)


def test_example_project_graph(graph):
    assert sorted(k.to_user_string() for k in graph.external_asset_keys) == [
        "crm/customers", "ref/nations", "ref/regions", "sales/lineitem", "sales/orders"]
    assert sorted(k.to_user_string() for k in graph.materializable_asset_keys) == [
        "analytics/customer_revenue", "analytics/daily_shipments", "analytics/nation_revenue",
        "analytics/region_summary", "analytics/top_customers_automobile", "analytics/top_customers_building"]
    # one notebook joins two sources into two outputs
    assert parents(graph, "analytics/customer_revenue") == [
        "crm/customers", "ref/nations", "sales/lineitem", "sales/orders"]
    assert parents(graph, "analytics/nation_revenue") == parents(graph, "analytics/customer_revenue")
    # a downstream notebook reads another's output: a direct edge
    assert parents(graph, "analytics/region_summary") == ["analytics/nation_revenue", "ref/nations", "ref/regions"]
    # one parameterised notebook, two schedule entries, two assets
    assert parents(graph, "analytics/top_customers_building") == ["analytics/customer_revenue"]
    assert parents(graph, "analytics/top_customers_automobile") == ["analytics/customer_revenue"]


def test_output_metadata(graph):
    node = graph.get(K(["analytics", "customer_revenue"]))
    md = node.metadata
    assert md["dagster_bento/notebook"] == "notebooks/customer_revenue.ipynb"
    assert md["dagster_bento/zone"] == "ANALYTICS"
    assert md["dagster/table_name"] == "analytics.customer_revenue"
    assert "FROM sales.orders AS o" in md["dagster_bento/sql"].value
    assert md["dagster_bento/purpose_zones"].data == {"label": ["ANALYTICS", "CRM", "SALES"], "origin": "computed"}
    assert set(node.owners) == {"alice@example.com", "team:analytics"}
    assert set(node.kinds) == {"jupyter", "sql", "duckdb"}
    assert node.tags["dagster_bento/zone"] == "ANALYTICS" and "bento_zone/CRM" in node.tags
    assert node.code_version and len(node.code_version) == 16
    lineage = md["dagster_bento/sql_column_lineage"].data
    assert lineage["customers"]["nation"] == ["ref.nations.n_name"]


def test_external_metadata(graph):
    node = graph.get(K(["crm", "customers"]))
    assert node.metadata["dagster_bento/purpose_zones"].data == {"label": ["CRM"], "origin": "declared"}
    assert node.group_name == "warehouse_sources" and "duckdb" in node.kinds


def test_schedules_and_sensors():
    defs = build_bento_definitions(project_dir=REPO)
    names = {s.name: s for s in defs.schedules}
    assert names["bento_customer_revenue"].cron_schedule == "0 6 * * *"
    assert names["bento_customer_revenue"].execution_timezone == "Europe/London"
    assert "bento_top_customers_building" in names and "bento_daily_shipments" in names
    assert sorted(s.name for s in defs.sensors) == ["bento_landings", "bento_notify_owners", "bento_upstream_landed"]
    graph = defs.resolve_asset_graph()
    cond = graph.get(K(["analytics", "region_summary"])).automation_condition
    assert cond is not None and cond.get_label() == "all_upstream_landed"
    assert graph.get(K(["analytics", "customer_revenue"])).automation_condition is None


def test_code_version_changes_with_notebook_and_spec(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    nb = add_notebook(tmp_path, "nb", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x")])

    def version():
        defs = build_bento_definitions(project_dir=tmp_path)
        return defs.resolve_asset_graph().get(K(["mart", "x"])).code_version

    v1 = version()
    assert version() == v1
    add_notebook(tmp_path, "nb", [sql_cell("df", "SELECT *, 1 AS y FROM raw.a"), write_cell("df", "mart.x")])
    v2 = version()
    spec = nb.with_name("nb.bento.yaml")
    spec.write_text(spec.read_text().replace("owner@example.com", "other@example.com"))
    v3 = version()
    assert len({v1, v2, v3}) == 3


def test_every_table_in_the_query_is_read(tmp_path):
    write_policy(tmp_path, {t: ["ANALYTICS"] for t in ["s.a", "s.b", "h.c", "u.d", "main.e", "core.cte_body"]})
    add_notebook(tmp_path, "nb", [sql_cell("df", """
        WITH recent AS (SELECT * FROM core.cte_body)
        SELECT a.x, b.y FROM s.a AS a JOIN s.b AS b ON a.id = b.id
        WHERE a.z IN (SELECT z FROM h.c) AND EXISTS (SELECT 1 FROM recent)
        UNION ALL SELECT x, y FROM u.d UNION ALL SELECT x, y FROM e"""), write_cell("df", "mart.x")])
    project = load_project(tmp_path, use_cache=False)
    assert project.jobs[0].tables_read == ("core.cte_body", "h.c", "main.e", "s.a", "s.b", "u.d")


def test_custom_translator_changes_asset_and_edges(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "one", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x")])
    add_notebook(tmp_path, "two", [sql_cell("df", "SELECT * FROM mart.x"), write_cell("df", "mart.y")])

    class Prefixed(DagsterBentoTranslator):
        def get_asset_spec(self, props: BentoTableProps) -> dg.AssetSpec:
            spec = super().get_asset_spec(props)
            return spec.replace_attributes(key=spec.key.with_prefix("wh"))

    graph = build_bento_definitions(project_dir=tmp_path, translator=Prefixed()).resolve_asset_graph()
    assert [k.to_user_string() for k in graph.get(K(["wh", "mart", "y"])).parent_keys] == ["wh/mart/x"]
    assert [k.to_user_string() for k in graph.get(K(["wh", "mart", "x"])).parent_keys] == ["wh/raw/a"]


def test_external_declared_once_for_many_readers(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    for i in range(3):
        add_notebook(tmp_path, f"nb{i}", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", f"mart.x{i}")])
    defs = build_bento_definitions(project_dir=tmp_path)
    graph = defs.resolve_asset_graph()
    assert [k.to_user_string() for k in graph.external_asset_keys] == ["raw/a"]
    assert len(graph.get(K(["raw", "a"])).child_keys) == 3


def test_parse_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "nb", [params("n = 1"), sql_cell("df", "SELECT * FROM raw.a LIMIT {{ n }}"),
                                  write_cell("df", "mart.x")])
    load_project(tmp_path)
    assert (tmp_path / ".bento" / "cache" / "parse.pickle").exists()
    import dagster_bento.project as proj

    calls = []
    real = proj._load_one
    monkeypatch.setattr(proj, "_load_one", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    load_project(tmp_path)
    assert calls == []  # served from the cache
    add_notebook(tmp_path, "nb", [params("n = 2"), sql_cell("df", "SELECT * FROM raw.a LIMIT {{ n }}"),
                                  write_cell("df", "mart.x")])
    assert "LIMIT 2" in load_project(tmp_path).jobs[0].sql_cells[0].sql
    assert calls == ["notebooks/nb.ipynb"]


def test_typed_magic_only_and_metadata_only_cells_are_equivalent(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "magic", [sql_cell("df", "SELECT * FROM raw.a", meta=False),
                                     write_cell("df", "mart.m", "append", meta=False)])
    add_notebook(tmp_path, "meta", [sql_cell("df", "SELECT * FROM raw.a", magic=False),
                                    write_cell("df", "mart.n", "append", magic=False)])
    jobs = {j.name: j for j in load_project(tmp_path, use_cache=False).jobs}
    assert jobs["magic"].sql_cells[0].sql == jobs["meta"].sql_cells[0].sql == "SELECT * FROM raw.a"
    assert jobs["magic"].write_cells[0].mode == jobs["meta"].write_cells[0].mode == "append"



def test_introspected_columns_on_assets_and_lineage_through_star(tmp_path):
    import duckdb

    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("CREATE SCHEMA raw; CREATE TABLE raw.a (id BIGINT, name VARCHAR); "
                "CREATE SCHEMA mart; CREATE TABLE mart.x (id BIGINT, name VARCHAR)")
    con.close()
    (tmp_path / "bento.yaml").write_text(f"warehouse_url: duckdb:///{tmp_path / 'wh.duckdb'}\nintrospect_schema: true\n")
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "nb", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x")])
    graph = build_bento_definitions(project_dir=tmp_path).resolve_asset_graph()
    source = graph.get(K(["raw", "a"])).metadata["dagster/column_schema"]
    assert [(c.name, c.type) for c in source.columns] == [("id", "BIGINT"), ("name", "VARCHAR")]
    out = graph.get(K(["mart", "x"])).metadata
    assert [c.name for c in out["dagster/column_schema"].columns] == ["id", "name"]
    assert out["dagster_bento/sql_column_lineage"].data == {"df": {"id": ["raw.a.id"], "name": ["raw.a.name"]}}


def test_warehouse_url_precedence(tmp_path, monkeypatch):
    from dagster_bento.assets import resolve_warehouse_url

    monkeypatch.delenv("BENTO_WAREHOUSE_URL", raising=False)
    assert resolve_warehouse_url(tmp_path, None, None) == f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    assert resolve_warehouse_url(tmp_path, "duckdb:///wh/x.duckdb", None) == f"duckdb:///{tmp_path / 'wh/x.duckdb'}"
    monkeypatch.setenv("BENTO_WAREHOUSE_URL", "postgresql://env@h/db")
    assert resolve_warehouse_url(tmp_path, "duckdb:///x.duckdb", None) == "postgresql://env@h/db"
    assert resolve_warehouse_url(tmp_path, "duckdb:///x.duckdb", "postgresql://arg@h/db") == "postgresql://arg@h/db"
