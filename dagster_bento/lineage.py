"""OpenLineage run events (START, COMPLETE, FAIL) for every notebook run.

Events are built with ``openlineage-python`` (``event_v2`` / ``facet_v2``) and sent through one of its
transports: ``file`` (JSON lines appended to one file, the default), ``http`` (a Marquez-compatible
endpoint; events are POSTed to ``<url>/api/v1/lineage``), ``console`` (logged) or ``none``.
``OPENLINEAGE_DISABLED=true`` turns every transport off (the client honours it).

Lineage is best effort: building or sending an event never raises. A failure is logged as a warning
on the ``dagster_bento.lineage`` logger and the run carries on.

Facets written:

* job: ``jobType`` (BATCH / DAGSTER_BENTO / NOTEBOOK), ``sql`` (the SQL cells, joined),
  ``sourceCode`` (optional), ``ownership`` (when owners are given) and the custom
  ``dagsterBento_notebook`` (notebook path and zone);
* run: ``nominalTime`` (when given), ``errorMessage`` (FAIL), the custom ``dagsterBento_parameters``
  and ``dagsterBento_zoneCheck`` (purpose-zone violations, blocking or logged); the client adds ``tags``;
* datasets: ``schema``, ``columnLineage`` (outputs), ``outputStatistics`` (outputs, an output facet)
  and the custom ``dagsterBento_purposeZone``.

The JSON schemas of the custom facets live in ``dagster_bento/lineage_facets/``; each facet's
``_schemaURL`` is ``<$id of that file>#/$defs/<FacetClass>``, so events validate offline.
"""

import dataclasses
import datetime as _dt
import enum
import importlib.metadata
import json
import logging
import math
import os
import threading
import types
import uuid
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

import attr
from openlineage.client import OpenLineageClient
from openlineage.client import event_v2 as ol
from openlineage.client import facet_v2
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    error_message_run,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    ownership_job,
    schema_dataset,
    source_code_job,
    sql_job,
)
from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.transport import Transport

from dagster_bento.redact import redact_text, redact_url

log = logging.getLogger("dagster_bento.lineage")

TransportKind = Literal["file", "http", "console", "none"]
TRANSPORTS: tuple[str, ...] = ("file", "http", "console", "none")
DEFAULT_FILE_NAME = "openlineage.jsonl"
HTTP_ENDPOINT = "api/v1/lineage"

INTEGRATION = "DAGSTER_BENTO"
JOB_TYPE = "NOTEBOOK"
PROCESSING_TYPE = "BATCH"
PROGRAMMING_LANGUAGE = "python"

# Custom facet keys (OpenLineage convention: <prefix>_<name>).
NOTEBOOK_FACET = "dagsterBento_notebook"
PARAMETERS_FACET = "dagsterBento_parameters"
ZONE_CHECK_FACET = "dagsterBento_zoneCheck"
PURPOSE_ZONE_FACET = "dagsterBento_purposeZone"

# Where the custom facet schemas live: in the repo (their $id) and in the installed package.
FACET_SCHEMA_BASE_URL = "https://github.com/dagster-bento/dagster-bento/blob/main/dagster_bento/lineage_facets/"
FACET_SCHEMA_DIR = Path(__file__).resolve().parent / "lineage_facets"

# uuid5 namespace for run ids that are not UUIDs (stable: the same run id always maps to the same UUID).
_RUN_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/dagster-bento/dagster-bento/run")
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})

# A run's nominal (scheduled / partition) time: an ISO 8601 string, a datetime, or a date (midnight UTC).
NominalTime = str | _dt.datetime | _dt.date | None


def _package_version() -> str:
    try:
        return importlib.metadata.version("dagster-bento")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


PRODUCER = f"https://github.com/dagster-bento/dagster-bento/tree/{_package_version()}"


