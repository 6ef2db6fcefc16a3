"""The SQL analysis fails closed and agrees with the warehouse (pure tests + a differential corpus run against
real DuckDB and real PostgreSQL)."""

import json
import random

import duckdb
import pytest

from dagster_bento import sql as bsql
from dagster_bento import tables, warehouse, zones
from dagster_bento.sql import SqlAnalysisError, analyse_query

PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
ISSUE_EXAMPLE = ("SELECT employee AS e, salary AS pay, e AS n FROM salaries, "
                 "(WITH salaries AS (SELECT 1 AS one) SELECT one FROM salaries) t")


def tables_of(sql, dialect="duckdb", schema=None):
    default = schema or ("public" if dialect == "postgres" else "main")
    return set(analyse_query(sql, default_schema=default, dialect=dialect).tables)


def refused(sql, dialect="duckdb", match=None):
    with pytest.raises(SqlAnalysisError, match=match) as info:
        tables_of(sql, dialect)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# CTE scope: a CTE name shadows a table only inside its own WITH


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_issue_example_reads_the_table_the_sibling_cte_shadows(dialect):
    schema = "public" if dialect == "postgres" else "main"
    sql = ISSUE_EXAMPLE if dialect == "duckdb" else ISSUE_EXAMPLE.replace(", e AS n", "")
    assert tables_of(sql, dialect) == {f"{schema}.salaries"}


@pytest.mark.parametrize(("sql", "expected"), [
    ("WITH s AS (SELECT 1 AS x) SELECT * FROM s", set()),
    ("SELECT * FROM s WHERE x IN (WITH s AS (SELECT 1 AS x) SELECT x FROM s)", {"main.s"}),
    ("SELECT (WITH s AS (SELECT 1 AS x) SELECT max(x) FROM s), * FROM s", {"main.s"}),
    ("(WITH s AS (SELECT 1 AS x) SELECT x FROM s) UNION ALL SELECT x FROM s", {"main.s"}),
    ("WITH s AS (SELECT 1 AS x) SELECT x FROM s UNION ALL SELECT x FROM s", set()),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT 1 AS x) SELECT * FROM a", {"main.b"}),  # forward: the table
    ("WITH a AS (SELECT * FROM a) SELECT * FROM a", {"main.a"}),  # non-recursive self-reference: the table
    ("WITH s AS (SELECT 1 AS x) SELECT * FROM main.s", {"main.s"}),  # qualified: never a CTE
    ("WITH s AS (SELECT 1 AS x) SELECT * FROM (WITH t AS (SELECT * FROM s) SELECT * FROM t) q, u", {"main.u"}),
    ("SELECT * FROM t, LATERAL (WITH t AS (SELECT 2 AS x) SELECT * FROM t) l", {"main.t"}),
])
def test_cte_scope(sql, expected):
    assert tables_of(sql) == expected


def test_recursive_cte_scope_follows_each_warehouse():
    sql = "WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1 AS x) SELECT * FROM a"
    assert tables_of(sql, "duckdb") == {"main.b"}  # DuckDB: later CTEs are not in scope, even when recursive
    assert tables_of(sql, "postgres") == set()  # PostgreSQL: every CTE of a WITH RECURSIVE is in scope


def test_a_shape_the_scope_walk_cannot_place_is_refused(monkeypatch):
    def broken(table, name, dialect):
        raise SqlAnalysisError("SQL cell has a CTE whose scope cannot be determined; simplify the WITH")
    monkeypatch.setattr(bsql, "_is_cte_reference", broken)
    refused("WITH s AS (SELECT 1 AS x) SELECT * FROM s", match="scope cannot be determined")


# --------------------------------------------------------------------------------------------------
# The warehouse's own parser must agree


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_a_table_the_warehouse_parser_sees_and_we_miss_is_refused(monkeypatch, dialect):
    real = bsql.tables_read
    monkeypatch.setattr(bsql, "tables_read", lambda ast, schema, d=None, q=None: tuple(
        t for t in real(ast, schema, d) if not t.endswith(".hidden")))
    message = refused("SELECT * FROM shown, hidden", dialect, match="disagrees with")
    assert ".hidden" in message and ".shown" in message  # names both lists


