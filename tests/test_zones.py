"""Pure tests of the purpose-zone model (shared/design/purpose-zones.md §5).

Rows named "N" are rows of the test matrix §5(f); the fixture policy is §5(a)'s
(tests/fixtures/purpose_zones_matrix.yaml). No Dagster run, no warehouse.
"""

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_bento.errors import PROJECT_PROBLEMS_HEADER, DagsterBentoPolicyError, Problem
from dagster_bento.zones import (
    UNKNOWN,
    PurposePolicy,
    PurposeZoneDefinitionError,
    Reclassification,
    ViolationCode,
    Zone,
    ZoneJob,
    ZoneViolation,
    check_jobs,
    check_read,
    check_write,
    empty_policy,
    label_source,
    load_policy,
    normalize_table_name,
    output_label,
    resolve_label,
    violation_error,
)

FIXTURE = Path(__file__).parent / "fixtures" / "purpose_zones_matrix.yaml"


@pytest.fixture(scope="module")
def policy() -> PurposePolicy:
    return load_policy(FIXTURE)


def fs(*zones: str) -> frozenset[str]:
    return frozenset(zones)


def job(
    name: str,
    zone: str,
    reads: Iterable[str | tuple[int, str]] = (),
    writes: Iterable[str | tuple[str, str]] = (),
    *,
    notebook: str | None = None,
    unresolvable: Sequence[tuple[int, str]] = (),
    declared_inputs: Sequence[str] | None = None,
) -> ZoneJob:
    """Reads default to cell 0, writes to cell 1 in overwrite mode."""
    return ZoneJob(
        name=name,
        notebook_path=notebook or f"notebooks/{name}.ipynb",
        zone=zone,
        reads=tuple(r if isinstance(r, tuple) else (0, r) for r in reads),
        writes=tuple((1, *w) if isinstance(w, tuple) else (1, w, "overwrite") for w in writes),
        unresolvable=tuple(unresolvable),
        declared_inputs=None if declared_inputs is None else tuple(declared_inputs),
    )


# The fixture policy reclassifies msg_daily_counts' output: the project always contains that notebook,
# otherwise the reclassification would (rightly) be reported as naming an unknown notebook.
MSG_DAILY_COUNTS = job("msg_daily_counts", "MESSAGING", ["msg.messages"], ["msg.daily_counts"])


def run(
    policy: PurposePolicy, *jobs: ZoneJob, **kw: Any
) -> tuple[list[ZoneViolation], dict[str, frozenset[str]]]:
    project = list(jobs)
    if not any(j.name == MSG_DAILY_COUNTS.name for j in project):
        project.append(MSG_DAILY_COUNTS)
    return check_jobs(policy, project, **kw)


def summary(violations: Iterable[ZoneViolation]) -> list[tuple[str, str, str | None, bool]]:
    return [(v.notebook, v.code.value, v.table, v.enforced) for v in violations]


# --------------------------------------------------------------------------------------------------
# The test matrix, definition time
# --------------------------------------------------------------------------------------------------

MATRIX = [
    pytest.param(
        [job("user_stats", "ANALYTICS", ["core.users"], ["analytics.user_stats"])],
        [],
        {"analytics.user_stats": fs("ANALYTICS")},
        id="1-permitted-read-new-output",
    ),
    pytest.param(
        [job("ctr", "ADS", ["core.users", "ads.clicks"], ["ads.ctr"])],
        [],
        {"ads.ctr": fs("ADS", "ANALYTICS")},
        id="2-join-two-zones",
    ),
    pytest.param(
        [job("report", "ANALYTICS", ["ads.clicks"], ["analytics.report"])],
        [("report", "PZ001", "ads.clicks", True)],
        {"analytics.report": fs("ADS", "ANALYTICS")},
        id="3-read-not-permitted",
    ),
    pytest.param(
        [job("ctr2", "ADS", ["ads.clicks", "msg.messages"], ["ads.ctr2"])],
        [("ctr2", "PZ001", "msg.messages", True)],
        {},
        id="5-only-forbidden-side-named",
    ),
    pytest.param(
        [job("report", "ANALYTICS", ["beta.signals"], ["analytics.report"])],
        [("report", "PZ001", "beta.signals", False)],
        {"analytics.report": fs("ANALYTICS", "BETA")},
        id="6b-log-mode",
    ),
    pytest.param(
        [job("user_stats", "ANALYTICS", ["core.users", "ref.countries"], ["analytics.user_stats"])],
        [],
        {"analytics.user_stats": fs("ANALYTICS")},
        id="7-unrestricted-adds-nothing",
    ),
    pytest.param(
        [job("any_nb", "ANALYTICS", ["legacy.raw_dump"], ["tmp.any"])],
        [("any_nb", "PZ002", "legacy.raw_dump", True)],
        {},
        id="8-unclassified",
    ),
    pytest.param(
        [job("any_nb", "ADS", ["core.userz"], ["tmp.any"])],
        [("any_nb", "PZ003", "core.userz", True)],
        {},
        id="9-unknown-table",
    ),
    pytest.param(
        [job("ctr", "ADS", ["core.users", "ads.clicks"], ["analytics.ctr"])],
        [("ctr", "PZ004", "analytics.ctr", True)],
        {"analytics.ctr": fs("ANALYTICS")},
        id="10-declared-output-underlabeled",
    ),
    pytest.param(
        [job("user_stats", "ANALYTICS", ["core.users"], ["analytics.secure"])],
        [],
        {"analytics.secure": fs("ANALYTICS", "HEALTH")},
        id="11-declared-output-more-restrictive",
    ),
    pytest.param(
        # src ∈ {core.users, ads.clicks}: one read entry per domain value, both in the SQL cell 0.
        [job("param_nb", "ANALYTICS", [(0, "core.users"), (0, "ads.clicks")], ["analytics.param"])],
        [("param_nb", "PZ001", "ads.clicks", True)],
        {},
        id="12-enumerated-parameter-every-value",
    ),
    pytest.param(
        [job("ads_daily", "ADS", ["events.clicks_20250601"], ["ads.daily"])],
        [],
        {"ads.daily": fs("ADS")},
        id="14-glob-family",
    ),
    pytest.param([], [], {"msg.daily_counts": fs()}, id="16-approved-reclassification"),
    pytest.param(
        [job("integrity_x", "INTEGRITY", ["msg.messages"], ["msg.daily_counts"])],
        [("integrity_x", "PZ004", "msg.daily_counts", True)],
        {"msg.daily_counts": fs()},
        id="16-same-sql-other-notebook",
    ),
    pytest.param(
        [job("msg_daily_counts", "MESSAGING", ["msg.messages"], ["msg.daily_counts", "tmp.msg_other"])],
        [],
        {"msg.daily_counts": fs(), "tmp.msg_other": fs("MESSAGING")},
        id="16-reclassifying-notebook-other-output",
    ),
    pytest.param(
        [
            job("a", "ANALYTICS", ["core.users"], ["tmp.shared"]),
            job("b", "ADS", ["ads.clicks"], ["tmp.shared"]),
        ],
        [("a", "PZ008", "tmp.shared", True), ("b", "PZ008", "tmp.shared", True)],
        {"tmp.shared": fs("ADS", "ANALYTICS")},
        id="20-conflicting-overwriters",
    ),
    pytest.param(
        [
            job("integrity_join", "INTEGRITY", ["msg.messages", "core.users"], ["tmp.user_msgs"]),
            job("growth_report", "ANALYTICS", ["tmp.user_msgs"], ["analytics.growth"]),
        ],
        [("growth_report", "PZ001", "tmp.user_msgs", True)],
        {"tmp.user_msgs": fs("ANALYTICS", "INTEGRITY", "MESSAGING")},
        id="multi-hop",
    ),
]