# --------------------------------------------------------------------------------------------------
# Configuration and inputs
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LineageConfig:
    """Where lineage events go. ``file_path`` defaults to ``<artifacts_dir>/openlineage.jsonl``
    (see :meth:`with_defaults`); ``url`` is the Marquez base URL for ``http``."""

    transport: TransportKind = "file"
    file_path: str | None = None
    url: str | None = None
    namespace: str = "dagster-bento"  # the job namespace
    timeout_s: float = 5.0
    retries: int = 2  # http only: retries on connection errors and 5xx answers (urllib3 backoff 0.3 s)

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"lineage transport must be one of {', '.join(TRANSPORTS)}, not {self.transport!r}")
        if self.transport == "http":
            if not self.url:
                raise ValueError("lineage transport 'http' needs a url, e.g. http://127.0.0.1:5000")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"lineage url must be an http(s) URL, not {redact_url(self.url)!r}")
        if not self.namespace:
            raise ValueError("lineage namespace must not be empty")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)) \
                or not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ValueError(f"lineage timeout_s must be a positive number, not {self.timeout_s!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"lineage retries must be a non-negative integer, not {self.retries!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LineageConfig":
        """Build from the ``lineage:`` mapping of ``bento.yaml``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown lineage option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def with_defaults(self, artifacts_dir: str | os.PathLike[str]) -> "LineageConfig":
        """This config with ``file_path`` set to ``<artifacts_dir>/openlineage.jsonl`` when it is unset."""
        if self.file_path is not None:
            return self
        return dataclasses.replace(self, file_path=str(Path(artifacts_dir) / DEFAULT_FILE_NAME))


@dataclasses.dataclass(frozen=True)
class LineageDataset:
    """One input or output table of a run.

    ``column_lineage`` maps an output column to the ``(input table, input column)`` pairs it is computed
    from; a pair may carry a third element, the transformation subtype (e.g. ``"AGGREGATION"``). Without
    it the subtype is ``IDENTITY`` when the column comes unchanged from one input column of the same
    name, else ``TRANSFORMATION``. It is emitted for outputs only, as is ``row_count``.
    """

    name: str  # "schema.table"
    columns: tuple[tuple[str, str], ...] = ()  # (name, type) -> schema facet when non-empty
    zones: frozenset[str] | None = None  # purpose-zone label; None = no zone facet
    column_lineage: Mapping[str, Sequence[tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    row_count: int | None = None
    origin: str | None = None  # declared | stored | derived | reclassified; outputs default to "derived"
    derived_from: tuple[str, ...] | None = None  # outputs: defaults to the run's input tables


# --------------------------------------------------------------------------------------------------
# Custom facets
# --------------------------------------------------------------------------------------------------


def _schema_url(name: str) -> str:
    return f"{FACET_SCHEMA_BASE_URL}{name}.json#/$defs/{name}"


@attr.define
class NotebookJobFacet(facet_v2.JobFacet):
    """``dagsterBento_notebook``: the notebook a job runs and its purpose zone."""

    path: str
    zone: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("NotebookJobFacet")


@attr.define
class ParametersRunFacet(facet_v2.RunFacet):
    """``dagsterBento_parameters``: the parameters the run was executed with (JSON values)."""

    parameters: dict[str, Any] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("ParametersRunFacet")


@attr.define
class ZoneCheckRunFacet(facet_v2.RunFacet):
    """``dagsterBento_zoneCheck``: purpose-zone violations of the run (``ZoneViolation.to_dict()``)."""

    blocked: bool
    violations: list[dict[str, Any]] = attr.field(factory=list)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("ZoneCheckRunFacet")


@attr.define
class PurposeZoneDatasetFacet(facet_v2.DatasetFacet):
    """``dagsterBento_purposeZone``: a dataset's zone label as read or written by the run."""

    zones: list[str] = attr.field(factory=list)
    notebookZone: str | None = attr.field(default=None)  # noqa: N815
    derivedFrom: list[str] | None = attr.field(default=None)  # noqa: N815
    origin: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return _schema_url("PurposeZoneDatasetFacet")


CUSTOM_FACETS: Mapping[str, type] = types.MappingProxyType({
    NOTEBOOK_FACET: NotebookJobFacet,
    PARAMETERS_FACET: ParametersRunFacet,
    ZONE_CHECK_FACET: ZoneCheckRunFacet,
    PURPOSE_ZONE_FACET: PurposeZoneDatasetFacet,
})


def custom_facet_schemas() -> dict[str, dict[str, Any]]:
    """The custom facet JSON schemas shipped with the package, keyed by their ``$id``."""
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(FACET_SCHEMA_DIR.glob("*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        schemas[content["$id"]] = content
    return schemas


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def to_run_uuid(run_id: str) -> str:
    """``run_id`` as a canonical UUID string; a run id that is not a UUID maps to a stable uuid5."""
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        return str(uuid.uuid5(_RUN_ID_NAMESPACE, str(run_id)))


def _strip_userinfo(namespace: str) -> str:
    """Never put credentials in lineage: a URL-shaped namespace keeps scheme, host, port and path only
    (``user:password@``, the query — ``?password=``, ``?sslpassword=`` — and the fragment are dropped),
    then anything else that looks like a credential is redacted (:func:`dagster_bento.redact.redact_url`)."""
    if "://" not in namespace:
        return redact_text(namespace)
    # redact first (it finds the '@' that ends a password holding '@', '/', '?' or '#'), then keep the host
    scheme, rest = redact_url(namespace).split("://", 1)
    if "@" in rest:
        at = rest.rfind("@", 0, min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest)))
        rest = rest[at + 1:] if at >= 0 else rest
    for stop in ("?", "#", ";"):
        rest = rest.split(stop, 1)[0]
    return f"{scheme}://{rest}"


def _dialect_of(namespace: str) -> str | None:
    scheme = urlsplit(namespace).scheme.lower() if "://" in namespace else ""
    if not scheme:
        return None
    base = scheme.split("+", 1)[0]
    return "postgres" if base in ("postgres", "postgresql") else base


def _utc_iso(moment: _dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _now() -> str:
    return _utc_iso(_dt.datetime.now(_dt.timezone.utc))


def _nominal_time(value: NominalTime) -> str | None:
    """An RFC 3339 date-time for the nominalTime facet; a date means its midnight UTC."""
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return _utc_iso(value)
    if isinstance(value, _dt.date):
        return _utc_iso(_dt.datetime.combine(value, _dt.time(), tzinfo=_dt.timezone.utc))
    text = str(value).strip()
    try:
        return _utc_iso(_dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        pass
    try:
        return _utc_iso(_dt.datetime.combine(_dt.date.fromisoformat(text), _dt.time(), tzinfo=_dt.timezone.utc))
    except ValueError:
        log.warning("Ignoring nominal time %r for lineage: not an ISO 8601 date or date-time", value)
        return None


def _jsonable(value: Any) -> Any:
    """A JSON-compatible copy of ``value`` (sets become sorted lists, enums their value, unknowns str)."""
    if isinstance(value, enum.Enum):  # before str: ViolationCode(str, Enum) -> "PZ001"
        return _jsonable(value.value)
    if isinstance(value, str):
        return redact_text(value)  # parameters and violation messages may quote a URL
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, _dt.datetime):
        return _utc_iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, os.PathLike)):
        return redact_text(os.fspath(value)) if isinstance(value, os.PathLike) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Set):
        items = [_jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return _jsonable(to_dict() if callable(to_dict) else dataclasses.asdict(value))
    item = getattr(value, "item", None)  # numpy / pandas scalars
    if callable(item):
        try:
            return _jsonable(item())
        except Exception:  # noqa: BLE001
            pass
    return redact_text(str(value))


def _strings(values: Sequence[str] | str) -> tuple[str, ...]:
    """A tuple of strings; a lone string is one value, not a sequence of characters."""
    return (values,) if isinstance(values, str) else tuple(str(v) for v in values)


def _joined_sql(statements: Sequence[str]) -> str:
    parts: list[str] = []
    for statement in statements:
        text = statement.strip()
        if not text:
            continue
        if not text.endswith(";"):
            # a trailing line comment would swallow the terminator: put it on its own line then
            text += "\n;" if "--" in text.rsplit("\n", 1)[-1] else ";"
        parts.append(text)
    return "\n\n".join(parts)


@dataclasses.dataclass
class _RunContext:
    """What START knew about a run, reused by COMPLETE / FAIL when they are not told again."""

    notebook_path: str | None = None
    notebook_zone: str | None = None
    sql: tuple[str, ...] = ()
    sql_dialect: str | None = None
    parameters: Mapping[str, object] = dataclasses.field(default_factory=dict)
    nominal_time: NominalTime = None
    owners: tuple[str, ...] = ()
    source_code: str | None = None


# --------------------------------------------------------------------------------------------------
# Emitter
# --------------------------------------------------------------------------------------------------


class LineageEmitter:
    """Emits START / COMPLETE / FAIL run events for notebook runs. Never raises from an emit."""

    def __init__(self, config: LineageConfig, *, dataset_namespace: str) -> None:
        self.config = config
        self.dataset_namespace = _strip_userinfo(dataset_namespace)
        self._runs_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._runs: dict[str, _RunContext] = {}
        self._client: OpenLineageClient | None = None
        if config.transport == "none":
            return
        try:
            self._client = OpenLineageClient(transport=self._make_transport(config))
        except Exception as exc:  # noqa: BLE001 - lineage must never break the run
            log.warning("OpenLineage lineage is off: could not set up the %r transport: %s", config.transport,
                        redact_text(str(exc)))
            self._client = None

    # ---------------------------------------------------------------- transport

    @staticmethod
    def _make_transport(config: LineageConfig) -> Transport:
        if config.transport == "file":
            if not config.file_path:
                raise ValueError("no file_path configured (LineageConfig.with_defaults(artifacts_dir) sets one)")
            path = config.file_path
            if path.startswith("file://"):
                path = url2pathname(urlsplit(path).path)
            if "://" not in path:
                local = Path(path).expanduser()
                local.parent.mkdir(parents=True, exist_ok=True)
                path = str(local)
            return FileTransport(FileConfig.from_dict({"log_file_path": path, "append": True}))
        if config.transport == "http":
            assert config.url is not None  # checked by LineageConfig
            retry = {
                "total": config.retries,
                "connect": config.retries,
                "read": config.retries,
                "status": config.retries,
                "backoff_factor": 0.3,
                "status_forcelist": [500, 502, 503, 504],
                "allowed_methods": ["HEAD", "POST"],
                "raise_on_status": False,  # a final 5xx then surfaces as an HTTPError with its status
            }
            return HttpTransport(HttpConfig.from_dict({
                "url": config.url.rstrip("/") + "/",
                "endpoint": HTTP_ENDPOINT,
                "timeout": float(config.timeout_s),
                "retry": retry,
            }))
        if config.transport == "console":
            return ConsoleTransport(ConsoleConfig())
        raise ValueError(f"unknown lineage transport {config.transport!r}")

    @property
    def enabled(self) -> bool:
        """False for transport ``none``, a transport that could not be set up, or OPENLINEAGE_DISABLED."""
        return self._client is not None and self._client.transport.kind != "noop"

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close(timeout=self.config.timeout_s)
            except Exception as exc:  # noqa: BLE001
                log.warning("Could not close the OpenLineage client: %s", redact_text(str(exc)))

    def __enter__(self) -> "LineageEmitter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---------------------------------------------------------------- public API

    def start(
        self,
        *,
        run_id: str,
        job_name: str,
        notebook_path: str,
        notebook_zone: str,
        inputs: Sequence[LineageDataset],
        outputs: Sequence[LineageDataset] = (),
        sql: Sequence[str] = (),
        parameters: Mapping[str, object] = _EMPTY,
        nominal_time: NominalTime = None,
        owners: Sequence[str] = (),
        source_code: str | None = None,
        sql_dialect: str | None = None,
    ) -> None:
        """START: the run began reading ``inputs`` (``outputs``: the declared outputs, optional)."""
        context = _RunContext(notebook_path=notebook_path, notebook_zone=notebook_zone, sql=_strings(sql),
                              sql_dialect=sql_dialect, parameters=parameters, nominal_time=nominal_time,
                              owners=_strings(owners), source_code=source_code)
        run_uuid = to_run_uuid(run_id)
        with self._runs_lock:
            self._runs[run_uuid] = context
        self._emit_run_event(ol.RunState.START, run_uuid, job_name, context, inputs, outputs)

    def complete(
        self,
        *,
        run_id: str,
        job_name: str,
        inputs: Sequence[LineageDataset],
        outputs: Sequence[LineageDataset],
        notebook_path: str | None = None,
        notebook_zone: str | None = None,
        sql: Sequence[str] | None = None,
        parameters: Mapping[str, object] | None = None,
        nominal_time: NominalTime = None,
        owners: Sequence[str] | None = None,
        source_code: str | None = None,
        sql_dialect: str | None = None,
        violations: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """COMPLETE: the run wrote ``outputs``. ``violations``: zone violations that were only logged.
        Arguments left as None reuse what :meth:`start` was given for the same run."""
        run_uuid = to_run_uuid(run_id)
        context = self._finish_context(run_uuid, notebook_path, notebook_zone, sql, sql_dialect, parameters,
                                       nominal_time, owners, source_code)
        self._emit_run_event(ol.RunState.COMPLETE, run_uuid, job_name, context, inputs, outputs,
                             violations=violations)

    def fail(
        self,
        *,
        run_id: str,
        job_name: str,
        inputs: Sequence[LineageDataset],
        outputs: Sequence[LineageDataset] = (),
        error_message: str,
        violation: Mapping[str, Any] | None = None,
        stack_trace: str | None = None,
        notebook_path: str | None = None,
        notebook_zone: str | None = None,
        sql: Sequence[str] | None = None,
        parameters: Mapping[str, object] | None = None,
        nominal_time: NominalTime = None,
        owners: Sequence[str] | None = None,
        source_code: str | None = None,
        sql_dialect: str | None = None,
        violations: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """FAIL: the run failed with ``error_message``; ``violation`` is the zone violation that blocked
        it (``ZoneViolation.to_dict()``), ``violations`` any further (e.g. logged) ones."""
        run_uuid = to_run_uuid(run_id)
        context = self._finish_context(run_uuid, notebook_path, notebook_zone, sql, sql_dialect, parameters,
                                       nominal_time, owners, source_code)
        all_violations = ([violation] if violation is not None else []) + list(violations)
        self._emit_run_event(ol.RunState.FAIL, run_uuid, job_name, context, inputs, outputs,
                             violations=all_violations, error_message=error_message, stack_trace=stack_trace)

    # ---------------------------------------------------------------- building

    def _finish_context(
        self,
        run_uuid: str,
        notebook_path: str | None,
        notebook_zone: str | None,
        sql: Sequence[str] | None,
        sql_dialect: str | None,
        parameters: Mapping[str, object] | None,
        nominal_time: NominalTime,
        owners: Sequence[str] | None,
        source_code: str | None,
    ) -> _RunContext:
        with self._runs_lock:
            known = self._runs.pop(run_uuid, None) or _RunContext()
        return _RunContext(
            notebook_path=notebook_path if notebook_path is not None else known.notebook_path,
            notebook_zone=notebook_zone if notebook_zone is not None else known.notebook_zone,
            sql=_strings(sql) if sql is not None else known.sql,
            sql_dialect=sql_dialect if sql_dialect is not None else known.sql_dialect,
            parameters=parameters if parameters is not None else known.parameters,
            nominal_time=nominal_time if nominal_time is not None else known.nominal_time,
            owners=_strings(owners) if owners is not None else known.owners,
            source_code=source_code if source_code is not None else known.source_code,
        )

    def _emit_run_event(
        self,
        state: ol.RunState,
        run_uuid: str,
        job_name: str,
        context: _RunContext,
        inputs: Sequence[LineageDataset],
        outputs: Sequence[LineageDataset],
        *,
        violations: Sequence[Mapping[str, Any]] = (),
        error_message: str | None = None,
        stack_trace: str | None = None,
    ) -> None:
        if not self.enabled:
            return
        try:
            event = ol.RunEvent(
                eventType=state,
                eventTime=_now(),
                run=ol.Run(runId=run_uuid, facets=self._run_facets(
                    context, violations=violations, error_message=error_message, stack_trace=stack_trace)),
                job=ol.Job(namespace=self.config.namespace, name=job_name, facets=self._job_facets(context)),
                inputs=[self._input_dataset(d, context) for d in inputs],
                outputs=[self._output_dataset(d, context, inputs) for d in outputs],
                producer=PRODUCER,
            )
        except Exception as exc:  # noqa: BLE001 - lineage must never break the run
            log.warning("Could not build the OpenLineage %s event of job %r (run %s): %s",
                        state.value, job_name, run_uuid, redact_text(str(exc)))
            return
        self._emit(event)

    def _emit(self, event: ol.RunEvent) -> None:
        client = self._client
        if client is None:
            return
        try:
            with self._emit_lock:
                client.emit(event)
        except Exception as exc:  # noqa: BLE001 - lineage must never break the run
            state = event.eventType.value if event.eventType else "?"
            log.warning("Could not emit the OpenLineage %s event of job %r (run %s) through the %s transport: %s",
                        state, event.job.name, event.run.runId, self.config.transport, redact_text(str(exc)))

    def _job_facets(self, context: _RunContext) -> dict[str, facet_v2.JobFacet]:
        facets: dict[str, facet_v2.JobFacet] = {
            "jobType": job_type_job.JobTypeJobFacet(processingType=PROCESSING_TYPE, integration=INTEGRATION,
                                                    jobType=JOB_TYPE, producer=PRODUCER),
        }
        query = _joined_sql(context.sql)
        if query:
            facets["sql"] = sql_job.SQLJobFacet(query=redact_text(query), producer=PRODUCER,
                                                dialect=context.sql_dialect or _dialect_of(self.dataset_namespace))
        if context.source_code:
            facets["sourceCode"] = source_code_job.SourceCodeJobFacet(
                language=PROGRAMMING_LANGUAGE, sourceCode=redact_text(context.source_code), producer=PRODUCER)
        owners = [o for o in dict.fromkeys(context.owners) if o]
        if owners:
            facets["ownership"] = ownership_job.OwnershipJobFacet(
                owners=[ownership_job.Owner(name=o) for o in owners], producer=PRODUCER)
        if context.notebook_path:
            facets[NOTEBOOK_FACET] = NotebookJobFacet(path=str(context.notebook_path),
                                                      zone=context.notebook_zone or None, producer=PRODUCER)
        return facets

    def _run_facets(
        self,
        context: _RunContext,
        *,
        violations: Sequence[Mapping[str, Any]],
        error_message: str | None,
        stack_trace: str | None,
    ) -> dict[str, facet_v2.RunFacet]:
        facets: dict[str, facet_v2.RunFacet] = {}
        nominal = _nominal_time(context.nominal_time)
        if nominal:
            facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(nominalStartTime=nominal, producer=PRODUCER)
        if context.parameters:
            facets[PARAMETERS_FACET] = ParametersRunFacet(parameters=_jsonable(context.parameters),
                                                          producer=PRODUCER)
        if error_message is not None:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=redact_text(str(error_message)), programmingLanguage=PROGRAMMING_LANGUAGE,
                stackTrace=redact_text(stack_trace) if stack_trace else None, producer=PRODUCER)
        if violations:
            items = [_jsonable(v) for v in violations]
            # blocked unless every violation says it was only logged (enforced=False, zone in log mode)
            blocked = any(not (isinstance(v, dict) and v.get("enforced") is False) for v in items)
            facets[ZONE_CHECK_FACET] = ZoneCheckRunFacet(blocked=blocked, violations=items, producer=PRODUCER)
        return facets

    def _dataset_facets(
        self,
        dataset: LineageDataset,
        context: _RunContext,
        *,
        derived_from: Sequence[str] | None,
        origin: str | None,
    ) -> dict[str, facet_v2.DatasetFacet]:
        facets: dict[str, facet_v2.DatasetFacet] = {}
        if dataset.columns:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[schema_dataset.SchemaDatasetFacetFields(name=str(name), type=str(type_) if type_ else None,
                                                                ordinal_position=i)
                        for i, (name, type_) in enumerate(dataset.columns, start=1)],
                producer=PRODUCER)
        if dataset.zones is not None:
            facets[PURPOSE_ZONE_FACET] = PurposeZoneDatasetFacet(
                zones=sorted(str(z) for z in dataset.zones),
                notebookZone=context.notebook_zone or None,
                derivedFrom=list(derived_from) if derived_from is not None else None,
                origin=origin,
                producer=PRODUCER)
        return facets

    def _input_dataset(self, dataset: LineageDataset, context: _RunContext) -> ol.InputDataset:
        facets = self._dataset_facets(dataset, context, derived_from=None, origin=dataset.origin)
        return ol.InputDataset(namespace=self.dataset_namespace, name=dataset.name, facets=facets)

    def _output_dataset(
        self,
        dataset: LineageDataset,
        context: _RunContext,
        inputs: Sequence[LineageDataset],
    ) -> ol.OutputDataset:
        derived_from = (list(dataset.derived_from) if dataset.derived_from is not None
                        else sorted({d.name for d in inputs}))
        facets = self._dataset_facets(dataset, context, derived_from=derived_from,
                                      origin=dataset.origin or "derived")
        column_lineage = self._column_lineage(dataset)
        if column_lineage is not None:
            facets["columnLineage"] = column_lineage
        output_facets: dict[str, facet_v2.OutputDatasetFacet] = {}
        if dataset.row_count is not None:
            output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=int(dataset.row_count), producer=PRODUCER)
        return ol.OutputDataset(namespace=self.dataset_namespace, name=dataset.name, facets=facets,
                                outputFacets=output_facets)

    def _column_lineage(self, dataset: LineageDataset) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
        fields: dict[str, column_lineage_dataset.Fields] = {}
        for out_column, sources in dataset.column_lineage.items():
            pairs = [tuple(s) for s in sources if len(tuple(s)) in (2, 3)]
            if len(pairs) != len(sources):
                log.warning("Ignoring malformed column lineage of %s.%s: %r", dataset.name, out_column, sources)
            input_fields = []
            for source in pairs:
                table, column = str(source[0]), str(source[1])
                if len(source) == 3 and source[2]:
                    subtype = str(source[2])
                elif len(pairs) == 1 and column.lower() == str(out_column).lower():
                    subtype = "IDENTITY"
                else:
                    subtype = "TRANSFORMATION"
                input_fields.append(column_lineage_dataset.InputField(
                    namespace=self.dataset_namespace, name=table, field=column,
                    transformations=[column_lineage_dataset.Transformation(type="DIRECT", subtype=subtype)]))
            if input_fields:
                fields[str(out_column)] = column_lineage_dataset.Fields(inputFields=input_fields)
        if not fields:
            return None
        return column_lineage_dataset.ColumnLineageDatasetFacet(fields=fields, producer=PRODUCER)
