"""Step 6: time- and event-based runs.

* ``cron`` entries: one Dagster schedule per distinct (cron, timezone, partitioning) — not one job per
  notebook, which costs ~50 ms and ~0.3 MB per job at load (dagster-1.13-verified §2). Each tick
  yields one `RunRequest` per schedule entry, selecting that entry's assets.
* ``trigger: upstream_landed`` entries: an `AutomationCondition` that is true once *every* upstream
  table has landed since the notebook was last requested, evaluated by an explicit, running
  automation sensor; a landing sensor turns rows of ``bento_meta.landings`` into materializations of
  the upstream (external) assets, which is what Dagster needs to see a table change.
"""

import datetime as dt
import functools
import hashlib
import json
import operator
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from dagster_bento.errors import DagsterBentoError
from dagster_bento.project import BentoProject
from dagster_bento.redact import redact_text, redact_url
from dagster_bento.spec import BentoJob
from dagster_bento.translator import META

AC = dg.AutomationCondition


def all_deps_landed(dep_keys: Sequence[dg.AssetKey]) -> dg.AutomationCondition:
    """True once every dep was updated since this asset was last requested (not just any dep)."""
    if not dep_keys:
        return AC.on_missing()
    per_dep = [AC.asset_matches(k, AC.newly_updated()).since(AC.newly_requested()) for k in dep_keys]
    return (functools.reduce(operator.and_, per_dep) & ~AC.in_progress() & ~AC.any_deps_in_progress()
            ).with_label("all_upstream_landed")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")


class BentoAutomation:
    def __init__(self, project: BentoProject):
        self.project = project

    @functools.cache  # noqa: B019 -- one instance per Definitions build
    def _daily(self, start_date: str, timezone: str) -> dg.DailyPartitionsDefinition:
        return dg.DailyPartitionsDefinition(start_date=start_date, timezone=timezone)

    def partitions_def(self, job: BentoJob) -> dg.PartitionsDefinition | None:
        if job.spec.partitioned != "daily" or not job.spec.start_date:
            return None
        return self._daily(job.spec.start_date, job.entry.timezone)

    def condition(self, job: BentoJob, upstream: Sequence[dg.AssetKey]) -> dg.AutomationCondition | None:
        if job.entry.trigger == "upstream_landed":
            return all_deps_landed(upstream)
        return None

    def definitions(self, multi_assets: Sequence[dg.AssetsDefinition], externals: Sequence[dg.AssetSpec],
                    warehouse_url: str) -> dict[str, list[Any]]:
        by_job = {a.op.name: a for a in multi_assets}
        schedules = self._schedules(by_job)
        sensors: list[Any] = [notify_owners_on_failure]
        if any(j.entry.trigger == "upstream_landed" for j in self.project.jobs):
            keys = {str(spec.metadata["dagster/table_name"]): spec.key for spec in externals}
            sensors.append(landing_sensor(warehouse_url=warehouse_url, external_keys=keys))
            sensors.append(dg.AutomationConditionSensorDefinition(
                "bento_upstream_landed", target=dg.AssetSelection.all(),
                default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
                description="Runs notebooks with 'trigger: upstream_landed' once all their upstream tables landed."))
        return {"schedules": schedules, "sensors": sensors}

    def _schedules(self, by_job: Mapping[str, dg.AssetsDefinition]) -> list[dg.ScheduleDefinition]:
        groups: dict[tuple[str, str, str | None], list[BentoJob]] = {}
        for job in self.project.jobs:
            if job.entry.cron and job.name in by_job:
                part = job.spec.start_date if job.spec.partitioned else None
                groups.setdefault((job.entry.cron, job.entry.timezone, part), []).append(job)
        return [self._schedule(cron, tz, part, jobs, by_job) for (cron, tz, part), jobs in sorted(groups.items())]

    def _schedule(self, cron: str, tz: str, partitioned: str | None, jobs: list[BentoJob],
                  by_job: Mapping[str, dg.AssetsDefinition]) -> dg.ScheduleDefinition:
        # one entry: named after it; several: a readable slug plus a hash, so distinct crons never collide
        digest = hashlib.sha256(f"{cron}|{tz}|{partitioned}".encode()).hexdigest()[:8]
        name = "bento_" + (jobs[0].name if len(jobs) == 1 else f"{_slug(cron)}_{_slug(tz)}_{digest}")
        selection = dg.AssetSelection.assets(*[by_job[j.name] for j in jobs])
        asset_job = dg.define_asset_job(f"{name}_job", selection=selection, tags={f"{META}/trigger": "cron"})
        keys = {j.name: sorted(by_job[j.name].keys, key=lambda k: k.to_user_string()) for j in jobs}

        @dg.schedule(name=name, cron_schedule=cron, execution_timezone=tz, job=asset_job,
                     default_status=dg.DefaultScheduleStatus.RUNNING,
                     description=f"Runs {', '.join(j.name for j in jobs)} at '{cron}' ({tz}).")
        def _tick(context: dg.ScheduleEvaluationContext):
            when = context.scheduled_execution_time or dt.datetime.now(zoneinfo.ZoneInfo(tz))
            partition = None
            if partitioned:
                # the last complete day in the schedule's time zone
                partition = (when.astimezone(zoneinfo.ZoneInfo(tz)).date() - dt.timedelta(days=1)).isoformat()
                if partition < partitioned:
                    return dg.SkipReason(f"{partition} is before start_date {partitioned}")
            return [dg.RunRequest(run_key=f"{j.name}:{when.isoformat()}", asset_selection=keys[j.name],
                                  partition_key=partition,
                                  tags={f"{META}/schedule": j.name, f"{META}/trigger": "cron"})
                    for j in jobs]

        return _tick