def test_parser_views_of_the_issue_example():
    assert bsql.duckdb_parser_tables(ISSUE_EXAMPLE, "main") == {"main.salaries"}
    pg = ISSUE_EXAMPLE.replace(", e AS n", "")
    assert bsql.postgres_parser_tables(pg, "public") == {"public.salaries"}


# --------------------------------------------------------------------------------------------------
# Names resolve as the warehouse resolves them


def test_postgres_quoted_names_are_case_sensitive_duckdb_not():
    assert tables_of('SELECT * FROM "Salaries", salaries, "Core"."T"', "postgres") == {
        'public."Salaries"', "public.salaries", '"Core"."T"'}
    assert tables_of('SELECT * FROM "Salaries" s1, salaries s2', "duckdb") == {"main.salaries"}


@pytest.mark.parametrize("name", ["pg_class", "pg_authid", "pg_user", "PG_SHADOW", "pg_catalog.pg_roles",
                                  "information_schema.tables", "pg_toast.x", '"pg_catalog"."pg_proc"'])
def test_postgres_system_catalogs_are_refused(name):
    message = refused(f"SELECT * FROM {name}", "postgres", match="system catalog")
    assert "pg_catalog." in message or "information_schema." in message or "pg_toast." in message


def test_unqualified_pg_name_is_pg_catalog_not_the_default_schema():
    assert bsql.postgres_parser_tables("SELECT * FROM pg_class", "public") == {"pg_catalog.pg_class"}
    assert tables_of("SELECT * FROM public.pg_stuff", "postgres") == {"public.pg_stuff"}  # qualified: the table


@pytest.mark.parametrize("name", ["duckdb_tables", "duckdb_columns", "sqlite_master", "pg_class",
                                  "information_schema.tables", "pg_catalog.pg_class"])
def test_duckdb_catalog_views_are_refused(name):
    refused(f"SELECT * FROM {name}", "duckdb", match="catalog")


def test_one_table_name_module():
    # c.s.t: the three normalisers used to disagree (sql dropped the catalog, zones kept it, warehouse raised)
    assert zones.normalize_table_name("c.s.t", "main") == tables.normalise("c.s.t", "main") == "c.s.t"
    assert bsql.normalise_table("c.s.t", "main") == "c.s.t"
    with pytest.raises(ValueError):
        warehouse.normalize_table_name("c.s.t", "main")  # the warehouse cannot write a catalog part
    refused("SELECT * FROM c.s.t", "duckdb", match="catalog")
    # "Salaries" is not salaries on PostgreSQL, in the policy and in the analysis alike
    assert zones.normalize_table_name('"Salaries"', "public", "postgres") == 'public."Salaries"'
    assert tables_of('SELECT * FROM "Salaries"', "postgres") == {'public."Salaries"'}
    assert warehouse._qualified('public."Sa""laries"') == '"public"."Sa""laries"'
    assert warehouse._split_table('core."x.y"') == ("core", "x.y")


# --------------------------------------------------------------------------------------------------
# Functions: an allowlist, checked on the warehouse parser's names


