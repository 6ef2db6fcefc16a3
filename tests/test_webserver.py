"""The asset graph as the UI sees it: a real dagster-webserver queried over GraphQL."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.nbfactory import REPO

pytestmark = pytest.mark.webserver

QUERY = """{ assetNodes { assetKey { path } dependencyKeys { path } isMaterializable groupName kinds
  owners { ... on UserAssetOwner { email } ... on TeamAssetOwner { team } }
  tags { key value } } }"""
STATUS = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    # Runs launched over GraphQL start at once (no daemon needed to dequeue them).
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_coordinator:\n"
                                       "  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    exe = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen([str(exe), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                entries = _post(port, STATUS)["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries
                    break
            except OSError:
                pass
            assert time.time() < deadline, "dagster-webserver did not load the code location in 120 s"
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_ui_shows_assets_and_edges(webserver):
    nodes = {"/".join(n["assetKey"]["path"]): n for n in _post(webserver, QUERY)["assetNodes"]}
    deps = {k: sorted("/".join(d["path"]) for d in n["dependencyKeys"]) for k, n in nodes.items()}
    assert deps["analytics/region_summary"] == ["analytics/nation_revenue", "ref/nations", "ref/regions"]
    assert deps["analytics/customer_revenue"] == ["crm/customers", "ref/nations", "sales/lineitem", "sales/orders"]
    assert deps["analytics/top_customers_building"] == ["analytics/customer_revenue"]
    assert not nodes["sales/orders"]["isMaterializable"] and nodes["analytics/region_summary"]["isMaterializable"]
    cr = nodes["analytics/customer_revenue"]
    assert {"jupyter", "sql", "duckdb"} <= set(cr["kinds"])
    assert {o.get("email") or o.get("team") for o in cr["owners"]} == {"alice@example.com", "analytics"}
    assert {"key": "dagster_bento/zone", "value": "ANALYTICS"} in cr["tags"]


def test_dagster_definitions_validate(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    exe = Path(sys.executable).with_name("dagster")
    out = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO,
                         env={**os.environ, "DAGSTER_HOME": str(tmp_path)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All code locations passed validation" in out.stdout + out.stderr


LAUNCH = """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""
LOGS = """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection { events { __typename
  ... on MessageEvent { message } ... on ExecutionStepFailureEvent { error { message
  causes { message } } } } } } }"""


def _post_vars(port: int, query: str, variables: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                 data=json.dumps({"query": query, "variables": variables}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["data"]


def test_launchpad_run_config_cannot_turn_the_sandbox_off(webserver):
    """The launchpad / GraphQL path: `sandbox: none` in run config fails the run before anything runs,
    naming the field and where the operator sets it (issue 10, item 1)."""
    params = {"selector": {"repositoryLocationName": "dagster_bento_example", "repositoryName": "__repository__",
                           "jobName": "__ASSET_JOB",
                           "assetSelection": [{"path": ["analytics", "region_summary"]}]},
              "runConfigData": {"resources": {"bento": {"config": {"sandbox": "none"}}}}}
    launched = _post_vars(webserver, LAUNCH, {"p": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.time() + 120
    while (status := _post_vars(webserver, RUN, {"id": run_id})["runOrError"]["status"]) not in (
            "FAILURE", "SUCCESS", "CANCELED"):
        assert time.time() < deadline, status
        time.sleep(0.5)
    assert status == "FAILURE"
    events = _post_vars(webserver, LOGS, {"id": run_id})["logsForRun"]["events"]
    text = json.dumps(events)
    assert "'sandbox' is an operator setting" in text and "BENTO_SANDBOX" in text, text[-3000:]
    assert not any(e["__typename"] == "MaterializationEvent" for e in events)
    assert "fetched" not in text.lower()