def landing_sensor(*, warehouse_url: str, external_keys: Mapping[str, dg.AssetKey],
                   minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    """Turn landings of upstream tables (rows of ``bento_meta.landings``) into materializations of their
    external assets, which is what `all_deps_landed` and Dagster's UI see. Loaders outside Dagster
    record a landing with ``INSERT INTO bento_meta.landings (table_name, landed_at, run_id, rows)``."""
    tables = sorted(external_keys)

    @dg.sensor(name="bento_landings", minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Polls bento_meta.landings for {len(tables)} upstream tables.")
    def _landings(context: dg.SensorEvaluationContext):
        from dagster_bento.warehouse import warehouse_from_url

        seen = landing_cursor(context.cursor)
        try:
            warehouse = warehouse_from_url(warehouse_url)
            try:
                landed = warehouse.last_modified(tables)
            finally:
                warehouse.close()
        except Exception as err:  # noqa: BLE001 -- the driver's message may quote the URL
            raise DagsterBentoError(f"bento_landings could not read the warehouse: {redact_text(str(err))}") from None
        events = []
        for table in tables:
            when = landed.get(table)
            if when and when != seen.get(table):
                events.append(dg.AssetMaterialization(
                    external_keys[table], description=f"{table} landed at {when}",
                    metadata={"landed_at": when, "dagster/table_name": table,
                              f"{META}/source": "bento_meta.landings"}))
                seen[table] = when
        if not events:
            return dg.SkipReason(f"no new landings among {len(tables)} upstream tables")
        return dg.SensorResult(asset_events=events, cursor=json.dumps(seen, sort_keys=True))

    return _landings


def landing_cursor(cursor: str | None) -> dict[str, str]:
    try:
        return json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:
        return {}


# ---------------------------------------------------------------------------------------------
# failure notifications: a failed run notifies the owners of the schedule's assets

NOTIFIER_KEY = "bento_notifier"


class BentoNotifier(dg.ConfigurableResource):
    """Where failure notices go: e-mail over SMTP to the owners that are addresses, and/or a JSON POST
    (Slack-compatible ``text`` field) to a webhook. Configured in ``bento.yaml`` under ``notifications``."""

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    sender: str = "dagster-bento@localhost"
    webhook_url: str | None = None
    fallback_recipients: list[str] = []
    webserver_url: str | None = None  # to link the run, e.g. http://dagster.internal:3000

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "BentoNotifier":
        import os

        config = dict(config or {})
        password_env = config.pop("smtp_password_env", None)
        if password_env:
            config["smtp_password"] = os.environ.get(password_env)
        if "from" in config:
            config["sender"] = config.pop("from")
        if "fallback" in config:
            config["fallback_recipients"] = config.pop("fallback")
        return cls(**config)

    def send(self, *, to: Sequence[str], subject: str, body: str, log: Any = None) -> list[str]:
        """Send the notice on every configured channel; returns what was done (for the sensor's log)."""
        done = []
        emails = sorted({o for o in to if "@" in o} | set(self.fallback_recipients))
        if self.smtp_host and emails:
            self._mail(emails, subject, body)
            done.append(f"mailed {', '.join(emails)}")
        if self.webhook_url:
            self._post({"text": f"{subject}\n{body}", "subject": subject, "owners": sorted(to)})
            done.append(f"posted to {redact_url(self.webhook_url, secret_path=True)}")
        if not done and log is not None:
            log.warning(f"no notification channel configured (bento.yaml: notifications); not sent: {subject}")
        return done

    def _mail(self, to: Sequence[str], subject: str, body: str) -> None:
        import smtplib
        from email.message import EmailMessage

        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.sender, ", ".join(to), subject
        msg.set_content(body)
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=30) as smtp:
            if self.smtp_starttls:
                smtp.starttls()
            if self.smtp_user:
                smtp.login(self.smtp_user, self.smtp_password or "")
            smtp.send_message(msg)

    def _post(self, payload: Mapping[str, Any]) -> None:
        import urllib.request

        req = urllib.request.Request(self.webhook_url or "", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()


def failure_notice(context: dg.RunFailureSensorContext) -> tuple[list[str], str, str]:
    """(owners, subject, body) for a failed run: owners of every asset the run selected."""
    run = context.dagster_run
    graph = context.repository_def.asset_graph
    keys = sorted(run.asset_selection or [], key=lambda k: k.to_user_string())
    owners = sorted({o for k in keys if graph.has(k) for o in graph.get(k).owners})
    schedules = sorted({str(graph.get(k).metadata.get(f"{META}/schedule")) for k in keys if graph.has(k)
                        and graph.get(k).metadata.get(f"{META}/schedule")})
    lines = [f"Run {run.run_id} of {', '.join(schedules) or run.job_name} failed.",
             f"Assets: {', '.join(k.to_user_string() for k in keys) or '-'}"]
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        error = data.error if data else None
        cause = (error.cause or error) if error else None
        if cause is not None:
            lines.append(f"Step {event.step_key}: {cause.message.strip()}")
        failure = getattr(data, "user_failure_data", None)
        metadata = failure.metadata if failure and failure.metadata else {}
        cell = metadata.get("failing_cell")
        if cell is not None:
            lines.append(f"Failing cell:\n{getattr(cell, 'value', cell)}")
        notebook = metadata.get("executed_notebook")
        if notebook is not None:
            lines.append(f"Executed notebook: {getattr(notebook, 'value', notebook)}")
        link = metadata.get("executed_notebook_url")
        if link is not None:
            lines.append(f"Executed notebook in the Dagster UI: {getattr(link, 'value', link)}")
    subject = f"[dagster-bento] {', '.join(schedules) or run.job_name} failed (run {run.run_id[:8]})"
    return owners, subject, "\n".join(lines)


NOTIFIED_TAG = f"{META}/owners_notified"


def _bento_keys(context: dg.RunFailureSensorContext) -> list[dg.AssetKey]:
    """The run's assets that are notebook outputs of this code location's project."""
    graph = context.repository_def.asset_graph
    return [k for k in context.dagster_run.asset_selection or []
            if graph.has(k) and graph.get(k).metadata.get(f"{META}/schedule")]


@dg.run_failure_sensor(name="bento_notify_owners", default_status=dg.DefaultSensorStatus.RUNNING,
                       monitor_all_code_locations=True,
                       description="Notifies the owners of a failed notebook run (schedule spec 'owners'), "
                                   "wherever the run was launched from (UI, schedule, `dagster asset "
                                   "materialize -m ...`, `dg launch`), once per run.")
def notify_owners_on_failure(context: dg.RunFailureSensorContext, bento_notifier: BentoNotifier):
    run = context.dagster_run
    if not _bento_keys(context):
        return  # not a run of this project's notebooks
    # Exactly once per run, however many code locations load this project: the first sensor to see the
    # run claims it with a run tag.
    current = context.instance.get_run_by_id(run.run_id)
    if current is not None and current.tags.get(NOTIFIED_TAG):
        context.log.info(f"failure of run {run.run_id} already notified ({current.tags[NOTIFIED_TAG]})")
        return
    context.instance.add_run_tags(run.run_id, {NOTIFIED_TAG: context.repository_def.name})
    owners, subject, body = failure_notice(context)
    if bento_notifier.webserver_url:
        body += f"\n{bento_notifier.webserver_url.rstrip('/')}/runs/{run.run_id}"
    done = bento_notifier.send(to=owners, subject=redact_text(subject), body=redact_text(body), log=context.log)
    context.log.info(f"failure of run {run.run_id}: {'; '.join(done) or 'not sent'}")