@pytest.mark.parametrize("sql", [
    "SELECT ts_stat('SELECT to_tsvector(x) FROM hr.salaries')",
    "SELECT * FROM ts_stat('SELECT to_tsvector(x) FROM hr.salaries')",
    "SELECT ts_rewrite(to_tsquery('a'), 'SELECT q, s FROM hr.salaries')",
    "SELECT query_to_xml('SELECT * FROM hr.salaries', true, true, '')",
    "SELECT table_to_xmlschema('hr.salaries', true, true, '')",
    "SELECT cursor_to_xml('c', 1, true, true, '')",
    "SELECT xpath('/a', query_to_xml('select 1', true, true, ''))",
    "SELECT pg_get_viewdef('hr.v'::regclass)",
    "SELECT current_setting('search_path')",
    "SELECT pg_catalog.set_config('role', 'none', true)",
    "SELECT nextval('s')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT dblink('x', 'y')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT public.my_function(1)",
    'SELECT "ts_stat"(\'select 1\')',
    "SELECT /* lower( */ ts_stat('select 1')",
])
def test_postgres_functions_off_the_allowlist_are_refused(sql):
    message = refused(sql, "postgres", match="allowlist")
    assert "ALLOWED_" in message  # says how to ask for an addition


@pytest.mark.parametrize("sql", [
    "SELECT * FROM query('SELECT * FROM hr.salaries')",
    "SELECT * FROM query_table('hr.salaries')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT getenv('HOME')",
    "SELECT current_setting('threads')",
    "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM glob('/*')",
])
def test_duckdb_functions_off_the_allowlist_are_refused(sql):
    refused(sql, "duckdb", match="allowlist")


@pytest.mark.parametrize(("sql", "dialect"), [
    ("SELECT count(*), sum(x), avg(x), lower(s), upper(s), coalesce(s, 'a'), date_trunc('day', d), "
     "extract(year FROM d), round(x, 2), row_number() OVER (PARTITION BY s ORDER BY d), s LIKE 'a%', "
     "CAST(x AS TEXT), x::int, substring(s FROM 1 FOR 2), trim(both FROM s), d AT TIME ZONE 'UTC', "
     "jsonb_extract_path_text(j, 'a'), j->>'a', string_agg(s, ',') FROM core.t GROUP BY s, d, j, x", "postgres"),
    ("SELECT count(*), sum(x), median(x), lower(s), strftime(d, '%Y'), date_diff('day', d, d), list_value(1, 2), "
     "[1, 2][1], {'a': 1}.a, s ILIKE 'a%', x::INTEGER, regexp_extract(s, 'a'), j->>'$.a', "
     "row_number() OVER (ORDER BY d) FROM core.t GROUP BY ALL", "duckdb"),
    ("SELECT * FROM generate_series(1, 3) g, unnest(ARRAY[1, 2]) u", "postgres"),
    ("SELECT * FROM range(3) r, generate_series(1, 2) g", "duckdb"),
])
def test_what_analysts_use_is_allowed(sql, dialect):
    assert tables_of(sql, dialect, "core") <= {"core.t"}


# --------------------------------------------------------------------------------------------------
# Shape


@pytest.mark.parametrize(("sql", "dialect"), [
    ("SELECT * INTO hr_copy FROM core.t", "postgres"), ("SELECT * FROM core.t FOR UPDATE", "postgres"),
    ("SELECT * FROM core.t FOR SHARE", "duckdb"), ("DELETE FROM core.t", "postgres"),
])
def test_queries_that_write_or_lock_are_refused(sql, dialect):
    with pytest.raises(SqlAnalysisError):
        tables_of(sql, dialect)


# --------------------------------------------------------------------------------------------------
# Differential: our table set contains every table the warehouse reads, or the query is refused.

PG_TABLES = ["public.t1", "public.t2", 'public."T1"', "s.t3", "s.t1", 's."Mixed Case"']
DUCK_TABLES = ["main.t1", "main.t2", "s.t3", "s.t4"]


def _spellings(table: str, dialect: str) -> list[str]:
    schema, name = tables.parts_of(table)
    bare = [tables.canonical_part(name)]
    if tables.canonical_part(name) == name:
        bare += [name.upper(), f'"{name}"']
    out = [f"{tables.canonical_part(schema)}.{b}" for b in bare]
    default = "public" if dialect == "postgres" else "main"
    if schema == default:
        out += bare
    return out


