"""Only the operator weakens isolation: run config (launchpad, GraphQL, --config) may narrow a run,
never choose the sandbox, the warehouse, paths, the pool, lineage or wider limits (issue 10, item 1)."""

import os

import dagster as dg
import pytest

from dagster_bento import build_bento_definitions
from dagster_bento.resources import BentoResource
from tests.nbfactory import add_notebook, code, sql_cell, write_cell, write_policy
from tests.test_execution import clean_run_dirs, query, resource_for, seed_duckdb  # noqa: F401 (fixture)

pytestmark = pytest.mark.kernel


@pytest.fixture
def project(tmp_path):
    url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.a AS SELECT 1 AS x;")
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "probe", [
        sql_cell("df", "SELECT x FROM raw.a"),
        code("""
            import os, time
            time.sleep(float(os.environ.get("BENTO_PROBE_SLEEP", "0")))
            out = df.assign(home=os.environ.get("HOME", "-"))"""),
        write_cell("out", "mart.probe")])
    return tmp_path, url


def launch(project, url, run_config, **resource):
    defs = build_bento_definitions(project_dir=project, warehouse_url=url,
                                   resource=resource_for(project, url, **resource))
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(run_config={"resources": {"bento": {"config": run_config}}},
                                  raise_on_error=False)


def _failure_text(result) -> str:
    return "\n".join(e.event_specific_data.error.to_string() for e in result.all_events
                     if e.is_failure and getattr(e.event_specific_data, "error", None))


def _tables(url):
    return {r[0] for r in query(url, "SELECT schema_name || '.' || table_name FROM duckdb_tables()")}


@pytest.mark.parametrize("field,value,where", [
    ("sandbox", "none", "BENTO_SANDBOX"),
    ("warehouse_url", "duckdb:////tmp/other.duckdb", "BENTO_WAREHOUSE_URL"),
    ("run_root", "/tmp", "run_root"),
    ("artifacts_dir", "/tmp/elsewhere", "artifacts_dir"),
    ("kernel_pool", "/tmp/evil.sock", "BENTO_KERNEL_POOL"),
    ("lineage_url", "http://attacker.invalid/", "BENTO_LINEAGE_URL"),
    ("lineage_transport", "console", "BENTO_LINEAGE_TRANSPORT"),
    ("project_dir", "/tmp", "code location"),
    ("docker_image", "evil:latest", "docker_image"),
    ("data_format", "csv", "data_format"),
    ("timeout_seconds", 10 ** 9, "only shorten"),
    ("memory_limit_mb", 10 ** 7, "only lower"),
    ("run_timeout_cap", 10 ** 9, "not a setting"),
])
def test_run_config_cannot_widen_isolation(project, clean_run_dirs, field, value, where):
    project_dir, url = project
    result = launch(project_dir, url, {field: value})
    assert not result.success
    message = _failure_text(result)
    assert f"'{field}" in message and where in message, message
    assert "nothing ran" in message
    assert "mart.probe" not in _tables(url)  # nothing fetched, executed or written
    assert not (project_dir / "artifacts").exists() or not any((project_dir / "artifacts").rglob("*.ipynb"))


def test_run_config_may_narrow_the_time_limit(project, clean_run_dirs, monkeypatch):
    project_dir, url = project
    monkeypatch.setenv("BENTO_PROBE_SLEEP", "0")  # the sandbox's environment is empty: the notebook never sees it
    ok = launch(project_dir, url, {"html": False})
    assert ok.success and query(url, "SELECT home FROM mart.probe") != [(os.environ.get("HOME"),)]
    slow = add_notebook(project_dir, "slow", [sql_cell("df", "SELECT x FROM raw.a"),
                                              code("import time; time.sleep(30); out = df"),
                                              write_cell("out", "mart.slow")])
    assert slow.exists()
    result = launch(project_dir, url, {"timeout_seconds": 3})
    assert not result.success
    text = _failure_text(result)
    assert "3 s" in text or "3s" in text or "timed out" in text.lower(), text


def test_resource_in_definitions_has_only_narrowing_config(project):
    project_dir, url = project
    defs = build_bento_definitions(project_dir=project_dir, warehouse_url=url)
    resource_def = defs.resources["bento"]
    assert isinstance(resource_def, dg.ResourceDefinition)
    assert set(resource_def.config_schema.config_type.fields) == {"timeout_seconds", "memory_limit_mb", "html"}
    # A BentoResource handed to Definitions directly is a hardcoded resource: no config at all.
    assert not isinstance(BentoResource(project_dir=str(project_dir), warehouse_url=url), dg.ConfigurableResource)


def test_narrowing_keeps_the_lower_of_spec_and_run_config(tmp_path):
    operator = BentoResource(project_dir=str(tmp_path), warehouse_url="duckdb:///x", timeout_seconds=600,
                             memory_limit_mb=2048)
    narrowed = operator.narrowed({"timeout_seconds": 60, "memory_limit_mb": 1024})
    config = narrowed.sandbox_config()
    assert (config.timeout_s, config.memory_limit_mb) == (60, 1024)
    with pytest.raises(Exception, match="only shorten"):
        operator.narrowed({"timeout_seconds": 601})
