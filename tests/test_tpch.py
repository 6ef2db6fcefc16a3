"""The 22 TPC-H queries as notebooks: each output depends on exactly its query's TPC-H tables."""

import re

import dagster as dg
import pytest

from dagster_bento import build_bento_definitions
from tests.nbfactory import REPO, add_notebook, sql_cell, write_cell, write_policy

# From the TPC-H specification (v3), the tables each query reads.
EXPECTED = {
    1: {"lineitem"}, 2: {"part", "supplier", "partsupp", "nation", "region"},
    3: {"customer", "orders", "lineitem"}, 4: {"orders", "lineitem"},
    5: {"customer", "orders", "lineitem", "supplier", "nation", "region"}, 6: {"lineitem"},
    7: {"supplier", "lineitem", "orders", "customer", "nation"},
    8: {"part", "supplier", "lineitem", "orders", "customer", "nation", "region"},
    9: {"part", "supplier", "lineitem", "partsupp", "orders", "nation"},
    10: {"customer", "orders", "lineitem", "nation"}, 11: {"partsupp", "supplier", "nation"},
    12: {"orders", "lineitem"}, 13: {"customer", "orders"}, 14: {"lineitem", "part"},
    15: {"supplier", "lineitem"}, 16: {"partsupp", "part", "supplier"}, 17: {"lineitem", "part"},
    18: {"customer", "orders", "lineitem"}, 19: {"lineitem", "part"},
    20: {"supplier", "nation", "partsupp", "part", "lineitem"},
    21: {"supplier", "lineitem", "orders", "nation"}, 22: {"customer", "orders"},
}


def tpch_queries() -> dict[int, str]:
    text = (REPO / "data" / "tpch" / "queries.sql").read_text()
    blocks = re.split(r"-{10,}\n-- TPC-H (\d+)\n-{10,}\n", text)
    return {int(blocks[i]): blocks[i + 1].split(";")[0].strip() for i in range(1, len(blocks), 2)}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    project = tmp_path_factory.mktemp("tpch")
    tables = sorted(set().union(*EXPECTED.values()))
    write_policy(project, {f"tpch.{t}": ["ANALYTICS"] for t in tables}, default_schema="tpch")
    queries = tpch_queries()
    assert sorted(queries) == list(range(1, 23))
    for n, sql in queries.items():
        add_notebook(project, f"tpch_q{n:02d}", [sql_cell("result", sql), write_cell("result", f"tpch_out.q{n:02d}")])
    return build_bento_definitions(project_dir=project).resolve_asset_graph()


@pytest.mark.parametrize("n", range(1, 23))
def test_query_reads_exactly_its_tables(graph, n):
    node = graph.get(dg.AssetKey(["tpch_out", f"q{n:02d}"]))
    assert {k.path[-1] for k in node.parent_keys} == EXPECTED[n]
    assert all(k.path[0] == "tpch" for k in node.parent_keys)


def test_every_tpch_table_is_one_external_asset(graph):
    assert {k.to_user_string() for k in graph.external_asset_keys} == {
        f"tpch/{t}" for t in set().union(*EXPECTED.values())}
