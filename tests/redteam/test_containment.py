"""One broken notebook never stops the others (issue 10, item 5): it is contained at definitions load,
visible with its problems, unscheduled; strict loading is an opt-in; `check` still fails."""

import subprocess
import sys

import dagster as dg
import pytest

from dagster_bento import DagsterBentoProjectError, build_bento_definitions
from tests.nbfactory import add_notebook, code, params, sql_cell, write_cell, write_policy


@pytest.fixture
def project(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"], "hr.salaries": ["HR"]},
                 zones={"ANALYTICS": {"permits": ["ANALYTICS"]}, "HR": {"permits": ["HR"]}})
    add_notebook(tmp_path, "good", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.good")],
                 schedules=[{"name": "good", "cron": "0 6 * * *"}])
    return tmp_path


def _broken(project):
    (project / "notebooks" / "truncated.ipynb").write_text('{"cells": [')  # a draft, not even JSON
    add_notebook(project, "leaky", [sql_cell("df", "SELECT * FROM hr.salaries"), write_cell("df", "mart.leak")],
                 schedules=[{"name": "leaky", "cron": "0 7 * * *"}])  # PZ violation
    add_notebook(project, "sidefx", [sql_cell("df", "SELECT * FROM raw.a"),
                                     code("import socket\nsocket.create_connection(('10.0.0.1', 80))"),
                                     write_cell("df", "mart.sidefx")],
                 schedules=[{"name": "sidefx", "cron": "0 8 * * *"}])  # schedulability error
    add_notebook(project, "nowrite", [sql_cell("df", "SELECT * FROM raw.a")])  # no write cell
    add_notebook(project, "meta", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "bento_meta.labels")])


def test_broken_notebooks_are_contained(project):
    _broken(project)
    defs = build_bento_definitions(project_dir=project, warehouse_url=f"duckdb:///{project}/wh.duckdb")
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "mart/good" in keys and not {"mart/leak", "mart/sidefx", "mart/nowrite"} & keys
    broken = {k for k in keys if k.startswith("bento_broken/")}
    assert broken == {"bento_broken/notebooks/truncated", "bento_broken/notebooks/leaky",
                      "bento_broken/notebooks/sidefx", "bento_broken/notebooks/nowrite",
                      "bento_broken/notebooks/meta"}
    leaky = graph.get(dg.AssetKey(["bento_broken", "notebooks", "leaky"]))
    assert "PZ" in leaky.description and "notebooks/leaky.ipynb [cell 0]" in leaky.description
    assert "BENTO008" in graph.get(dg.AssetKey(["bento_broken", "notebooks", "nowrite"])).description
    assert "reserved schema" in graph.get(dg.AssetKey(["bento_broken", "notebooks", "meta"])).description
    # Only the good notebook is scheduled.
    scheduled = {s.name for s in defs.schedules}
    assert len(scheduled) == 1
    (schedule,) = defs.schedules
    assert "good" in str(schedule.job.selection) or "mart" in str(schedule.job.selection)
    # Materializing a placeholder fails with the same problems, and runs no notebook.
    result = dg.materialize([a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                             and dg.AssetKey(["bento_broken", "notebooks", "leaky"]) in a.keys],
                            raise_on_error=False)
    assert not result.success


def test_project_file_errors_break_every_notebook(project):
    (project / "purpose_zones.yaml").write_text("zones: [not, a, mapping\n")  # policy unreadable: fail closed
    defs = build_bento_definitions(project_dir=project, warehouse_url=f"duckdb:///{project}/wh.duckdb")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"bento_broken/project"} and not list(defs.schedules)


def test_strict_loading_is_an_opt_in(project):
    _broken(project)
    (project / "bento.yaml").write_text("strict_loading: true\n")
    with pytest.raises(DagsterBentoProjectError, match="notebooks/leaky.ipynb"):
        build_bento_definitions(project_dir=project, warehouse_url=f"duckdb:///{project}/wh.duckdb")