class Corpus:
    """A deterministic generator of query shapes over a small set of tables whose names double as CTE names."""

    def __init__(self, dialect: str, seed: int):
        self.d = dialect
        self.r = random.Random(seed)
        self.tables = PG_TABLES if dialect == "postgres" else DUCK_TABLES
        # CTE names: the same as table names, to shadow them
        self.names = ["t1", "t2", "t3", "t4"] + (['"T1"'] if dialect == "postgres" else [])
        self.alias = 0

    def a(self) -> str:
        self.alias += 1
        return f"a{self.alias}"

    def ref(self, ctes: list[str]) -> str:
        if ctes and self.r.random() < 0.45:
            return self.r.choice(ctes)
        spell = _spellings(self.r.choice(self.tables), self.d)
        return self.r.choice(spell)

    def from_item(self, depth: int, ctes: list[str]) -> str:
        k = self.r.random()
        if depth > 0 and k < 0.25:
            return f"({self.query(depth - 1, ctes)}) {self.a()}"
        if depth > 0 and k < 0.4:
            left = self.a()
            lateral = f"SELECT {left}.x AS y FROM {self.ref(ctes)} {self.a()} WHERE {left}.x IS NOT NULL"
            return f"{self.ref(ctes)} {left} CROSS JOIN LATERAL ({lateral}) {self.a()}"
        if depth > 0 and k < 0.5:
            return f"{self.ref(ctes)} {self.a()} JOIN {self.ref(ctes)} {self.a()} USING (x)"
        return f"{self.ref(ctes)} {self.a()}"

    def select(self, depth: int, ctes: list[str]) -> str:
        item = "x"
        if depth > 0 and self.r.random() < 0.3:  # a subquery in the select list
            item = f"coalesce((SELECT max(x) FROM ({self.query(depth - 1, ctes)}) {self.a()}), x) AS x"
        sql = f"SELECT {item} FROM {self.from_item(depth, ctes)}"
        if self.d == "duckdb" and self.r.random() < 0.3:  # a lateral column alias (what broke qualify())
            sql = f"SELECT x FROM (SELECT x AS e, e AS x FROM {self.from_item(depth, ctes)}) {self.a()}"
        k = self.r.random()
        if depth > 0 and k < 0.25:
            sql += f" WHERE x IN ({self.query(depth - 1, ctes)})"
        elif depth > 0 and k < 0.4:
            sql += f" WHERE EXISTS ({self.query(depth - 1, ctes)})"
        elif depth > 0 and k < 0.5:
            sql += f" GROUP BY x HAVING x > (SELECT count(*) FROM ({self.query(depth - 1, ctes)}) {self.a()})"
        return sql

    def query(self, depth: int, ctes: list[str]) -> str:
        k = self.r.random()
        if depth > 0 and k < 0.35:
            names = self.r.sample(self.names, self.r.randint(1, 2))
            recursive = self.r.random() < 0.2
            seen, parts = list(ctes), []
            for name in names:
                body = self.query(depth - 1, seen + (names if recursive and self.d == "postgres" else []))
                if recursive and self.r.random() < 0.5:
                    body = f"SELECT 1 AS x UNION ALL SELECT x + 1 FROM {name} WHERE x < 3"
                parts.append(f"{name} AS ({body})")
                seen.append(name)
            inner = self.query(depth - 1, seen)
            if inner.startswith("WITH"):
                inner = f"SELECT x FROM ({inner}) {self.a()}"
            return f"WITH {'RECURSIVE ' if recursive else ''}{', '.join(parts)} {inner}"
        if depth > 0 and k < 0.55:
            op = self.r.choice(["UNION ALL", "UNION", "INTERSECT", "EXCEPT"])
            left, right = self.query(depth - 1, ctes), self.query(depth - 1, ctes)
            return f"({left}) {op} ({right})" if self.r.random() < 0.5 else f"{self.select(depth, ctes)} {op} ({right})"
        return self.select(depth, ctes)


def _canonical_pg(schema: str, name: str) -> str:
    return tables.join([schema, name])


