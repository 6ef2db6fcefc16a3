"""OpenLineage emission: file and HTTP transports, offline schema validation, best-effort failures.

Every emitted event is validated against the OpenLineage 2-0-2 RunEvent schema and every facet
against its own schema (the standard ones from the shared spec copy, the custom ones from
``dagster_bento/lineage_facets``), resolved through a ``referencing`` registry: no network.
"""

import datetime as dt
import http.server
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from dagster_bento.lineage import (
    CUSTOM_FACETS,
    FACET_SCHEMA_DIR,
    NOTEBOOK_FACET,
    PARAMETERS_FACET,
    PURPOSE_ZONE_FACET,
    ZONE_CHECK_FACET,
    LineageConfig,
    LineageDataset,
    LineageEmitter,
    custom_facet_schemas,
    to_run_uuid,
)

EVENT_SCHEMA_ID = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
NAMESPACE = "duckdb:///tmp/warehouse.duckdb"
RUN_OK = "0190b0a4-7c1e-7d6a-9a52-3f2f1c0d5e11"
RUN_FAIL = "0190b0a4-7c1e-7d6a-9a52-3f2f1c0d5e22"
LOGGER = "dagster_bento.lineage"

# The facet kind each container holds: the base definition a facet's schema must extend.
CONTAINER_BASE = {
    "job": "JobFacet",
    "run": "RunFacet",
    "dataset": "DatasetFacet",
    "inputDataset": "InputDatasetFacet",
    "outputDataset": "OutputDatasetFacet",
}


# --------------------------------------------------------------------------------------------------
# Offline schema registry
# --------------------------------------------------------------------------------------------------


def _spec_dir() -> Path:
    candidates = [Path(__file__).resolve().parent / "data" / "openlineage-spec",
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "openlineage-spec"]
    shared = os.environ.get("BENTO_SHARED_DIR")
    if shared:
        candidates += [Path(shared) / "data" / "openlineage-spec", Path(shared) / "openlineage-spec", Path(shared)]
    for candidate in candidates:
        if (candidate / "OpenLineage.json").is_file() and (candidate / "facets").is_dir():
            return candidate
    pytest.fail(
        "OpenLineage spec schemas not found; looked in: " + ", ".join(str(c) for c in candidates)
        + ". They live in <shared>/data/openlineage-spec (OpenLineage.json and facets/*.json): put the shared "
        "directory next to the repo (../shared) or set BENTO_SHARED_DIR to it.",
        pytrace=False,
    )


class Schemas:
    """All schemas by ``$id`` and a registry resolving ``https://openlineage.io/spec/...`` locally."""

    def __init__(self, spec_dir: Path) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        paths = [spec_dir / "OpenLineage.json", *sorted((spec_dir / "facets").glob("*.json"))]
        for path in paths:
            content = json.loads(path.read_text(encoding="utf-8"))
            self.by_id[content["$id"]] = content
        self.custom_ids = set(custom_facet_schemas())
        assert self.custom_ids, f"no custom facet schemas in {FACET_SCHEMA_DIR}"
        self.by_id.update(custom_facet_schemas())
        # No `retrieve`: an unknown URL is an error, never a download.
        self.registry: Registry = Registry().with_resources(
            (schema_id, Resource.from_contents(content)) for schema_id, content in self.by_id.items())

    def validator(self, schema: dict[str, Any]) -> Draft202012Validator:
        return Draft202012Validator(schema, registry=self.registry,
                                    format_checker=Draft202012Validator.FORMAT_CHECKER)

    def validate_event(self, event: dict[str, Any]) -> None:
        # The whole document against OpenLineage.json (oneOf RunEvent | DatasetEvent | JobEvent) ...
        self.validator(self.by_id[EVENT_SCHEMA_ID]).validate(event)
        # ... and against the definition it names itself.
        assert event["schemaURL"] == EVENT_SCHEMA_ID + "#/$defs/RunEvent"
        self.validator({"$ref": event["schemaURL"]}).validate(event)
        uuid.UUID(event["run"]["runId"])
        assert dt.datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00")).tzinfo is not None
        for container, key, facet in iter_facets(event):
            self.validate_facet(container, key, facet)

    def validate_facet(self, container: str, key: str, facet: dict[str, Any]) -> None:
        url = facet["_schemaURL"]
        base, _, fragment = url.partition("#")
        assert base in self.by_id, f"facet {key!r} ({container}) names a schema with no local copy: {url}"
        file_schema = self.by_id[base]
        # The facet is emitted under the key its schema file declares (e.g. "columnLineage").
        assert key in file_schema.get("properties", {}), f"facet key {key!r} is not declared by {base}"
        self.validator(file_schema).validate({key: facet})
        self.validator({"$ref": url}).validate(facet)
        # And in the right container: its definition extends the container's base facet.
        assert fragment.startswith("/$defs/"), url
        definition = file_schema["$defs"][fragment.removeprefix("/$defs/")]
        base_ref = definition["allOf"][0]["$ref"]
        assert base_ref.endswith("#/$defs/" + CONTAINER_BASE[container]), (key, container, base_ref)


