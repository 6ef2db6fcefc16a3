"""Every static error names the notebook file and cell and says what to do; all are reported together."""

import json
import subprocess
import sys

import pytest

from dagster_bento import DagsterBentoProjectError, build_bento_definitions, load_project
from dagster_bento.errors import PROJECT_PROBLEMS_HEADER
from tests.nbfactory import add_notebook, code, params, raw_json, sql_cell, write_cell, write_policy


@pytest.fixture
def project(tmp_path):
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"], "raw.b": ["ANALYTICS"]})
    return tmp_path


def only(project_dir, code_):
    found = [p for p in load_project(project_dir, use_cache=False).problems if p.code == code_]
    assert found, f"expected a {code_} problem"
    return found


def test_malformed_json_names_the_file(project):
    raw_json(project / "notebooks" / "broken.ipynb", '{"cells": [ {"cell_type": "code", ')
    (p,) = only(project, "BENTO001")
    assert p.notebook == "notebooks/broken.ipynb" and p.cell is None
    assert "not valid JSON (line 1" in p.message and "re-save" in p.message


def test_not_nbformat4(project):
    raw_json(project / "notebooks" / "old.ipynb", json.dumps({"nbformat": 3, "worksheets": []}))
    (p,) = only(project, "BENTO001")
    assert "nbformat 4" in p.message


def test_metadata_and_magic_disagree(project):
    cell = sql_cell("orders", "SELECT * FROM raw.a")
    cell.metadata["bento"]["output"] = "other_name"
    add_notebook(project, "disagree", [cell, write_cell("orders", "mart.x")])
    (p,) = only(project, "BENTO002")
    assert str(p).startswith("notebooks/disagree.ipynb [cell 0]: BENTO002")
    assert "'other_name'" in p.message and "'orders'" in p.message and "agree" in p.message


def test_write_metadata_and_magic_disagree_on_table(project):
    cell = write_cell("df", "mart.x")
    cell.metadata["bento"]["table"] = "mart.y"
    add_notebook(project, "wdis", [sql_cell("df", "SELECT 1 AS x FROM raw.a"), cell])
    (p,) = only(project, "BENTO002")
    assert p.cell == 1 and "mart.y" in p.message


def test_sql_that_does_not_parse(project):
    add_notebook(project, "badsql", [sql_cell("df", "SELEC x FROM raw.a WHERE"), write_cell("df", "mart.x")])
    (p,) = only(project, "BENTO004")
    assert str(p).startswith("notebooks/badsql.ipynb [cell 0]")
    assert "does not parse" in p.message and "fix the query" in p.message


def test_dml_in_sql_cell_is_refused(project):
    add_notebook(project, "dml", [sql_cell("df", "DELETE FROM raw.a"), write_cell("df", "mart.x")])
    (p,) = only(project, "BENTO004")
    assert "DELETE" in p.message and "write cell" in p.message


def test_unknown_parameter_in_placeholder(project):
    add_notebook(project, "unk", [params("region = 'emea'"),
                                  sql_cell("df", "SELECT * FROM raw.a WHERE r = '{{ regoin }}'"),
                                  write_cell("df", "mart.x")])
    (p,) = only(project, "BENTO005")
    assert str(p).startswith("notebooks/unk.ipynb [cell 1]")
    assert "regoin" in p.message and "parameters cell" in p.message and "region" in p.message


def test_unknown_parameter_in_write_table(project):
    add_notebook(project, "unkw", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x_{{ nope }}")])
    (p,) = only(project, "BENTO005")
    assert p.cell == 1 and "nope" in p.message


def test_schedule_parameter_not_declared(project):
    add_notebook(project, "undecl", [params("region = 'emea'"), sql_cell("df", "SELECT * FROM raw.a"),
                                     write_cell("df", "mart.x")],
                 schedules=[{"name": "undecl", "parameters": {"regoin": "apac"}}])
    (p,) = only(project, "BENTO009")
    assert p.cell == 0 and "regoin" in p.message


def test_two_schedules_writing_the_same_table(project):
    add_notebook(project, "w1", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.shared")])
    add_notebook(project, "w2", [sql_cell("df", "SELECT * FROM raw.b"), code("out = df"),
                                 write_cell("out", "mart.shared")])
    (p,) = only(project, "BENTO006")
    assert str(p).startswith("notebooks/w2.ipynb [cell 2]")
    assert "mart.shared" in p.message and "'w1'" in p.message and p.table == "mart.shared"


def test_parameterised_table_names_give_distinct_writers(project):
    add_notebook(project, "perreg", [params("region = 'emea'"), sql_cell("df", "SELECT * FROM raw.a"),
                                     write_cell("df", "mart.sales_{{ region }}")],
                 schedules=[{"name": "emea", "parameters": {"region": "emea"}},
                            {"name": "apac", "parameters": {"region": "apac"}}])
    project_ = load_project(project, use_cache=False)
    assert not project_.errors
    assert sorted(t for j in project_.jobs for t in j.tables_written) == ["mart.sales_apac", "mart.sales_emea"]


def test_dependency_cycle(project):
    add_notebook(project, "c1", [sql_cell("df", "SELECT * FROM mart.y"), write_cell("df", "mart.x")])
    add_notebook(project, "c2", [sql_cell("df", "SELECT * FROM mart.x"), write_cell("df", "mart.y")])
    (p,) = only(project, "BENTO007")
    assert p.notebook in {"notebooks/c1.ipynb", "notebooks/c2.ipynb"} and p.cell == 0
    assert "c1 -> c2 -> c1" in p.message or "c2 -> c1 -> c2" in p.message


def test_write_input_never_produced(project):
    add_notebook(project, "noin", [sql_cell("df", "SELECT * FROM raw.a"), code("result = df.head()"),
                                   write_cell("reslt", "mart.x")])
    (p,) = only(project, "BENTO008")
    assert str(p).startswith("notebooks/noin.ipynb [cell 2]") and "'reslt'" in p.message


def test_write_input_produced_only_later(project):
    add_notebook(project, "late", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("out", "mart.x"),
                                   code("out = df")])
    (p,) = only(project, "BENTO008")
    assert "later, in cell 2" in p.message


def test_spec_problems_are_named(project):
    nb = add_notebook(project, "nospec", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("df", "mart.x")],
                      owners=[], schedules=[{"name": "x", "cron": "61 * * * *", "timezone": "Mars/Base"}])
    messages = [p.message for p in only(project, "BENTO009")]
    assert any("'owners' is required" in m for m in messages)
    assert any("cron '61 * * * *'" in m for m in messages)
    assert any("Mars/Base" in m for m in messages)
    assert all(m.startswith("notebooks/nospec.bento.yaml") for m in messages), nb


