"""dagster_bento.redact on text: every form a credential is quoted in, and nothing else touched.

The URL forms are in tests/test_lineage.py (test_redact_url); these are the texts that hold them.
"""

import json
import uuid

import pytest

from dagster_bento.redact import redact_text

RUN_ID = str(uuid.UUID("6f1c1a3e-1111-4222-8333-444455556666"))

SECRET_FORMS = [
    # key=value: query strings, libpq conninfo, JDBC, environment
    ("postgresql://db/wh?password=s3cr3t&sslmode=require", "postgresql://db/wh?password=***&sslmode=require"),
    ("host=h user=a password='s3 cr3t' dbname=db", "host=h user=a password=*** dbname=db"),
    ("jdbc:postgresql://db/wh;password=s3cr3t;user=y", "jdbc:postgresql://db/wh;password=***;user=y"),
    ("retry with PGPASSWORD=s3cr3t", "retry with PGPASSWORD=***"),
    ("error: password=s3cr3t", "error: password=***"),
    # key: value (YAML, logs)
    ("password: s3cr3t", "password: ***"),
    ("password: s3 cr3t", "password: ***"),
    ("  db_password:  s3cr3t  \nrows: 5", "  db_password:  ***  \nrows: 5"),
    ("api_key: s3cr3t, rows: 5", "api_key: ***, rows: 5"),
    ("Token:s3cr3t", "Token:***"),
    ("Authorization: Bearer s3cr3t", "Authorization: ***"),
    # JSON, Python reprs, JSON inside a JSON string
    ('"password": "s3cr3t"', '"password": "***"'),
    ('{"user": "u", "password": "s3 cr\\"3t", "rows": 5}', '{"user": "u", "password": "***", "rows": 5}'),
    ("{'password': 's3cr3t'}", "{'password': '***'}"),
    ("{'passwd': 's3cr3t', 'ds': '2026-01-01'}", "{'passwd': '***', 'ds': '2026-01-01'}"),
    ('{"cfg": "{\\"secret\\": \\"s3cr3t\\"}"}', '{"cfg": "{\\"secret\\": \\"***\\"}"}'),
    ("pwd: 's3cr3t'", "pwd: '***'"),
    # URL userinfo, with spaces, @, / in the password
    ("postgresql://u:s3cr3t@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:s3 cr3t@h/db", "postgresql://u:***@h/db"),
    ("connect to postgresql://u:s3 cr@3t@h:5432/db failed", "connect to postgresql://u:***@h:5432/db failed"),
    ("url='postgresql://u:s3 cr3t@h/db' then mail me@x.org", "url='postgresql://u:***@h/db' then mail me@x.org"),
    ("postgresql://a:p@ss/w?rd@db/wh", "postgresql://a:***@db/wh"),
    ("https://token:s3cr3t@h/db and more", "https://token:***@h/db and more"),
]


@pytest.mark.parametrize(("text", "expected"), SECRET_FORMS)
def test_every_form_of_a_secret_is_redacted(text: str, expected: str) -> None:
    out = redact_text(text)
    assert out == expected
    for piece in ("s3cr3t", "s3 cr3t", "cr3t", "cr@3t", "p@ss"):
        assert piece not in out


NOT_SECRETS = [
    "ds: 2026-01-01",
    "rows: 5",
    f"run_id: {RUN_ID}",
    f"http://dagster:3000/runs/{RUN_ID}",
    "partition key: 2026-01-01",
    "exit code: 1",
    "cell 4: x=1",
    "SQL cell 1 of notebooks/xss.ipynb failed: Division by zero",
    "time 12:30:05, elapsed: 0.5 s",
    "postgresql://alice@db:5432/wh?sslmode=require&bento_fetch_role=reader",
    "https://example.com/a/b: see the docs",
    json.dumps({"ds": "2026-01-01", "rows": 5, "user": "alice", "role": "bento_fetch_role"}),
    "{'schedule': 'daily', 'zone': 'ADS'}",
    "write mode: append; table: mart.orders",
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_nothing_else_is_touched(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize("text", ["a" * 50_000, "a." * 25_000, "a-" * 25_000, "a=" * 25_000, "x://a:" * 10_000,
                                  "password=" * 10_000, "'" * 50_000])
def test_long_texts_are_redacted_in_linear_time(text: str) -> None:
    """An error may quote a long blob: every pattern is tried once per word, not from every letter
    (a run of 100,000 letters took minutes)."""
    import time

    start = time.perf_counter()
    redact_text(text)
    assert time.perf_counter() - start < 2.0