def _duck_plan_tables(con, sql: str) -> set[str]:
    plan = json.loads(con.execute("EXPLAIN (FORMAT JSON) " + sql).fetchall()[0][1])
    found, stack = set(), [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            table = (node.get("extra_info") or {}).get("Table")
            if node.get("name") in ("SEQ_SCAN", "TABLE_SCAN") and table:
                catalog, schema, name = table.split(".", 2)
                found.add(tables.join([schema.lower(), name.lower()]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _run_corpus(dialect: str, warehouse_tables, n: int, seed: int) -> tuple[int, int]:
    corpus, checked, refusals = Corpus(dialect, seed), 0, 0
    default = "public" if dialect == "postgres" else "main"
    for _ in range(n):
        sql = corpus.query(corpus.r.randint(1, 4), [])
        theirs = warehouse_tables(sql)
        if theirs is None:
            continue  # the warehouse does not run it either
        try:
            ours = set(analyse_query(sql, default_schema=default, dialect=dialect).tables)
        except SqlAnalysisError:
            refusals += 1
            continue
        assert theirs <= ours, f"{dialect} reads {sorted(theirs)} but the analysis found {sorted(ours)}: {sql}"
        checked += 1
    return checked, refusals


def test_differential_corpus_duckdb(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA s")
    for t in DUCK_TABLES:
        con.execute(f"CREATE TABLE {t} AS SELECT 1 AS x")
    con.execute("PRAGMA disable_optimizer")  # every scan stays in the plan

    def theirs(sql):
        try:
            return _duck_plan_tables(con, sql)
        except duckdb.Error:
            return None

    checked, refusals = _run_corpus("duckdb", theirs, 150, seed=10)
    assert checked >= 120, (checked, refusals)


@pytest.fixture
def pg():
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True)
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL not available: {err}")
    schema_tables = [tables.parts_of(t) for t in PG_TABLES]
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS s CASCADE; CREATE SCHEMA s")
        for s, t in schema_tables:
            cur.execute(f"DROP TABLE IF EXISTS {tables.quoted_sql(tables.join([s, t]))} CASCADE")
            cur.execute(f"CREATE TABLE {tables.quoted_sql(tables.join([s, t]))} AS SELECT 1 AS x")
    yield conn
    with conn.cursor() as cur:
        for s, t in schema_tables:
            cur.execute(f"DROP TABLE IF EXISTS {tables.quoted_sql(tables.join([s, t]))} CASCADE")
        cur.execute("DROP SCHEMA IF EXISTS s CASCADE")
    conn.close()


def test_differential_corpus_postgres(pg):
    import psycopg

    def theirs(sql):
        try:
            with pg.cursor() as cur:
                cur.execute("SET search_path = public")
                return bsql.postgres_tables_read(cur, sql)
        except psycopg.Error:
            return None

    checked, refusals = _run_corpus("postgres", theirs, 150, seed=20)
    assert checked >= 100, (checked, refusals)


def test_postgres_views_are_judged_by_what_they_read(pg):
    with pg.cursor() as cur:
        cur.execute("CREATE VIEW public.v_over_s AS SELECT x FROM s.t3")
        try:
            assert tables_of("SELECT * FROM v_over_s", "postgres") == {"public.v_over_s"}  # static: the view
            assert bsql.postgres_tables_read(cur, "SELECT * FROM v_over_s") == {"s.t3"}  # planner: what it reads
        finally:
            cur.execute("DROP VIEW public.v_over_s")


def test_duckdb_views_are_judged_by_what_they_read(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA hr; CREATE TABLE hr.salaries AS SELECT 1 AS x; CREATE VIEW main.v AS SELECT x FROM hr.salaries")
    assert tables_of("SELECT * FROM v") == {"main.v"}  # static: the view
    assert bsql.duckdb_tables_read(con, "SELECT * FROM v") == {"hr.salaries"}  # planner: what it reads