def test_check_still_fails(project):
    _broken(project)
    out = subprocess.run([sys.executable, "-m", "dagster_bento.cli", "check", str(project)], capture_output=True,
                         text=True)
    assert out.returncode == 1 and "notebooks/truncated.ipynb" in out.stdout + out.stderr


def test_template_bombs_are_refused_quickly(project):
    add_notebook(project, "bomb", [params("x = 'a'"), sql_cell("df", "SELECT '{{ x * 100000000 }}' AS s FROM raw.a"),
                                   write_cell("df", "mart.bomb")],
                 schedules=[{"name": "bomb", "parameters": {}}])
    add_notebook(project, "loops", [params("xs = []"), sql_cell("df", "SELECT 1 AS s FROM raw.a WHERE 1 IN ({% for a in xs %}"
                                                   "{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}"
                                                   "{% endfor %}1)"), write_cell("df", "mart.loops")],
                 schedules=[{"name": "loops", "parameters": {"xs": list(range(1000))}}])
    # loops over a string's characters or a mapping's keys with an empty body output nothing: the
    # budget counts iterations, not output (an independent review made `check` take 16 s with this)
    add_notebook(project, "chars", [params("s = '" + "x" * 600 + "'"),
                                    sql_cell("df", "SELECT 1 AS one FROM raw.a {% for a in s %}{% for b in s %}"
                                                   "{% for c in s %}{% endfor %}{% endfor %}{% endfor %}"),
                                    write_cell("df", "mart.chars")])
    add_notebook(project, "sliced", [params("xs = [1]"),
                                     sql_cell("df", "SELECT 1 AS one FROM raw.a {% for a in xs[:] %}{% endfor %}"),
                                     write_cell("df", "mart.sliced")])
    from dagster_bento import load_project

    problems = [p for p in load_project(project, use_cache=False).problems if p.code == "BENTO005"]
    assert {p.notebook for p in problems} == {"notebooks/bomb.ipynb", "notebooks/loops.ipynb",
                                              "notebooks/chars.ipynb", "notebooks/sliced.ipynb"}
    assert all("template refused" in p.message for p in problems)


@pytest.mark.parametrize("spec", [
    {"owners": ["bob"]},  # not an e-mail or team:<name>
    {"tags": {"bad key!": "x"}},
    {"tags": {"k": "a value with spaces"}},
])
def test_what_dagster_would_refuse_is_a_spec_problem_and_contained(project, spec):
    add_notebook(project, "odd", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.odd")], **spec)
    from dagster_bento import load_project

    (problem,) = [p for p in load_project(project, use_cache=False).errors]
    assert problem.code == "BENTO009" and "not valid in Dagster" in problem.message
    defs = build_bento_definitions(project_dir=project, warehouse_url=f"duckdb:///{project}/wh.duckdb")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "mart/good" in keys and "bento_broken/notebooks/odd" in keys and "mart/odd" not in keys


def test_a_notebook_dagster_refuses_at_definition_time_is_contained(project):
    """The class, not the examples: whatever Dagster refuses while building one notebook's assets (here a
    translator that raises for one table) leaves that notebook out as a placeholder."""
    from dagster_bento import DagsterBentoTranslator

    add_notebook(project, "other", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.other")])

    class Picky(DagsterBentoTranslator):
        def get_asset_spec(self, props):
            if props.table == "mart.other":
                raise ValueError("no such key")
            return super().get_asset_spec(props)

    defs = build_bento_definitions(project_dir=project, warehouse_url=f"duckdb:///{project}/wh.duckdb",
                                   translator=Picky())
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "mart/good" in keys and "bento_broken/notebooks/other" in keys
    with pytest.raises(DagsterBentoProjectError, match="no such key"):
        build_bento_definitions(project_dir=project, warehouse_url=f"duckdb:///{project}/wh.duckdb",
                                translator=Picky(), raise_on_problems=True)