@pytest.mark.parametrize(("jobs", "expected", "labels"), MATRIX)
def test_matrix_definition_time(
    policy: PurposePolicy,
    jobs: list[ZoneJob],
    expected: list[tuple[str, str, str | None, bool]],
    labels: dict[str, frozenset[str]],
) -> None:
    violations, computed = run(policy, *jobs)
    assert summary(violations) == expected
    for table, label in labels.items():
        assert computed[table] == label


def test_row_5_names_only_the_forbidden_zone(policy: PurposePolicy) -> None:
    (v,), _ = run(policy, job("ctr2", "ADS", ["ads.clicks", "msg.messages"], ["ads.ctr2"]))
    assert v.denied_by == (("MESSAGING", fs("INTEGRITY", "MESSAGING")),)
    assert v.table_zones == fs("MESSAGING")
    assert (v.cell, v.notebook_path, v.phase) == (0, "notebooks/ctr2.ipynb", "definition")


def test_row_6b_log_mode_is_a_warning(policy: PurposePolicy) -> None:
    (v,), computed = run(policy, job("report", "ANALYTICS", ["beta.signals"], ["analytics.report"]))
    assert not v.enforced
    assert v.to_problem().severity == "warning"
    assert computed["analytics.report"] == fs("ANALYTICS", "BETA")


def test_row_10_required_zones(policy: PurposePolicy) -> None:
    (v,), _ = run(policy, job("ctr", "ADS", ["core.users", "ads.clicks"], ["analytics.ctr"]))
    assert v.table_zones == fs("ANALYTICS")
    assert v.required_zones == fs("ADS", "ANALYTICS")
    assert v.path == ()  # single hop: no lineage path needed


def test_multi_hop_carries_the_lineage_path(policy: PurposePolicy) -> None:
    violations, _ = run(
        policy,
        job("integrity_join", "INTEGRITY", ["msg.messages", "core.users"], ["tmp.user_msgs"]),
        job("growth_report", "ANALYTICS", ["tmp.user_msgs"], ["analytics.growth"]),
    )
    (v,) = violations
    assert v.path == ("msg.messages", "integrity_join", "tmp.user_msgs")
    assert v.table_zones == fs("ANALYTICS", "INTEGRITY", "MESSAGING")
    assert [z for z, _ in v.denied_by] == ["INTEGRITY", "MESSAGING"]


def test_multi_hop_three_jobs_and_underlabeled_declared_output(policy: PurposePolicy) -> None:
    violations, computed = run(
        policy,
        job("h1", "HEALTH", ["health.conditions"], ["tmp.h1"]),
        job("h2", "HEALTH", ["tmp.h1"], ["tmp.h2"]),
        job("h3", "HEALTH", ["tmp.h2", "core.users"], ["analytics.ctr"]),
    )
    assert computed["tmp.h2"] == fs("HEALTH")
    # core.users is ANALYTICS, which does not permit HEALTH; analytics.ctr lacks HEALTH.
    assert summary(violations) == [
        ("h3", "PZ001", "core.users", True),
        ("h3", "PZ004", "analytics.ctr", True),
    ]
    assert violations[1].path == ("health.conditions", "h1", "tmp.h1", "h2", "tmp.h2", "h3", "analytics.ctr")


def test_row_12_every_domain_value_as_separate_jobs(policy: PurposePolicy) -> None:
    violations, _ = run(
        policy,
        job("param_nb[src=core.users]", "ANALYTICS", ["core.users"], ["analytics.p1"], notebook="notebooks/param_nb.ipynb"),
        job("param_nb[src=ads.clicks]", "ANALYTICS", ["ads.clicks"], ["analytics.p2"], notebook="notebooks/param_nb.ipynb"),
    )
    assert summary(violations) == [("param_nb[src=ads.clicks]", "PZ001", "ads.clicks", True)]
    assert violations[0].to_problem().notebook == "notebooks/param_nb.ipynb"


@pytest.mark.parametrize(("strict", "enforced", "severity"), [(True, True, "error"), (False, False, "warning")])
def test_row_13_free_string_parameter(policy: PurposePolicy, strict: bool, enforced: bool, severity: str) -> None:
    nb = job("param_nb2", "ANALYTICS", [], ["analytics.p"], unresolvable=[(2, "src")])
    (v,), _ = run(policy, nb, strict=strict)
    assert (v.code, v.cell, v.parameter, v.table, v.enforced) == (
        ViolationCode.UNRESOLVABLE_TABLE_NAME,
        2,
        "src",
        None,
        enforced,
    )
    assert v.to_problem().severity == severity


@pytest.mark.parametrize(("src", "code"), [("ads.clicks", ViolationCode.READ_NOT_PERMITTED), ("core.users", None)])
def test_row_13_runtime_pre_fetch(policy: PurposePolicy, src: str, code: ViolationCode | None) -> None:
    v = check_read(
        policy,
        notebook="param_nb2",
        notebook_path="notebooks/param_nb2.ipynb",
        notebook_zone="ANALYTICS",
        cell=2,
        table=src,
        label=resolve_label(policy, src, {}),
        phase="pre_fetch",
    )
    assert (v.code if v else None) == code


def test_row_3_runtime_pre_fetch(policy: PurposePolicy) -> None:
    labels = label_source(policy, {})
    v = check_read(
        policy,
        notebook="report",
        notebook_path="notebooks/report.ipynb",
        notebook_zone="ANALYTICS",
        cell=3,
        table="ads.clicks",
        label=labels("ads.clicks"),
        phase="pre_fetch",
    )
    assert v is not None and (v.code, v.phase, v.enforced, v.cell) == (
        ViolationCode.READ_NOT_PERMITTED,
        "pre_fetch",
        True,
        3,
    )


def test_row_10_runtime_pre_upload(policy: PurposePolicy) -> None:
    required = output_label([fs("ANALYTICS"), fs("ADS")], "ADS", reclassification=None)
    v, label = check_write(
        policy,
        notebook="ctr",
        notebook_path="notebooks/ctr.ipynb",
        notebook_zone="ADS",
        cell=4,
        table="analytics.ctr",
        required=required,
        stored=None,
        exists_unlabeled=False,
        mode="overwrite",
        phase="pre_upload",
    )
    assert v is not None and v.code is ViolationCode.OUTPUT_UNDERLABELED and v.enforced
    assert label == fs("ANALYTICS")  # never auto-widened


def test_row_14_glob_label(policy: PurposePolicy) -> None:
    assert policy.declared_label("events.clicks_20250601") == fs("ADS")
    assert policy.declared_label("EVENTS.Clicks_20250601") == fs("ADS")
    assert policy.declared_label("events.views_20250601") is UNKNOWN