def iter_facets(event: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for key, facet in (event["job"].get("facets") or {}).items():
        yield "job", key, facet
    for key, facet in (event["run"].get("facets") or {}).items():
        yield "run", key, facet
    for dataset in event.get("inputs") or []:
        for key, facet in (dataset.get("facets") or {}).items():
            yield "dataset", key, facet
        for key, facet in (dataset.get("inputFacets") or {}).items():
            yield "inputDataset", key, facet
    for dataset in event.get("outputs") or []:
        for key, facet in (dataset.get("facets") or {}).items():
            yield "dataset", key, facet
        for key, facet in (dataset.get("outputFacets") or {}).items():
            yield "outputDataset", key, facet


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas(_spec_dir())


@pytest.fixture(autouse=True)
def _clean_openlineage_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient OpenLineage config (env vars, ./openlineage.yml) and no proxy for 127.0.0.1."""
    for name in list(os.environ):
        if name.startswith("OPENLINEAGE"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENLINEAGE_CONFIG", str(tmp_path / "no-openlineage.yml"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------------------------------
# A successful and a failed run (tests 1 and 10 of the purpose-zone matrix)
# --------------------------------------------------------------------------------------------------

USERS = LineageDataset(name="core.users", columns=(("user_id", "BIGINT"), ("country", "VARCHAR")),
                       zones=frozenset({"ANALYTICS"}), origin="declared")
CLICKS = LineageDataset(name="ads.clicks", columns=(("user_id", "BIGINT"), ("clicked", "BOOLEAN")),
                        zones=frozenset({"ADS"}), origin="declared")
USER_STATS = LineageDataset(
    name="analytics.user_stats",
    columns=(("country", "VARCHAR"), ("users", "BIGINT")),
    zones=frozenset({"ANALYTICS"}),
    column_lineage={"country": [("core.users", "country")], "users": [("core.users", "user_id")]},
    row_count=42,
)
CTR = LineageDataset(name="analytics.ctr", zones=frozenset({"ADS", "ANALYTICS"}),
                     column_lineage={"ctr": [("ads.clicks", "clicked", "AGGREGATION"), ("core.users", "user_id")]})
VIOLATION: dict[str, Any] = {
    "code": "PZ004",
    "phase": "pre_upload",
    "notebook": "ctr",
    "notebook_zone": "ADS",
    "table": "analytics.ctr",
    "table_zones": frozenset({"ANALYTICS"}),  # sets are written as sorted arrays
    "required_zones": frozenset({"ANALYTICS", "ADS"}),
    "path": (),
    "enforced": True,
    "hint": "add ADS to analytics.ctr in purpose_zones.yaml or write to a new table.",
    "message": "[PZ004 OUTPUT_UNDERLABELED] pre_upload: notebook 'ctr' (zone ADS) may not write 'analytics.ctr'",
}
ERROR = "[PZ004 OUTPUT_UNDERLABELED] pre_upload: notebook 'ctr' (zone ADS) may not write 'analytics.ctr'"


def emit_success_and_failure(emitter: LineageEmitter) -> None:
    emitter.start(
        run_id=RUN_OK, job_name="user_stats__daily", notebook_path="notebooks/user_stats.ipynb",
        notebook_zone="ANALYTICS", inputs=[USERS],
        sql=["SELECT country, count(user_id) AS users FROM core.users GROUP BY country"],
        parameters={"ds": dt.date(2025, 6, 1), "limit": 10, "countries": frozenset({"NL", "DE"})},
        nominal_time="2025-06-01", owners=["data-team@example.com"],
    )
    emitter.complete(run_id=RUN_OK, job_name="user_stats__daily", inputs=[USERS], outputs=[USER_STATS])

    emitter.start(
        run_id=RUN_FAIL, job_name="ctr__daily", notebook_path="notebooks/ctr.ipynb", notebook_zone="ADS",
        inputs=[USERS, CLICKS],
        sql=["SELECT u.user_id, avg(c.clicked::int) AS ctr FROM core.users u JOIN ads.clicks c USING (user_id)",
             "-- second cell\nSELECT 1 -- trailing comment"],
        parameters={"ds": "2025-06-01"}, nominal_time=dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc),
    )
    emitter.fail(run_id=RUN_FAIL, job_name="ctr__daily", inputs=[USERS, CLICKS], outputs=[CTR],
                 error_message=ERROR, violation=VIOLATION, stack_trace="Traceback (most recent call last): ...")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def by_name(datasets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in datasets}


def check_success_and_failure(events: list[dict[str, Any]], schemas: Schemas) -> None:
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "START", "FAIL"]
    for event in events:
        schemas.validate_event(event)
        assert event["job"]["namespace"] == "dagster-bento"
        assert event["producer"].startswith("https://github.com/dagster-bento/dagster-bento")
        job_type = event["job"]["facets"]["jobType"]
        assert (job_type["processingType"], job_type["integration"], job_type["jobType"]) == \
            ("BATCH", "DAGSTER_BENTO", "NOTEBOOK")
    start, complete, start2, fail = events

    # --- successful run
    assert start["run"]["runId"] == complete["run"]["runId"] == RUN_OK
    assert start["job"]["name"] == complete["job"]["name"] == "user_stats__daily"
    assert [d["name"] for d in start["inputs"]] == ["core.users"]
    assert start["inputs"][0]["namespace"] == NAMESPACE
    assert start["outputs"] == []
    assert start["inputs"][0]["facets"]["schema"]["fields"] == [
        {"name": "user_id", "type": "BIGINT", "ordinal_position": 1, "fields": []},
        {"name": "country", "type": "VARCHAR", "ordinal_position": 2, "fields": []},
    ]
    zone_in = start["inputs"][0]["facets"][PURPOSE_ZONE_FACET]
    assert (zone_in["zones"], zone_in["notebookZone"], zone_in["origin"]) == (["ANALYTICS"], "ANALYTICS", "declared")
    assert "derivedFrom" not in zone_in
    for event in (start, complete):  # START's context is reused by COMPLETE
        assert event["job"]["facets"]["sql"]["query"] == \
            "SELECT country, count(user_id) AS users FROM core.users GROUP BY country;"
        assert event["job"]["facets"]["sql"]["dialect"] == "duckdb"
        assert event["job"]["facets"]["ownership"]["owners"] == [{"name": "data-team@example.com"}]
        assert event["job"]["facets"][NOTEBOOK_FACET]["path"] == "notebooks/user_stats.ipynb"
        assert event["job"]["facets"][NOTEBOOK_FACET]["zone"] == "ANALYTICS"
        assert event["run"]["facets"]["nominalTime"]["nominalStartTime"] == "2025-06-01T00:00:00Z"
        assert event["run"]["facets"][PARAMETERS_FACET]["parameters"] == \
            {"ds": "2025-06-01", "limit": 10, "countries": ["DE", "NL"]}
        assert "errorMessage" not in event["run"]["facets"]
        assert ZONE_CHECK_FACET not in event["run"]["facets"]
    [output] = complete["outputs"]
    assert output["name"] == "analytics.user_stats" and output["namespace"] == NAMESPACE
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 42
    lineage = output["facets"]["columnLineage"]["fields"]
    assert lineage["country"]["inputFields"] == [{
        "namespace": NAMESPACE, "name": "core.users", "field": "country",
        "transformations": [{"type": "DIRECT", "subtype": "IDENTITY"}]}]
    assert lineage["users"]["inputFields"][0]["field"] == "user_id"
    assert lineage["users"]["inputFields"][0]["transformations"] == [{"type": "DIRECT", "subtype": "TRANSFORMATION"}]
    zone_out = output["facets"][PURPOSE_ZONE_FACET]
    assert zone_out == {**{k: zone_out[k] for k in ("_producer", "_schemaURL")},
                        "zones": ["ANALYTICS"], "notebookZone": "ANALYTICS", "derivedFrom": ["core.users"],
                        "origin": "derived"}

    # --- failed run
    assert start2["run"]["runId"] == fail["run"]["runId"] == RUN_FAIL
    assert {d["name"] for d in start2["inputs"]} == {"core.users", "ads.clicks"}
    assert start2["job"]["facets"]["sql"]["query"] == (
        "SELECT u.user_id, avg(c.clicked::int) AS ctr FROM core.users u JOIN ads.clicks c USING (user_id);"
        "\n\n-- second cell\nSELECT 1 -- trailing comment\n;")
    assert "ownership" not in start2["job"]["facets"]
    assert fail["run"]["facets"]["nominalTime"]["nominalStartTime"] == "2025-06-01T00:00:00Z"
    error = fail["run"]["facets"]["errorMessage"]
    assert (error["message"], error["programmingLanguage"]) == (ERROR, "python")
    assert error["stackTrace"].startswith("Traceback")
    check = fail["run"]["facets"][ZONE_CHECK_FACET]
    assert check["blocked"] is True
    assert check["violations"] == [{
        **{k: v for k, v in VIOLATION.items() if k not in ("table_zones", "required_zones", "path")},
        "table_zones": ["ANALYTICS"], "required_zones": ["ADS", "ANALYTICS"], "path": []}]
    assert ZONE_CHECK_FACET not in start2["run"]["facets"]
    [blocked] = fail["outputs"]
    assert blocked["name"] == "analytics.ctr"
    assert blocked["facets"][PURPOSE_ZONE_FACET]["zones"] == ["ADS", "ANALYTICS"]
    assert blocked["facets"][PURPOSE_ZONE_FACET]["derivedFrom"] == ["ads.clicks", "core.users"]
    assert blocked["facets"][PURPOSE_ZONE_FACET]["notebookZone"] == "ADS"
    ctr = blocked["facets"]["columnLineage"]["fields"]["ctr"]["inputFields"]
    assert [(f["name"], f["field"], f["transformations"][0]["subtype"]) for f in ctr] == \
        [("ads.clicks", "clicked", "AGGREGATION"), ("core.users", "user_id", "TRANSFORMATION")]
    assert blocked["outputFacets"] == {}


def test_file_transport_writes_valid_events_for_success_and_failure(tmp_path: Path, schemas: Schemas) -> None:
    config = LineageConfig().with_defaults(tmp_path / "artifacts")  # the directory does not exist yet
    assert config.file_path == str(tmp_path / "artifacts" / "openlineage.jsonl")
    emitter = LineageEmitter(config, dataset_namespace=NAMESPACE)
    assert emitter.enabled
    emit_success_and_failure(emitter)
    emitter.close()

    events = read_jsonl(tmp_path / "artifacts" / "openlineage.jsonl")
    check_success_and_failure(events, schemas)

    # append mode: a second emitter on the same file adds lines, it does not truncate
    with LineageEmitter(config, dataset_namespace=NAMESPACE) as again:
        again.complete(run_id=RUN_OK, job_name="user_stats__daily", inputs=[], outputs=[])
    assert len(read_jsonl(tmp_path / "artifacts" / "openlineage.jsonl")) == 5


def test_logged_violations_are_recorded_on_complete(tmp_path: Path, schemas: Schemas) -> None:
    path = tmp_path / "lineage.jsonl"
    emitter = LineageEmitter(LineageConfig(file_path=str(path)), dataset_namespace=NAMESPACE)
    logged = {**VIOLATION, "code": "PZ001", "phase": "pre_fetch", "table": "beta.signals", "enforced": False}
    emitter.complete(run_id="not-a-uuid", job_name="report", notebook_zone="ANALYTICS", sql="SELECT 1",
                     inputs=[LineageDataset("beta.signals", zones=frozenset({"BETA"}))],
                     outputs=[LineageDataset("analytics.report", zones=frozenset({"ANALYTICS", "BETA"}),
                                             origin="derived", derived_from=("beta.signals", "extra.api"))],
                     violations=[logged])
    [event] = read_jsonl(path)
    schemas.validate_event(event)
    check = event["run"]["facets"][ZONE_CHECK_FACET]
    assert check["blocked"] is False and check["violations"][0]["code"] == "PZ001"
    assert event["run"]["runId"] == to_run_uuid("not-a-uuid")
    assert event["outputs"][0]["facets"][PURPOSE_ZONE_FACET]["derivedFrom"] == ["beta.signals", "extra.api"]
    assert event["job"]["facets"]["sql"]["query"] == "SELECT 1;"  # a lone string is one statement
    assert NOTEBOOK_FACET not in event["job"]["facets"]


def test_unrestricted_and_unclassified_labels(tmp_path: Path, schemas: Schemas) -> None:
    path = tmp_path / "sub" / "lineage.jsonl"
    emitter = LineageEmitter(LineageConfig(file_path=path.as_uri()), dataset_namespace=NAMESPACE)  # file:// works
    emitter.start(run_id=RUN_OK, job_name="j", notebook_path="notebooks/j.ipynb", notebook_zone="ANALYTICS",
                  inputs=[LineageDataset("ref.countries", zones=frozenset()), LineageDataset("tmp.unknown")])
    [event] = read_jsonl(path)
    schemas.validate_event(event)
    countries, unknown = event["inputs"]
    assert countries["facets"][PURPOSE_ZONE_FACET]["zones"] == []  # {} = explicitly unrestricted
    assert PURPOSE_ZONE_FACET not in unknown["facets"]  # None = no label known: no facet


def test_run_ids_are_uuids() -> None:
    assert to_run_uuid(RUN_OK) == RUN_OK
    assert to_run_uuid(RUN_OK.upper()) == RUN_OK
    derived = to_run_uuid("scheduled_run_20250601")
    assert uuid.UUID(derived).version == 5
    assert to_run_uuid("scheduled_run_20250601") == derived != to_run_uuid("scheduled_run_20250602")


def test_custom_facet_schemas_are_valid_and_match_the_facet_classes(schemas: Schemas) -> None:
    custom = custom_facet_schemas()
    assert {p.name for p in FACET_SCHEMA_DIR.glob("*.json")} == {
        "NotebookJobFacet.json", "ParametersRunFacet.json", "ZoneCheckRunFacet.json",
        "PurposeZoneDatasetFacet.json"}
    for content in custom.values():
        Draft202012Validator.check_schema(content)
    for key, facet_class in CUSTOM_FACETS.items():
        url = facet_class._get_schema()
        base, _, fragment = url.partition("#")
        assert base in custom, url
        assert key in custom[base]["properties"]
        assert fragment.removeprefix("/$defs/") == facet_class.__name__
    # A wrong facet is rejected: the schemas do constrain something.
    bad = {"_producer": "https://example.com", "_schemaURL": PURPOSE_ZONE_FACET, "zones": "ADS"}
    with pytest.raises(Exception, match="is not of type 'array'"):
        schemas.validator({"$ref": CUSTOM_FACETS[PURPOSE_ZONE_FACET]._get_schema()}).validate(bad)


def test_transport_none_and_openlineage_disabled_emit_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lineage.jsonl"
    off = LineageEmitter(LineageConfig(transport="none", file_path=str(path)), dataset_namespace=NAMESPACE)
    assert not off.enabled
    emit_success_and_failure(off)
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    disabled = LineageEmitter(LineageConfig(file_path=str(path)), dataset_namespace=NAMESPACE)
    assert not disabled.enabled
    emit_success_and_failure(disabled)
    assert not path.exists()


def test_console_transport_logs_events(caplog: pytest.LogCaptureFixture) -> None:
    emitter = LineageEmitter(LineageConfig(transport="console"), dataset_namespace=NAMESPACE)
    with caplog.at_level(logging.INFO, logger="openlineage.client.transport.console"):
        emitter.start(run_id=RUN_OK, job_name="j", notebook_path="n.ipynb", notebook_zone="ADS", inputs=[])
    [record] = [r for r in caplog.records if r.name == "openlineage.client.transport.console"]
    assert json.loads(record.getMessage())["eventType"] == "START"


SECRET = "s3cr3tPW"
CREDENTIAL_URLS = [
    f"postgres://bento:{SECRET}@127.0.0.1:5432/test",
    f"postgresql://bento@127.0.0.1:5432/test?password={SECRET}&sslmode=disable",
    f"postgresql://127.0.0.1/test?sslpassword={SECRET}&bento_fetch_role=reader",
    f"postgresql://127.0.0.1/test?PASSWORD={SECRET}",
    f"postgresql://bento:p@ss/{SECRET}@127.0.0.1:5432/test",  # unescaped '@' and '/' in the password
    f"postgresql://bento:{SECRET}?x@127.0.0.1/test",  # unescaped '?'
    f"postgresql://127.0.0.1/test?api_token={SECRET}",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_no_credential_reaches_a_lineage_event_whatever_the_url_form(tmp_path: Path, url: str,
                                                                      schemas: Schemas) -> None:
    """The dataset namespace, the error message, the stack trace, parameters, violations and SQL of
    START and FAIL events never carry a warehouse credential."""
    path = tmp_path / "lineage.jsonl"
    emitter = LineageEmitter(LineageConfig(file_path=str(path)), dataset_namespace=url)
    assert SECRET not in emitter.dataset_namespace and "?" not in emitter.dataset_namespace
    assert emitter.dataset_namespace.startswith(("postgres://127.0.0.1", "postgresql://127.0.0.1"))
    emitter.start(run_id=RUN_OK, job_name="j", notebook_path="n.ipynb", notebook_zone="ADS",
                  inputs=[LineageDataset("core.users")], sql=[f"SELECT '{url}' AS u"],
                  parameters={"source": url})
    emitter.fail(run_id=RUN_OK, job_name="j", inputs=[], error_message=f"could not connect to {url}: refused",
                 stack_trace=f"Traceback (most recent call last):\n  connect({url!r})\nOperationalError: {url}",
                 violation={"message": f"read through {url}", "code": "PZ001"})
    emitter.close()
    text = path.read_text(encoding="utf-8")
    assert SECRET not in text
    events = read_jsonl(path)
    for event in events:
        schemas.validate_event(event)
    assert "127.0.0.1" in events[1]["run"]["facets"]["errorMessage"]["message"]  # still says where
    assert json.loads(text.splitlines()[0])["job"]["facets"]["sql"]["dialect"] == "postgres"


def test_lineage_warnings_never_carry_the_endpoint_credentials(caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://lineage:{SECRET}@127.0.0.1:9/?api_key={SECRET}"
    config = LineageConfig(transport="http", url=url, timeout_s=0.5, retries=0)

    def fails(event: Any) -> None:  # a transport error that quotes the endpoint, as many HTTP clients do
        raise ConnectionError(f"POST {url}api/v1/lineage failed")

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with LineageEmitter(config, dataset_namespace=NAMESPACE) as emitter:
            assert emitter._client is not None
            monkeypatch.setattr(emitter._client, "emit", fails)
            emitter.start(run_id=RUN_OK, job_name="j", notebook_path="n.ipynb", notebook_zone="ADS", inputs=[])
    assert "failed" in caplog.text and "127.0.0.1:9" in caplog.text
    assert SECRET not in caplog.text
    with pytest.raises(ValueError) as info:
        LineageConfig(transport="http", url=f"ftp://u:{SECRET}@host/")
    assert SECRET not in str(info.value)


def test_dataset_namespace_never_carries_credentials(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    emitter = LineageEmitter(LineageConfig(file_path=str(path)),
                             dataset_namespace="postgres://bento:s3cret@127.0.0.1:5432/test")
    assert emitter.dataset_namespace == "postgres://127.0.0.1:5432/test"
    emitter.start(run_id=RUN_OK, job_name="j", notebook_path="n.ipynb", notebook_zone="ADS",
                  inputs=[LineageDataset("core.users")], sql=["SELECT 1"])
    text = path.read_text(encoding="utf-8")
    assert "s3cret" not in text and "bento:" not in text
    assert json.loads(text)["job"]["facets"]["sql"]["dialect"] == "postgres"


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transport must be one of"):
        LineageConfig(transport="kafka")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a url"):
        LineageConfig(transport="http")
    with pytest.raises(ValueError, match="http"):
        LineageConfig(transport="http", url="127.0.0.1:5000")
    with pytest.raises(ValueError, match="timeout_s"):
        LineageConfig(timeout_s=0)
    with pytest.raises(ValueError, match="unknown lineage option"):
        LineageConfig.from_dict({"transport": "file", "path": "x"})
    config = LineageConfig.from_dict({"transport": "http", "url": "http://127.0.0.1:5000", "timeout_s": 2})
    assert (config.transport, config.url, config.timeout_s) == ("http", "http://127.0.0.1:5000", 2)
    explicit = LineageConfig(file_path="/x/y.jsonl")
    assert explicit.with_defaults(tmp_path) is explicit


# --------------------------------------------------------------------------------------------------
# Best effort: problems are warnings, never exceptions
# --------------------------------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_file_transport_without_path_warns_and_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        emitter = LineageEmitter(LineageConfig(), dataset_namespace=NAMESPACE)
        emit_success_and_failure(emitter)
    assert not emitter.enabled
    assert any("file_path" in m for m in warnings_of(caplog))


def test_unwritable_file_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "is-a-directory"
    directory.mkdir()
    emitter = LineageEmitter(LineageConfig(file_path=str(directory)), dataset_namespace=NAMESPACE)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        emit_success_and_failure(emitter)
    messages = warnings_of(caplog)
    assert len(messages) == 4
    assert all("file transport" in m for m in messages)
    assert "START" in messages[0] and "FAIL" in messages[3]


# --------------------------------------------------------------------------------------------------
# HTTP transport against a real local server
# --------------------------------------------------------------------------------------------------


class _LineageServer(http.server.ThreadingHTTPServer):
    received: list[tuple[str, str | None, dict[str, Any]]]
    status: int


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _LineageServer

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.server.status
        if self.path == "/api/v1/lineage":
            self.server.received.append((self.path, self.headers.get("Content-Type"), json.loads(body)))
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def lineage_server() -> Iterator[_LineageServer]:
    server = _LineageServer(("127.0.0.1", 0), _Handler)
    server.received = []
    server.status = 201  # what Marquez answers
    thread = threading.Thread(target=server.serve_forever, name="lineage-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_transport_posts_valid_events(lineage_server: _LineageServer, schemas: Schemas,
                                           caplog: pytest.LogCaptureFixture) -> None:
    host, port = lineage_server.server_address[:2]
    config = LineageConfig(transport="http", url=f"http://{host}:{port}", timeout_s=5)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        with LineageEmitter(config, dataset_namespace=NAMESPACE) as emitter:
            assert emitter.enabled
            emit_success_and_failure(emitter)
    assert warnings_of(caplog) == []
    assert [(path, content_type) for path, content_type, _ in lineage_server.received] == \
        [("/api/v1/lineage", "application/json")] * 4
    check_success_and_failure([body for _, _, body in lineage_server.received], schemas)


def test_http_url_with_a_path_prefix(lineage_server: _LineageServer) -> None:
    host, port = lineage_server.server_address[:2]
    config = LineageConfig(transport="http", url=f"http://{host}:{port}/", timeout_s=5)
    LineageEmitter(config, dataset_namespace=NAMESPACE).start(
        run_id=RUN_OK, job_name="j", notebook_path="n.ipynb", notebook_zone="ADS", inputs=[])
    assert len(lineage_server.received) == 1


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_logs_warnings_and_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    config = LineageConfig(transport="http", url=f"http://127.0.0.1:{_closed_port()}", timeout_s=1, retries=0)
    emitter = LineageEmitter(config, dataset_namespace=NAMESPACE)
    assert emitter.enabled
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        emit_success_and_failure(emitter)  # must not raise
    assert time.monotonic() - began < 10
    messages = warnings_of(caplog)
    assert len(messages) == 4
    for message, state in zip(messages, ["START", "COMPLETE", "START", "FAIL"]):
        assert f"OpenLineage {state} event" in message
    assert all("http transport" in m for m in messages)


def test_server_error_logs_a_warning(lineage_server: _LineageServer, caplog: pytest.LogCaptureFixture) -> None:
    lineage_server.status = 500
    host, port = lineage_server.server_address[:2]
    config = LineageConfig(transport="http", url=f"http://{host}:{port}", timeout_s=2, retries=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        LineageEmitter(config, dataset_namespace=NAMESPACE).start(
            run_id=RUN_OK, job_name="j", notebook_path="n.ipynb", notebook_zone="ADS", inputs=[])
    assert len(lineage_server.received) == 2  # the first try and one retry
    [message] = warnings_of(caplog)
    assert "500" in message


# --------------------------------------------------------------------------------------------------
# dagster_bento.redact: the one place that decides what a credential looks like
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://alice:s3cr3t@db:5432/wh", "postgresql://alice:***@db:5432/wh"),
    ("postgresql://alice@db/wh?password=s3cr3t&sslmode=require", "postgresql://alice@db/wh?password=***&sslmode=require"),
    ("postgresql://db/wh?sslpassword=s3cr3t&bento_fetch_role=reader",
     "postgresql://db/wh?sslpassword=***&bento_fetch_role=reader"),
    ("postgresql://db/wh?PassWord=s3cr3t", "postgresql://db/wh?PassWord=***"),
    ("postgresql://db/wh?pass%77ord=s3cr3t", "postgresql://db/wh?pass%77ord=***"),
    ("postgresql://a:p@ss/w?rd@db/wh", "postgresql://a:***@db/wh"),
    ("postgresql://a:pa?ss@db/wh", "postgresql://a:***@db/wh"),
    ("jdbc:postgresql://db/wh;password=s3cr3t;user=y", "jdbc:postgresql://db/wh;password=***;user=y"),
    ("http://marquez:5000/api?api_key=s3cr3t&x=1", "http://marquez:5000/api?api_key=***&x=1"),
    ("https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "https://hooks.slack.com/services/T0000/B0000/***"),
    ("duckdb:///srv/warehouse.duckdb", "duckdb:///srv/warehouse.duckdb"),
    ("http://dagster:3000/runs/6f1c1a3e-1111-2222-3333-444455556666",
     "http://dagster:3000/runs/6f1c1a3e-1111-2222-3333-444455556666"),
    ("postgresql://host:5432/db?user=x@y", "postgresql://host:5432/db?user=x@y"),
])
def test_redact_url(url: str, expected: str) -> None:
    from dagster_bento.redact import redact_url

    assert redact_url(url) == expected


def test_redact_text_and_webhooks() -> None:
    from dagster_bento.redact import redact_text, redact_url

    text = ("connect to postgresql://a:xyz1@h/db?token=QQ9 failed; conninfo host=h user=a password='se cret' "
            "dbname=db; retry with PGPASSWORD=abc")
    out = redact_text(text)
    for secret in ("xyz1", "QQ9", "se cret", "cret", "abc"):
        assert secret not in out
    assert "postgresql://a:***@h/db" in out and "host=h user=a" in out
    assert redact_url("https://hooks.example.com/T000/B000", secret_path=True) == "https://hooks.example.com/***"
    assert redact_text("") == "" and redact_text("cell 4: x=1") == "cell 4: x=1"