def test_draft_notebook_is_listed_not_scheduled(project):
    add_notebook(project, "draft", [sql_cell("df", "SELECT * FROM raw.a")], draft=True)
    proj = load_project(project, use_cache=False)
    assert proj.drafts == ("notebooks/draft.ipynb",) and not proj.jobs
    assert [p.severity for p in proj.problems if p.code == "BENTO000"] == ["warning"]


def test_all_problems_reported_together(project):
    raw_json(project / "notebooks" / "broken.ipynb", "{nope")
    add_notebook(project, "badsql", [sql_cell("df", "SELECT FROM WHERE ("), write_cell("df", "mart.x")])
    add_notebook(project, "noin", [sql_cell("df", "SELECT * FROM raw.a"), write_cell("zzz", "mart.z")])
    with pytest.raises(DagsterBentoProjectError) as info:
        build_bento_definitions(project_dir=project, raise_on_problems=True)  # strict loading
    text = str(info.value)
    assert text.startswith(PROJECT_PROBLEMS_HEADER)
    for expected in ("notebooks/broken.ipynb: BENTO001", "notebooks/badsql.ipynb [cell 0]: BENTO004",
                     "notebooks/noin.ipynb [cell 1]: BENTO008"):
        assert expected in text
    assert "Traceback" not in text


def test_check_cli_json_contract(project):
    add_notebook(project, "badsql", [sql_cell("df", "SELECT FROM WHERE ("), write_cell("df", "mart.x")])
    out = subprocess.run([sys.executable, "-m", "dagster_bento.cli", "check", str(project), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    (p,) = [p for p in report["problems"] if p["code"] == "BENTO004"]
    assert set(p) >= {"code", "notebook", "cell", "table", "message"}
    assert p["notebook"] == "notebooks/badsql.ipynb" and p["cell"] == 0


SIDE_EFFECTS = {
    "import socket\ns = socket.create_connection(('example.com', 80))": "BENTO-E101",
    "import requests\nrequests.get('https://example.com')": "BENTO-E101",
    "from urllib.request import urlopen\nurlopen('http://x')": "BENTO-E101",
    "import httpx": "BENTO-E101",
    "import subprocess\nsubprocess.run(['ls'])": "BENTO-E102",
    "import os\nos.system('ls')": "BENTO-E102",
    "!curl http://example.com": "BENTO-E103",
    "%%bash\necho hi": "BENTO-E103",
    "import psycopg\npsycopg.connect('dbname=test')": "BENTO-E104",
    "import duckdb": "BENTO-E104",
    "import pandas as pd\npd.read_sql('select 1', 'sqlite://')": "BENTO-E105",
    "df.to_csv('/etc/evil.csv')": "BENTO-E106",
    "open('../outside.txt', 'w').write('x')": "BENTO-E106",
}


def test_schedulability_rejects_each_side_effect_in_a_notebook(project):
    cells = [sql_cell("df", "SELECT * FROM raw.a")] + [code(src) for src in SIDE_EFFECTS]
    add_notebook(project, "effects", cells + [write_cell("df", "mart.x")])
    found = {p.cell: p for p in load_project(project, use_cache=False).problems if p.code.startswith("BENTO-E")}
    for index, (src, code_) in enumerate(SIDE_EFFECTS.items(), start=1):
        assert index in found, f"cell {index} ({src!r}) was not rejected"
        assert found[index].code == code_, (src, found[index])
        assert found[index].severity == "error" and found[index].notebook == "notebooks/effects.ipynb"


def test_reviewed_exemption_accepts_the_cell(project):
    add_notebook(project, "fx", [sql_cell("df", "SELECT * FROM raw.a"), code("import requests"),
                                 write_cell("df", "mart.x")],
                 exemptions=[{"rule": "network", "reason": "reads the public FX API", "cells": [1]}])
    assert not load_project(project, use_cache=False).errors


def test_example_project_is_clean():
    from tests.nbfactory import REPO

    proj = load_project(REPO, use_cache=False)
    assert proj.errors == []
    assert [p.code for p in proj.problems] == ["BENTO000"]  # the draft notebook