def test_glob_specificity_exact_then_longest_prefix() -> None:
    p = PurposePolicy(
        zones={z: Zone(z, fs(z)) for z in ("A", "B", "C")},
        tables={"ev.*": fs("A"), "ev.clicks_*": fs("A"), "ev.clicks_special": fs("B"), "ev.views_?": None},
        reclassifications=(),
    )
    assert p.declared_label("ev.clicks_special") == fs("B")  # exact wins over any glob
    assert p.declared_label("ev.clicks_1") == fs("A")
    assert p.declared_label("ev.views_1") is None  # glob declaring an unclassified family
    assert p.declared_label("ev.views_12") == fs("A")  # falls back to the shorter prefix
    assert p._globs == ("ev.clicks_*", "ev.views_?", "ev.*")


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("ev.*", "ev.clicks_*", True),
        ("ev.clicks_*", "ads.*", False),
        ("a.x?", "a.*y", True),
        ("a.x?", "a.x", False),
        ("a.day_[0-9]*", "a.day_x*", False),
        ("a.day_[0-9]*", "a.day_[!a-z]", True),
        ("a.*_1", "a.*_2", False),
        ("*", "a.b", True),
    ],
)
def test_glob_overlap(a: str, b: str, overlap: bool) -> None:
    from dagster_bento.zones import _globs_overlap

    assert _globs_overlap(a, b) is overlap
    assert _globs_overlap(b, a) is overlap


def test_glob_keys_with_character_classes() -> None:
    p = PurposePolicy(
        zones={"A": Zone("A", fs("A"))},
        tables={"Events.Day_[0-9]*": fs("A"), "[Raw].[Dump]": None, "bare_*": fs()},
        reclassifications=(),
        default_schema="Core",
    )
    assert p.declared_label("events.day_1x") == fs("A")
    assert p.declared_label("events.day_x") is UNKNOWN
    assert p.declared_label("raw.dump") is None
    assert p.declared_label("bare_table") == fs()  # a bare pattern gets the default schema
    assert p.declared_label("other.bare_table") is UNKNOWN


def test_row_16_runtime_reclassification(policy: PurposePolicy) -> None:
    r = policy.reclassification_for("msg_daily_counts", "msg.daily_counts")
    assert r is not None and r.drop == fs("MESSAGING")
    assert policy.reclassification_for("msg_daily_counts", "tmp.other") is None
    assert policy.reclassification_for("integrity_x", "msg.daily_counts") is None
    assert output_label([fs("MESSAGING")], "MESSAGING", reclassification=r) == fs()
    v, label = _write(policy, "msg.daily_counts", fs(), zone="MESSAGING")
    assert v is None and label == fs()
    required = output_label([fs("MESSAGING")], "INTEGRITY", reclassification=None)
    v, _ = _write(policy, "msg.daily_counts", required, zone="INTEGRITY")
    assert v is not None and v.required_zones == fs("INTEGRITY", "MESSAGING")


def test_row_16_reclassification_matches_notebook_stem(policy: PurposePolicy) -> None:
    entry = job(
        "msg_counts_nightly",
        "MESSAGING",
        ["msg.messages"],
        ["msg.daily_counts"],
        notebook="notebooks/msg_daily_counts.ipynb",
    )
    violations, computed = check_jobs(policy, [entry])
    assert violations == []
    assert computed["msg.daily_counts"] == fs()
    # the run-time lookup matches the stem when given the notebook path
    assert policy.reclassification_for("msg_counts_nightly", "msg.daily_counts") is None
    r = policy.reclassification_for("msg_counts_nightly", "msg.daily_counts", notebook_path=entry.notebook_path)
    assert r is not None and r.drop == fs("MESSAGING")


def test_row_20_conflict_details_and_non_conflicts(policy: PurposePolicy) -> None:
    a = job("a", "ANALYTICS", ["core.users"], ["tmp.shared"])
    b = job("b", "ADS", ["ads.clicks"], ["tmp.shared"])
    violations, _ = run(policy, a, b)
    assert violations[0].conflicting_writers == (("b", fs("ADS")),)
    assert violations[0].required_zones == fs("ANALYTICS")
    same = job("c", "ANALYTICS", ["core.users", "ref.countries"], ["tmp.shared"])
    assert run(policy, a, same)[0] == []  # same label: no flapping
    appender = job("b", "ADS", ["ads.clicks"], [("tmp.shared", "append")])
    violations, computed = run(policy, a, appender)
    assert violations == []  # append: S ∪ C covers both writers
    assert computed["tmp.shared"] == fs("ADS", "ANALYTICS")
    declared = [job("x", "ANALYTICS", [], ["analytics.secure"]), job("y", "HEALTH", [], ["analytics.secure"])]
    assert run(policy, *declared)[0] == []  # declared label never flaps


# --------------------------------------------------------------------------------------------------
# 21 normalisation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ('"CORE"."Users"', "core.users"),
        ("users", "core.users"),
        ("Users", "core.users"),
        ("CORE.USERS", "core.users"),
        ("`core`.`users`", "core.users"),
        ("[core].[users]", "core.users"),
        (" core . users ", "core.users"),
        ('"we""ird"', 'core."we""ird"'),  # canonical form: a part that is not plain lower case is quoted
        ('core."x.y"', 'core."x.y"'),
        ("cat.core.users", "cat.core.users"),
        ("events.clicks_*", "events.clicks_*"),
    ],
)
def test_row_21_normalise(name: str, expected: str) -> None:
    assert normalize_table_name(name, "core") == expected
    assert normalize_table_name(expected, "core") == expected  # canonical names normalise to themselves


@pytest.mark.parametrize(
    ("name", "expected"),
    [('"Salaries"', 'core."Salaries"'), ("Salaries", "core.salaries"), ('"CORE"."Users"', '"CORE"."Users"'),
     ('"a.b"', 'core."a.b"'), ("c.s.t", "c.s.t")],
)
def test_normalise_postgres_quoted_names_keep_case(name: str, expected: str) -> None:
    assert normalize_table_name(name, "core", "postgres") == expected
    assert normalize_table_name(expected, "core", "postgres") == expected


@pytest.mark.parametrize("name", ["", "core.", ".users", '"core.users', "a.b.c.d", "core users", 'co"re.users'])
def test_normalise_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        normalize_table_name(name, "core")


def test_row_21_both_spellings_resolve(policy: PurposePolicy) -> None:
    entry = job("user_stats", "ANALYTICS", ['"CORE"."Users"', "users"], ["analytics.user_stats"])
    violations, computed = run(policy, entry)
    assert violations == []
    assert computed["analytics.user_stats"] == fs("ANALYTICS")
    assert resolve_label(policy, '"CORE"."Users"', {}) == fs("ANALYTICS")


# --------------------------------------------------------------------------------------------------
# 22 invalid policy
# --------------------------------------------------------------------------------------------------

VALID_HEAD = "version: 1\nzones:\n  A: {permits: [A]}\n  B: {permits: [B, A]}\n"

