"""Schedules, landing sensor, 'all upstream landed' condition and owner notifications on failure."""

import datetime as dt
import http.server
import json
import socket
import threading
import time

import dagster as dg
import pytest
from aiosmtpd.controller import Controller

from dagster_bento import BentoResource, build_bento_definitions
from dagster_bento.automation import BentoNotifier, notify_owners_on_failure
from dagster_bento.warehouse import UploadRequest, warehouse_from_url
from tests.nbfactory import REPO, add_notebook, code, sql_cell, write_cell, write_policy

K = dg.AssetKey


def test_cron_schedule_requests_each_entry():
    defs = build_bento_definitions(project_dir=REPO)
    sched = defs.resolve_schedule_def("bento_top_customers_building")
    when = dt.datetime(2026, 11, 26, 6, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    with dg.instance_for_test() as instance:
        data = sched.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
    (req,) = data.run_requests
    assert req.asset_selection == [K(["analytics", "top_customers_building"])]
    assert req.tags["dagster_bento/schedule"] == "top_customers_building"
    assert req.run_key == f"top_customers_building:{when.isoformat()}"


def test_partitioned_schedule_runs_the_last_complete_day():
    defs = build_bento_definitions(project_dir=REPO)
    sched = defs.resolve_schedule_def("bento_daily_shipments")
    when = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.timezone.utc)
    with dg.instance_for_test() as instance:
        data = sched.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                                             repository_def=defs.get_repository_def()))
    (req,) = data.run_requests
    assert req.partition_key == "2026-11-25"


@pytest.fixture
def landed_project(tmp_path):
    url = f"duckdb:///{tmp_path / 'wh.duckdb'}"
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"], "raw.b": ["ANALYTICS"]})
    add_notebook(tmp_path, "both", [sql_cell("a", "SELECT * FROM raw.a"), sql_cell("b", "SELECT * FROM raw.b"),
                                    code("out = a.merge(b, on='id')"), write_cell("out", "mart.both")],
                 schedules=[{"name": "both", "trigger": "upstream_landed"}])
    return tmp_path, url


def land(url, tmp_path, table):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"{table}.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), path)
    wh = warehouse_from_url(url)
    try:
        wh.upload([UploadRequest(table=table, path=path)], run_id=f"loader-{table}-{time.time()}")
    finally:
        wh.close()


def test_landing_sensor_reports_new_landings_once(landed_project):
    project, url = landed_project
    defs = build_bento_definitions(project_dir=project, warehouse_url=url)
    sensor = defs.resolve_sensor_def("bento_landings")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        first = sensor.evaluate_tick(ctx)
        assert first.asset_events == [] and "no new landings" in first.skip_message
        land(url, project, "raw.a")
        second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert [e.asset_key for e in second.asset_events] == [K(["raw", "a"])]
        third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs,
                                                             cursor=second.cursor))
        assert third.asset_events == []
        land(url, project, "raw.b")
        fourth = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs,
                                                              cursor=second.cursor))
        assert [e.asset_key for e in fourth.asset_events] == [K(["raw", "b"])]


def test_notebook_runs_once_all_upstream_tables_landed(landed_project):
    project, url = landed_project
    defs = build_bento_definitions(project_dir=project, warehouse_url=url)
    with dg.instance_for_test() as instance:
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert result.total_requested == 0
        instance.report_runless_asset_event(dg.AssetMaterialization(K(["raw", "a"])))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0  # only one of two upstream tables landed
        instance.report_runless_asset_event(dg.AssetMaterialization(K(["raw", "b"])))
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 1
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
        assert result.total_requested == 0  # not again until both land again


# ------------------------------------------------------------------------------------------------
# owners are notified on failure: real SMTP receiver and real webhook on loopback


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.kernel
def test_failed_run_notifies_owners_by_mail_and_webhook(tmp_path):
    import duckdb

    db = tmp_path / "wh.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA raw; CREATE TABLE raw.a AS SELECT 1 AS id")
    con.close()
    url = f"duckdb:///{db}"
    write_policy(tmp_path, {"raw.a": ["ANALYTICS"]})
    add_notebook(tmp_path, "fails", [sql_cell("a", "SELECT * FROM raw.a"), code("1 / 0"), write_cell("a", "mart.f")],
                 owners=["alice@example.com", "team:analytics"])
    inbox = _Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received = []
    try:
        notifier = BentoNotifier(smtp_host="127.0.0.1", smtp_port=smtp_port,
                                 sender="bento@example.com",
                                 webhook_url=f"http://127.0.0.1:{hook.server_address[1]}/hook",
                                 webserver_url="http://dagster.example:3000")
        resource = BentoResource(project_dir=str(tmp_path), warehouse_url=url,
                                 artifacts_dir=str(tmp_path / "artifacts"))
        defs = build_bento_definitions(project_dir=tmp_path, warehouse_url=url, resource=resource)
        with dg.instance_for_test() as instance:
            job = defs.resolve_implicit_global_asset_job_def()
            run = job.execute_in_process(instance=instance, raise_on_error=False,
                                         asset_selection=[K(["mart", "f"])])
            assert not run.success
            record = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records[0]
            ctx = dg.build_run_status_sensor_context(
                sensor_name="bento_notify_owners", dagster_event=record.event_log_entry.dagster_event,
                dagster_instance=instance, dagster_run=instance.get_run_by_id(run.run_id),
                resources={"bento_notifier": notifier}, repository_def=defs.get_repository_def(),
            ).for_run_failure()
            notify_owners_on_failure(ctx)
            notify_owners_on_failure(ctx)  # a second location loading the project, or a re-evaluation
            assert instance.get_run_by_id(run.run_id).tags["dagster_bento/owners_notified"]
        deadline = time.time() + 10
        while not inbox.messages and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert len(inbox.messages) == 1, "notified more than once"
        (mail_from, rcpt, content) = inbox.messages[0]
        assert mail_from == "bento@example.com" and rcpt == ["alice@example.com"]
        assert "fails failed" in content and "ZeroDivisionError" in content
        assert "notebooks/fails.ipynb" in content and "Executed notebook:" in content
        assert "Failing cell:" in content and "1 / 0" in content  # the cell as written, from the failure metadata
        assert f"http://dagster.example:3000/runs/{run.run_id}" in content
        (posted,) = _Hook.received
        assert posted["owners"] == ["alice@example.com", "team:analytics"] and "ZeroDivisionError" in posted["text"]
    finally:
        smtp.stop()
        hook.shutdown()


def test_notifier_without_channels_warns():
    class Log:
        messages: list = []

        def warning(self, msg):
            self.messages.append(msg)

    log = Log()
    assert BentoNotifier().send(to=["a@example.com"], subject="s", body="b", log=log) == []
    assert "no notification channel" in log.messages[0]