INVALID = [
    pytest.param("version: 1\nzones:\n  ADS: {permits: [ANALYTICS]}\n  ANALYTICS: {permits: [ANALYTICS]}\n",
                 [(3, "zone ADS does not permit itself")], id="zone-does-not-permit-itself"),
    pytest.param(VALID_HEAD + "  C: {permits: [C, NOPE]}\n", [(5, "zone C permits unknown zone 'NOPE'")], id="permits-unknown-zone"),
    pytest.param(VALID_HEAD + "  C: {permits: [C], mode: audit}\n", [(5, "mode of zone C must be 'enforce' or 'log'")], id="bad-mode"),
    pytest.param(VALID_HEAD + "  C: {mode: log}\n", [(5, "zone C has no 'permits'")], id="missing-permits"),
    pytest.param(VALID_HEAD + "  C: {permits: [C], colour: red}\n", [(5, "unknown key 'colour' in zone C")], id="unknown-zone-key"),
    pytest.param(VALID_HEAD + "owner: me\n", [(5, "unknown key 'owner' in the policy file")], id="unknown-top-key"),
    pytest.param(VALID_HEAD + "tables:\n  s.t: {zone: [A]}\n", [(6, "unknown key 'zone' in table s.t")], id="unknown-table-key"),
    pytest.param(VALID_HEAD + "tables:\n  s.t: {zones: [Z]}\n", [(6, "table s.t uses unknown zone 'Z'")], id="table-unknown-zone"),
    pytest.param(VALID_HEAD + "tables:\n  s.t: {zones: [A]}\n  S.T: {zones: [A]}\n",
                 [(7, "table 's.t' is declared twice (first at line 6)")], id="duplicate-after-normalisation"),
    pytest.param(VALID_HEAD + "tables:\n  s.t: {zones: [A]}\n  s.t: {zones: [B]}\n",
                 [(7, "duplicate key 's.t' in 'tables' (first at line 6)")], id="duplicate-yaml-key"),
    pytest.param(VALID_HEAD + "tables:\n  'ev.*': {zones: [A]}\n  'ev.clicks_*': {zones: [B]}\n",
                 [(7, "globs 'ev.*' and 'ev.clicks_*' overlap but declare different zones")], id="conflicting-globs"),
    pytest.param("version: 2\nzones:\n  A: {permits: [A]}\n", [(1, "unsupported version; expected 1")], id="bad-version"),
    pytest.param("zones:\n  A: {permits: [A]}\n", [(1, "missing 'version'")], id="missing-version"),
    pytest.param("version: 1\nzones:\n  A: {permits: [A]\n", [(4, "invalid YAML")], id="yaml-syntax-error"),
    pytest.param("", [(None, "the policy file is empty")], id="empty-file"),
    pytest.param(
        VALID_HEAD + "reclassifications:\n  - {notebook: ghost, output: s.t, drop: [A], justification: j, approved_by: p}\n",
        [(6, "reclassification names unknown notebook 'ghost'")],
        id="reclassification-unknown-notebook",
    ),
    pytest.param(
        VALID_HEAD + "reclassifications:\n  - {notebook: nb, output: s.t, drop: [Z], justification: j, approved_by: p}\n",
        [(6, "reclassification drops unknown zone 'Z'")],
        id="reclassification-unknown-zone",
    ),
    pytest.param(
        VALID_HEAD + "reclassifications:\n  - {notebook: nb, output: s.t, drop: [A]}\n",
        [(6, "reclassification is missing justification, approved_by")],
        id="reclassification-unjustified",
    ),
    pytest.param(
        VALID_HEAD + "reclassifications:\n  - {notebook: nb, output: s.t, drop: [A], justification: j, approved_by: p, until: x}\n",
        [(6, "unknown key 'until' in a reclassification")],
        id="reclassification-unknown-key",
    ),
    pytest.param(
        "version: 1\nzones:\n  A: {permits: [B]}\n  B: {permits: [B, C]}\n",
        [(3, "zone A does not permit itself"), (4, "zone B permits unknown zone 'C'")],
        id="all-problems-at-once",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_row_22_invalid_policy(tmp_path: Path, text: str, expected: list[tuple[int | None, str]]) -> None:
    path = tmp_path / "purpose_zones.yaml"
    path.write_text(text)
    with pytest.raises(PurposeZoneDefinitionError) as info:
        load_policy(path, notebooks={"nb"})
    err = info.value
    assert {v.code for v in err.violations} == {ViolationCode.INVALID_POLICY}
    got = sorted((v.line, v.detail) for v in err.violations)
    assert len(got) == len(expected)
    for (line, detail), (want_line, want_detail) in zip(got, sorted(expected, key=lambda e: (e[0] or 0, e[1])), strict=True):
        assert line == want_line
        assert detail.startswith(want_detail)
    assert all(p.code == "PZ009" and p.notebook == str(path) and p.severity == "error" for p in err.problems)
    assert str(err).startswith(PROJECT_PROBLEMS_HEADER)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PurposeZoneDefinitionError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert info.value.violations[0].detail.startswith("cannot read the policy file")


def test_reclassification_notebooks_check_skipped_without_names(tmp_path: Path) -> None:
    path = tmp_path / "purpose_zones.yaml"
    path.write_text(
        VALID_HEAD
        + "tables:\n  s.t: {zones: [A]}\nreclassifications:\n"
        + "  - {notebook: ghost, output: s.t, drop: [A], justification: j, approved_by: p}\n"
    )
    p = load_policy(path)
    assert p.reclassifications == (Reclassification("ghost", "s.t", fs("A"), "j", "p"),)
    assert p.source == str(path)


def test_fixture_policy_loads(policy: PurposePolicy) -> None:
    assert policy.default_schema == "core" and policy.default_dialect == "trino"
    assert policy.zones["PUBLIC"].permits == "*"
    assert policy.zones["BETA"].mode == "log"
    assert policy.tables["legacy.raw_dump"] is None
    assert policy.tables["ref.countries"] == fs()
    assert policy.permits("PUBLIC", "HEALTH") and not policy.permits("ADS", "ANALYTICS")
    assert not policy.permits("UNDEFINED", "ADS")


def test_reclassification_references_checked_against_jobs(policy: PurposePolicy) -> None:
    # the notebook exists but does not write the reclassified output
    violations, _ = check_jobs(policy, [job("msg_daily_counts", "MESSAGING", ["msg.messages"], ["tmp.x"])])
    assert [(v.code, v.notebook, v.table) for v in violations] == [
        (ViolationCode.INVALID_POLICY, str(FIXTURE), "msg.daily_counts")
    ]
    assert "does not write 'msg.daily_counts'" in violations[0].detail
    # the notebook writes it but never carries the dropped zone
    violations, _ = check_jobs(policy, [job("msg_daily_counts", "ANALYTICS", ["core.users"], ["msg.daily_counts"])])
    by_code = {v.code.value: v for v in violations}
    assert sorted(by_code) == ["PZ004", "PZ009"]
    assert "drops {MESSAGING}, which the output does not carry" in by_code["PZ009"].detail


# --------------------------------------------------------------------------------------------------
# Write rule (own cases)
# --------------------------------------------------------------------------------------------------


def _write(
    policy: PurposePolicy,
    table: str,
    required: frozenset[str],
    *,
    stored: frozenset[str] | None = None,
    exists_unlabeled: bool = False,
    mode: str = "overwrite",
    zone: str = "ADS",
) -> tuple[ZoneViolation | None, frozenset[str]]:
    return check_write(
        policy,
        notebook="nb",
        notebook_path="notebooks/nb.ipynb",
        notebook_zone=zone,
        cell=1,
        table=table,
        required=required,
        stored=stored,
        exists_unlabeled=exists_unlabeled,
        mode=mode,
        phase="pre_upload",
    )


WRITES = [
    pytest.param("tmp.new", fs("ADS"), None, False, "overwrite", None, fs("ADS"), id="new-table"),
    pytest.param("tmp.d", fs("ADS"), fs("HEALTH"), False, "overwrite", None, fs("ADS"), id="overwrite-replaces"),
    pytest.param("tmp.d", fs("ADS"), fs("HEALTH"), False, "append", None, fs("ADS", "HEALTH"), id="append-unions"),
    pytest.param("tmp.d", fs("ADS"), fs("HEALTH"), False, "overwrite_partition", None, fs("ADS", "HEALTH"), id="partition-unions"),
    pytest.param("tmp.d", fs(), fs("ADS"), False, "overwrite", None, fs(), id="overwrite-may-shrink"),
    pytest.param("tmp.x", fs("ADS"), None, True, "append", "PZ005", fs("ADS"), id="exists-unlabeled"),
    pytest.param("tmp.x", fs("ADS"), fs("ADS"), True, "append", None, fs("ADS"), id="stored-label-wins-over-unlabeled-flag"),
    pytest.param("legacy.raw_dump", fs("ADS"), None, False, "overwrite", "PZ005", fs("ADS"), id="declared-unclassified"),
    pytest.param("analytics.secure", fs("ANALYTICS"), None, False, "append", None, fs("ANALYTICS", "HEALTH"), id="declared-more-restrictive"),
    pytest.param("analytics.secure", fs("ANALYTICS"), fs("ADS"), False, "append", None, fs("ANALYTICS", "HEALTH"), id="declared-wins-over-stored"),
    pytest.param("ref.countries", fs("ADS"), None, False, "overwrite", "PZ004", fs(), id="declared-unrestricted"),
    pytest.param("events.clicks_1", fs("ADS"), None, False, "overwrite", None, fs("ADS"), id="declared-by-glob"),
]


@pytest.mark.parametrize(("table", "required", "stored", "exists", "mode", "code", "label"), WRITES)
def test_write_rule(
    policy: PurposePolicy,
    table: str,
    required: frozenset[str],
    stored: frozenset[str] | None,
    exists: bool,
    mode: str,
    code: str | None,
    label: frozenset[str],
) -> None:
    v, new = _write(policy, table, required, stored=stored, exists_unlabeled=exists, mode=mode)
    assert (v.code.value if v else None) == code
    assert new == label
    if v is not None:
        assert v.enforced and v.required_zones == required


def test_log_mode_write_is_not_enforced(policy: PurposePolicy) -> None:
    required = output_label([fs("BETA")], "ANALYTICS", reclassification=None)
    v, label = _write(policy, "analytics.ctr", required, zone="ANALYTICS")
    assert v is not None and v.code is ViolationCode.OUTPUT_UNDERLABELED and not v.enforced
    assert label == fs("ANALYTICS")
    # statically as well
    violations, _ = run(policy, job("r", "ANALYTICS", ["beta.signals"], ["analytics.ctr"]))
    assert summary(violations) == [("r", "PZ001", "beta.signals", False), ("r", "PZ004", "analytics.ctr", False)]
    # one enforce zone among the missing ones makes it block
    v, _ = _write(policy, "analytics.ctr", fs("ANALYTICS", "BETA", "ADS"), zone="ADS")
    assert v is not None and v.enforced


def test_unclassified_output_is_enforced_even_in_log_zone(policy: PurposePolicy) -> None:
    v, _ = _write(policy, "tmp.x", fs("BETA"), exists_unlabeled=True, zone="BETA")
    assert v is not None and v.code is ViolationCode.UNCLASSIFIED_OUTPUT and v.enforced


def test_unknown_write_mode(policy: PurposePolicy) -> None:
    with pytest.raises(ValueError, match="unknown write mode 'upsert'"):
        _write(policy, "tmp.x", fs("ADS"), mode="upsert")
    with pytest.raises(ValueError):
        check_jobs(policy, [job("a", "ADS", [], [("tmp.x", "upsert")])])


def test_output_label() -> None:
    assert output_label([], "ADS", reclassification=None) == fs("ADS")
    assert output_label([fs(), fs("B"), fs("C", "B")], "ADS", reclassification=None) == fs("ADS", "B", "C")
    r = Reclassification("nb", "s.t", fs("B", "ADS"), "j", "p")
    assert output_label([fs("B", "C")], "ADS", reclassification=r) == fs("C")


# --------------------------------------------------------------------------------------------------
# Propagation (own cases)
# --------------------------------------------------------------------------------------------------

CYCLE_POLICY = PurposePolicy(
    zones={
        "Z1": Zone("Z1", fs("Z1", "Z2")),
        "Z2": Zone("Z2", fs("Z1", "Z2")),
        "Z3": Zone("Z3", fs("Z3")),
        "OPEN": Zone("OPEN", "*"),
    },
    tables={"src.one": fs("Z1"), "src.open": fs("OPEN")},
    reclassifications=(),
)


def test_fixed_point_with_a_cycle() -> None:
    a = job("a", "Z1", ["src.one", "tmp.y"], ["tmp.x"])
    b = job("b", "Z2", ["tmp.x"], ["tmp.y"])
    c = job("c", "Z3", ["tmp.y"], ["tmp.z"])
    violations, computed = check_jobs(CYCLE_POLICY, [c, b, a])
    assert computed["tmp.x"] == computed["tmp.y"] == fs("Z1", "Z2")
    assert computed["tmp.z"] == fs("Z1", "Z2", "Z3")
    (v,) = violations
    assert (v.notebook, v.code, v.table) == ("c", ViolationCode.READ_NOT_PERMITTED, "tmp.y")
    assert v.path == ("src.one", "a", "tmp.x", "b", "tmp.y")


def test_self_append_fixed_point() -> None:
    log = job("log", "Z1", ["src.one", "tmp.log"], [("tmp.log", "append")])
    other = job("other", "Z2", ["src.open"], [("tmp.log", "append")])
    violations, computed = check_jobs(CYCLE_POLICY, [log, other])
    assert violations == []
    assert computed["tmp.log"] == fs("OPEN", "Z1", "Z2")


def test_stored_labels_in_static_check() -> None:
    stored = {"old.t": fs("Z3"), "tmp.acc": fs("Z3")}
    reader = job("r", "Z1", ["old.t"], ["tmp.r"])
    appender = job("acc", "Z1", ["src.one"], [("tmp.acc", "append")])
    overwriter = job("ow", "Z1", ["src.one"], [("tmp.ow", "overwrite")])
    violations, computed = check_jobs(CYCLE_POLICY, [reader, appender, overwriter], stored=stored | {"tmp.ow": fs("Z3")})
    assert summary(violations) == [("r", "PZ001", "old.t", True)]
    assert computed["tmp.acc"] == fs("Z1", "Z3")  # old rows keep their zones
    assert computed["tmp.ow"] == fs("Z1")  # overwrite replaces the stored label
    downstream = job("d", "Z1", ["tmp.acc"], ["tmp.d"])
    violations, _ = check_jobs(CYCLE_POLICY, [appender, downstream], stored=stored)
    assert violations[0].path == ("tmp.acc",)  # the zone came from the stored label


def test_written_tables_are_known_not_pz003(policy: PurposePolicy) -> None:
    violations, _ = run(
        policy,
        job("w", "ANALYTICS", ["core.users"], ["tmp.fresh"]),
        job("r", "ANALYTICS", ["tmp.fresh"], ["tmp.out"]),
    )
    assert violations == []


def test_undeclared_input(policy: PurposePolicy) -> None:
    nb = job(
        "u",
        "ADS",
        [(0, "ads.clicks"), (2, "core.users"), (3, "tmp.mine")],
        [("tmp.mine", "append")],
        declared_inputs=["ADS.CLICKS"],
    )
    violations, _ = run(policy, nb)
    assert summary(violations) == [("u", "PZ006", "core.users", True)]
    assert violations[0].cell == 2


def test_undefined_notebook_zone(policy: PurposePolicy) -> None:
    violations, _ = run(policy, job("x", "MARKETING", ["core.users"], ["tmp.x"]))
    (v,) = violations
    assert (v.code, v.notebook, v.notebook_path) == (ViolationCode.INVALID_POLICY, "x", "notebooks/x.ipynb")


def test_unknown_zone_in_a_stored_label_fails_closed(policy: PurposePolicy) -> None:
    v = check_read(
        policy,
        notebook="n",
        notebook_path="",
        notebook_zone="ADS",
        cell=None,
        table="tmp.t",
        label=resolve_label(policy, "tmp.t", {"tmp.t": fs("RETIRED")}),
        phase="pre_fetch",
    )
    assert v is not None and v.denied_by == (("RETIRED", None),) and v.enforced


def test_violations_are_sorted_and_deterministic(policy: PurposePolicy) -> None:
    jobs = [
        job("z", "ANALYTICS", [(5, "ads.clicks"), (1, "msg.messages"), (1, "core.userz")], ["analytics.ctr"]),
        job("a", "ADS", ["legacy.raw_dump"], ["tmp.a"]),
    ]
    first, _ = run(policy, *jobs)
    second, _ = run(policy, *reversed(jobs))
    assert first == second
    assert [(v.notebook, v.code.value, v.cell) for v in first] == [
        ("a", "PZ002", 0),
        ("z", "PZ001", 1),
        ("z", "PZ001", 5),
        ("z", "PZ003", 1),
        ("z", "PZ004", 1),
    ]


def test_duplicate_job_names(policy: PurposePolicy) -> None:
    with pytest.raises(ValueError, match="unique"):
        check_jobs(policy, [job("a", "ADS"), job("a", "ADS")])


def test_empty_policy_refuses_everything() -> None:
    p = empty_policy()
    assert p.default_schema == "main"
    assert p.declared_label("t") is UNKNOWN
    v = check_read(
        p, notebook="n", notebook_path="", notebook_zone="A", cell=0, table="main.t", label=UNKNOWN, phase="pre_fetch"
    )
    assert v is not None and v.code is ViolationCode.UNKNOWN_TABLE


# --------------------------------------------------------------------------------------------------
# Messages, problems, errors
# --------------------------------------------------------------------------------------------------


def _v(code: ViolationCode, **kw: Any) -> ZoneViolation:
    base: dict[str, Any] = dict(
        code=code,
        phase="definition",
        notebook="nb",
        notebook_zone="ADS",
        table="s.t",
        table_zones=None,
        required_zones=None,
        cell=1,
        notebook_path="notebooks/nb.ipynb",
    )
    return ZoneViolation(**(base | kw))


def test_golden_design_examples() -> None:
    first = _v(
        ViolationCode.READ_NOT_PERMITTED,
        phase="pre_fetch",
        notebook="ads_ctr_daily",
        table="msg.messages",
        table_zones=fs("MESSAGING"),
        denied_by=(("MESSAGING", fs("MESSAGING", "INTEGRITY")),),
        hint="read an approved aggregate (e.g. msg.daily_counts) or change the notebook's zone.",
    )
    assert first.message() == (
        "[PZ001 READ_NOT_PERMITTED] pre_fetch: notebook 'ads_ctr_daily' (zone ADS) may not read 'msg.messages' "
        "(zones {MESSAGING}); zone MESSAGING permits {INTEGRITY, MESSAGING}. Hint: read an approved aggregate "
        "(e.g. msg.daily_counts) or change the notebook's zone."
    )
    third = _v(
        ViolationCode.READ_NOT_PERMITTED,
        notebook="growth_report",
        notebook_zone="ANALYTICS",
        table="tmp.user_msgs",
        table_zones=fs("INTEGRITY", "MESSAGING", "ANALYTICS"),
        path=("msg.messages", "integrity_join", "tmp.user_msgs"),
    )
    assert third.message() == (  # the design note's example, with the zone set sorted
        "[PZ001 READ_NOT_PERMITTED] definition: notebook 'growth_report' (zone ANALYTICS) may not read "
        "'tmp.user_msgs' (computed zones {ANALYTICS, INTEGRITY, MESSAGING}) via msg.messages -> integrity_join "
        "-> tmp.user_msgs."
    )


def test_checkers_reproduce_design_examples(policy: PurposePolicy) -> None:
    v = check_read(
        policy,
        notebook="ads_ctr_daily",
        notebook_path="notebooks/ads_ctr_daily.ipynb",
        notebook_zone="ADS",
        cell=2,
        table="msg.messages",
        label=resolve_label(policy, "msg.messages", {}),
        phase="pre_fetch",
    )
    assert v is not None and v.message() == (
        "[PZ001 READ_NOT_PERMITTED] pre_fetch: notebook 'ads_ctr_daily' (zone ADS) may not read 'msg.messages' "
        "(zones {MESSAGING}); zone MESSAGING permits {INTEGRITY, MESSAGING}. Hint: read an approved aggregate "
        "(e.g. msg.daily_counts) or change the notebook's zone."
    )
    w, _ = check_write(
        policy,
        notebook="ads_ctr_daily",
        notebook_path="notebooks/ads_ctr_daily.ipynb",
        notebook_zone="ADS",
        cell=5,
        table="analytics.ctr",
        required=fs("ADS", "ANALYTICS"),
        stored=None,
        exists_unlabeled=False,
        mode="overwrite",
        phase="pre_upload",
    )
    assert w is not None
    expected = (
        "[PZ004 OUTPUT_UNDERLABELED] pre_upload: notebook 'ads_ctr_daily' (zone ADS) may not write 'analytics.ctr' "
        "(zones {ANALYTICS}); data requires {ADS, ANALYTICS}, missing {ADS}. Hint: add ADS to analytics.ctr in "
        "purpose_zones.yaml (this restricts existing readers) or write to a new table."
    )
    assert w.message() == expected.replace("purpose_zones.yaml", FIXTURE.name)


def test_golden_message_per_code(policy: PurposePolicy, tmp_path: Path) -> None:
    """One violation of each code, produced by the checkers, with its exact message."""
    messages: dict[str, str] = {}
    violations, _ = run(
        policy,
        job("g1", "ANALYTICS", ["ads.clicks"], ["tmp.g1"]),
        job("g2", "ANALYTICS", ["legacy.raw_dump"], ["tmp.g2"]),
        job("g3", "ANALYTICS", ["core.userz"], ["tmp.g3"]),
        job("g4", "ADS", ["ads.clicks"], ["analytics.ctr"]),
        job("g6", "ADS", ["ads.clicks"], ["tmp.g6"], declared_inputs=[]),
        job("g7", "ANALYTICS", [], ["tmp.g7"], unresolvable=[(0, "src")]),
        job("g8a", "ANALYTICS", ["core.users"], ["tmp.g8"]),
        job("g8b", "ADS", ["ads.clicks"], ["tmp.g8"]),
    )
    for v in violations:
        messages.setdefault(v.code.value, v.message())
    v5, _ = _write(policy, "tmp.g5", fs("ADS"), exists_unlabeled=True)
    assert v5 is not None
    messages["PZ005"] = v5.message()
    path = tmp_path / "purpose_zones.yaml"
    path.write_text("version: 1\nzones:\n  ADS: {permits: [ANALYTICS]}\n  ANALYTICS: {permits: [ANALYTICS]}\n")
    with pytest.raises(PurposeZoneDefinitionError) as info:
        load_policy(path)
    messages["PZ009"] = info.value.violations[0].message().replace(str(path), "purpose_zones.yaml")
    f = FIXTURE.name
    assert messages == {
        "PZ001": (
            "[PZ001 READ_NOT_PERMITTED] definition: notebook 'g1' (zone ANALYTICS) may not read 'ads.clicks' "
            "(zones {ADS}); zone ADS permits {ADS}. Hint: read only tables whose zones permit ANALYTICS, or "
            "change the notebook's zone."
        ),
        "PZ002": (
            "[PZ002 UNCLASSIFIED_TABLE] definition: notebook 'g2' (zone ANALYTICS) may not read 'legacy.raw_dump' "
            f"(declared without zones: unclassified tables are unreadable). Hint: classify legacy.raw_dump in {f} "
            "(`zones: []` marks it unrestricted)."
        ),
        "PZ003": (
            "[PZ003 UNKNOWN_TABLE] definition: notebook 'g3' (zone ANALYTICS) may not read 'core.userz' (in neither "
            f"the policy nor the label store). Hint: did you mean 'core.users'? Otherwise declare it in {f}."
        ),
        "PZ004": (
            "[PZ004 OUTPUT_UNDERLABELED] definition: notebook 'g4' (zone ADS) may not write 'analytics.ctr' "
            "(zones {ANALYTICS}); data requires {ADS}, missing {ADS}. Hint: add ADS to analytics.ctr in "
            f"{f} (this restricts existing readers) or write to a new table."
        ),
        "PZ005": (
            "[PZ005 UNCLASSIFIED_OUTPUT] pre_upload: notebook 'nb' (zone ADS) may not write 'tmp.g5' (exists "
            f"without a label); data requires {{ADS}}. Hint: declare tmp.g5 in {f}, or drop it so the system "
            "can label it on first write."
        ),
        "PZ006": (
            "[PZ006 UNDECLARED_INPUT] definition: notebook 'g6' (zone ADS) reads 'ads.clicks', which is not a "
            "declared input. Hint: add ads.clicks to the notebook's declared inputs."
        ),
        "PZ007": (
            "[PZ007 UNRESOLVABLE_TABLE_NAME] definition: notebook 'g7' (zone ANALYTICS) reads a table named by "
            "free-string parameter 'src'; its zones can only be checked at run time, before each fetch. Hint: "
            "give 'src' a finite domain (an enum or Literal choices) so every value is checked here."
        ),
        "PZ008": (
            "[PZ008 CONFLICTING_WRITERS] definition: notebook 'g8a' (zone ANALYTICS) overwrites 'tmp.g8' with "
            "zones {ANALYTICS}, but other overwriters give it different zones: 'g8b' {ADS}. Hint: write to "
            f"separate tables, use append mode, or declare tmp.g8 in {f} with zones covering every writer."
        ),
        "PZ009": (
            "[PZ009 INVALID_POLICY] definition: policy 'purpose_zones.yaml' line 3: zone ADS does not permit "
            "itself. Hint: add ADS to its permits list."
        ),
    }


def test_problem_and_dict_contract(policy: PurposePolicy) -> None:
    (v,), _ = run(policy, job("report", "ANALYTICS", ["ads.clicks"], ["analytics.report"]))
    problem = v.to_problem()
    assert problem == Problem(
        notebook="notebooks/report.ipynb",
        cell=0,
        code="PZ001",
        message=v.message(),
        table="ads.clicks",
        severity="error",
    )
    d = v.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["code"] == "PZ001" and d["name"] == "READ_NOT_PERMITTED"
    assert d["table_zones"] == ["ADS"] and d["denied_by"] == {"ADS": ["ADS"]}
    assert d["message"] == v.message()
    assert _v(ViolationCode.UNKNOWN_TABLE, notebook_path="").to_problem().notebook == "nb"


def test_definition_error_aggregates_problems(policy: PurposePolicy) -> None:
    violations, _ = run(
        policy,
        job("b", "ANALYTICS", ["ads.clicks"], ["tmp.b"]),
        job("a", "ADS", ["legacy.raw_dump"], ["tmp.a"]),
    )
    err = PurposeZoneDefinitionError(violations)
    assert [v.notebook for v in err.violations] == ["a", "b"]
    assert [p.code for p in err.problems] == ["PZ002", "PZ001"]
    assert str(err).splitlines()[0] == PROJECT_PROBLEMS_HEADER
    assert "notebooks/a.ipynb [cell 0]: PZ002 [PZ002 UNCLASSIFIED_TABLE]" in str(err)


def test_violation_error(policy: PurposePolicy) -> None:
    v = check_read(
        policy,
        notebook="report",
        notebook_path="notebooks/report.ipynb",
        notebook_zone="ANALYTICS",
        cell=3,
        table="ads.clicks",
        label=fs("ADS"),
        phase="pre_fetch",
    )
    assert v is not None
    err = violation_error(v)
    assert isinstance(err, DagsterBentoPolicyError)
    assert (err.notebook, err.cell, err.message) == ("notebooks/report.ipynb", 3, v.message())
    assert err.metadata["violation"].data == v.to_dict()


# --------------------------------------------------------------------------------------------------
# Property: outputs are at least as restrictive as everything upstream (Meta's invariant)
# --------------------------------------------------------------------------------------------------

ZONES = ("A", "B", "C", "D")
zone_sets = st.frozensets(st.sampled_from(ZONES))


@st.composite
def projects(draw: st.DrawFn) -> tuple[PurposePolicy, list[ZoneJob], dict[str, frozenset[str]]]:
    declared = {f"src.d{i}": draw(zone_sets) for i in range(draw(st.integers(0, 3)))}
    stored = {f"src.s{i}": draw(zone_sets) for i in range(draw(st.integers(0, 2)))}
    sources = sorted(declared) + sorted(stored)
    n_jobs = draw(st.integers(1, 6))
    pool = [f"out.t{i}" for i in range(draw(st.integers(1, 6)))]
    writes: list[list[tuple[str, str]]] = []
    for _ in range(n_jobs):
        targets = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
        writes.append([(t, draw(st.sampled_from(["overwrite", "append", "overwrite_partition"]))) for t in targets])
    jobs = []
    for i in range(n_jobs):
        # read only tables every writer of which comes earlier: the job graph stays acyclic
        earlier = sorted({t for w in writes[:i] for t, _ in w} - {t for w in writes[i:] for t, _ in w})
        reads = draw(st.lists(st.sampled_from(sources + earlier), max_size=3, unique=True)) if sources + earlier else []
        jobs.append(
            ZoneJob(
                name=f"j{i}",
                notebook_path=f"notebooks/j{i}.ipynb",
                zone=draw(st.sampled_from(ZONES)),
                reads=tuple((0, t) for t in reads),
                writes=tuple((1, t, m) for t, m in writes[i]),
            )
        )
    written = [(j.name, t) for j in jobs for _c, t, _m in j.writes]
    chosen = draw(st.lists(st.sampled_from(written), max_size=3, unique=True))
    reclassifications = tuple(
        Reclassification(nb, out, draw(zone_sets.filter(bool)), "aggregate", "review-1") for nb, out in chosen
    )
    policy = PurposePolicy(
        zones={z: Zone(z, "*" if draw(st.booleans()) else fs(z), draw(st.sampled_from(["enforce", "log"]))) for z in ZONES},
        tables=declared,
        reclassifications=reclassifications,
    )
    return policy, jobs, stored


def _reaching_zones(policy: PurposePolicy, jobs: list[ZoneJob], stored: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """Reference model: zone z reaches table T iff some lineage path carries z into T without a
    reclassification dropping it on the way. Written independently of the module."""
    writers: dict[str, list[ZoneJob]] = {}
    for j in jobs:
        for _c, t, _m in j.writes:
            writers.setdefault(t, []).append(j)

    def reach(table: str) -> frozenset[str]:
        if table not in writers:
            return policy.tables.get(table, stored.get(table, frozenset()))  # type: ignore[return-value]
        zones: set[str] = set()
        for j in writers[table]:
            carried = {j.zone}.union(*(reach(t) for _c, t in j.reads))
            drop = next((r.drop for r in policy.reclassifications if (r.notebook, r.output) == (j.name, table)), frozenset())
            zones |= carried - drop
        return frozenset(zones)

    return {t: reach(t) for t in writers}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(projects())
def test_property_outputs_cover_everything_upstream(project: tuple[PurposePolicy, list[ZoneJob], dict[str, frozenset[str]]]) -> None:
    policy, jobs, stored = project
    _violations, computed = check_jobs(policy, jobs, stored=stored)
    expected = _reaching_zones(policy, jobs, stored)
    assert set(computed) == set(expected)
    for table, zones in expected.items():
        assert computed[table] >= zones  # at least as restrictive as everything upstream
        assert computed[table] == zones  # and nothing more (conservative rule: inputs ∪ own zone)

    # Run the jobs in order through the run-time API: every committed label covers the data written,
    # and never exceeds the static label (so the definition-time read checks are conservative).
    store: dict[str, frozenset[str]] = dict(stored)
    data: dict[str, frozenset[str]] = dict(stored) | {t: z for t, z in policy.tables.items() if z is not None}
    for j in jobs:
        read = [resolve_label(policy, t, store) for _c, t in j.reads]
        fetched = [lab for lab in read if isinstance(lab, frozenset)]
        assert len(fetched) == len(read)
        truth = {j.zone}.union(*(data[t] for _c, t in j.reads))
        for _c, table, mode in j.writes:
            r = policy.reclassification_for(j.name, table)
            c = output_label(fetched, j.zone, reclassification=r)
            v, label = check_write(
                policy,
                notebook=j.name,
                notebook_path=j.notebook_path,
                notebook_zone=j.zone,
                cell=1,
                table=table,
                required=c,
                stored=store.get(table),
                exists_unlabeled=False,
                mode=mode,
                phase="pre_upload",
            )
            assert v is None
            written = frozenset(truth) - (r.drop if r else frozenset())
            data[table] = written if mode == "overwrite" else data.get(table, frozenset()) | written
            store[table] = label
            assert label >= data[table]
            assert label <= computed[table]


# --------------------------------------------------------------------------------------------------
# Table names follow the warehouse's identifier rules (issue 10 item 2): on PostgreSQL a quoted name keeps
# its case, so the policy can label "Salaries" and salaries differently.

CASE_POLICY = """\
version: 1
default_schema: public
zones:
  HR: {permits: [HR]}
  ANALYTICS: {permits: [ANALYTICS]}
tables:
  public."Salaries": {zones: [HR]}
  public.salaries: {zones: [ANALYTICS]}
reclassifications:
  - {notebook: nb, output: 'public."Out"', drop: [HR], justification: j, approved_by: p}
"""


def test_postgres_policy_keeps_quoted_case(tmp_path: Path) -> None:
    path = tmp_path / "purpose_zones.yaml"
    path.write_text(CASE_POLICY)
    own = tmp_path / "own_dialect.yaml"  # the file says so itself
    own.write_text(CASE_POLICY.replace("version: 1\n", "version: 1\ndefault_dialect: postgres\n"))
    for p in (load_policy(path, dialect="postgresql"), load_policy(own)):
        assert p.default_dialect == "postgres"
        assert p.declared_label('public."Salaries"') == fs("HR") and p.declared_label('"Salaries"') == fs("HR")
        assert p.declared_label("salaries") == fs("ANALYTICS") and p.declared_label("SALARIES") == fs("ANALYTICS")
        assert p.reclassifications[0].output == 'public."Out"'
        assert p.reclassification_for("nb", '"Out"') is not None and p.reclassification_for("nb", "out") is None
        # the constructor normalises with the dialect too (and again gives the same keys)
        again = PurposePolicy(zones=p.zones, tables=p.tables, reclassifications=p.reclassifications,
                              default_schema="public", default_dialect="postgres")
        assert dict(again.tables) == dict(p.tables)


def test_without_a_dialect_the_two_spellings_are_one_table(tmp_path: Path) -> None:
    path = tmp_path / "purpose_zones.yaml"
    path.write_text(CASE_POLICY)
    with pytest.raises(PurposeZoneDefinitionError, match="declared twice"):
        load_policy(path)  # DuckDB rules (and no dialect): both keys fold to public.salaries
    with pytest.raises(PurposeZoneDefinitionError, match="declared twice"):
        load_policy(path, dialect="duckdb")
    # a file's own default_dialect wins over the warehouse's
    path.write_text(CASE_POLICY.replace("version: 1\n", "version: 1\ndefault_dialect: duckdb\n"))
    with pytest.raises(PurposeZoneDefinitionError, match="declared twice"):
        load_policy(path, dialect="postgres")


def test_postgres_case_through_dagster_bento_check(tmp_path: Path) -> None:
    """The real command: the project's warehouse is PostgreSQL, the policy sets no dialect; an ANALYTICS
    notebook reading "Salaries" (HR) is refused, reading salaries (ANALYTICS) passes."""
    import subprocess
    import sys

    from tests.nbfactory import add_notebook, sql_cell, write_cell

    (tmp_path / "bento.yaml").write_text("warehouse_url: postgresql://postgres@127.0.0.1:5432/test\n")
    (tmp_path / "purpose_zones.yaml").write_text(
        CASE_POLICY.split("reclassifications:")[0] + "  analytics.*: {zones: [ANALYTICS]}\n")
    add_notebook(tmp_path, "quoted", [sql_cell("df", 'SELECT * FROM "Salaries"'), write_cell("df", "analytics.a")])
    add_notebook(tmp_path, "bare", [sql_cell("df", "SELECT * FROM salaries"), write_cell("df", "analytics.b")])
    out = subprocess.run([sys.executable, "-m", "dagster_bento.cli", "check", str(tmp_path), "--json", "--no-cache"],
                         capture_output=True, text=True, timeout=120)
    problems = json.loads(out.stdout)["problems"]
    errors = [p for p in problems if p["severity"] == "error"]
    assert out.returncode == 1, problems
    assert ("notebooks/quoted.ipynb", 0, "PZ001", 'public."Salaries"') in [
        (p["notebook"], p["cell"], p["code"], p["table"]) for p in errors], problems
    assert {p["notebook"] for p in errors} == {"notebooks/quoted.ipynb"}, problems  # salaries: ANALYTICS, passes
