"""SQL analysis: the tables a query reads (fail closed) and, where resolvable, its column lineage.

Zone checks and the asset graph use *every* physical table a query touches (joins, subqueries, CTE
bodies, UNION arms, WHERE-only tables) — not only the ones that feed output columns — so a table used
only in a filter still counts as read. The analysis is built to fail closed:

* **Scope.** A name is a CTE reference only inside the scope of its ``WITH`` (the query body, later CTEs
  of the same ``WITH``, every CTE of a ``WITH RECURSIVE``); anywhere else the same name is a table. The
  walk is our own over sqlglot's tree (no optimizer pass that can give up half-way); a shape it cannot
  place is refused, never approximated.
* **The warehouse's own parser agrees.** The tables DuckDB (``get_table_names``) or PostgreSQL
  (libpg_query, via pglast) sees in the same text must all be in our set; any table they see that we
  do not is an error naming both lists.
* **Names resolve as the warehouse resolves them** (:mod:`dagster_bento.tables`): quoted PostgreSQL
  identifiers keep their case; an unqualified ``pg_*`` name on PostgreSQL is ``pg_catalog``'s. System
  catalogs (``pg_catalog``, ``information_schema``, DuckDB's internal views) are refused.
* **Functions are allowlisted** per dialect (:data:`ALLOWED_FUNCTIONS`): the names the *warehouse's*
  parser says are called must all be on the list; anything else (``query_to_xml``, ``ts_stat``,
  ``current_setting``, a user-defined function, …) is refused by name.
* **Views** are judged by what they read: :func:`postgres_tables_read` asks the planner (``EXPLAIN``) under
  the fetch role which base tables a query scans; the runner checks them before the fetch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
from collections.abc import Iterator, Iterable, Mapping
from typing import Any, Final

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.optimizer.qualify import qualify

from dagster_bento import tables as _tables


class SqlAnalysisError(ValueError):
    """The SQL does not parse, is not a single read-only query, or cannot be analysed safely."""


@dataclasses.dataclass(frozen=True)
class SqlAnalysis:
    tables: tuple[str, ...]  # sorted canonical "schema.table" (see dagster_bento.tables)
    # output column -> sorted ((table, column), ...) it derives from, DIRECT lineage only
    column_lineage: Mapping[str, tuple[tuple[str, str], ...]]
    output_columns: tuple[str, ...]  # () when not resolvable (e.g. SELECT * without a schema)


def _dialect_key(dialect: str | None) -> str:
    return "postgres" if (dialect or "").lower() in ("postgres", "postgresql") else "duckdb"


def normalise_table(name: str, default_schema: str, dialect: str | None = None) -> str:
    """``"CORE"."Users"`` / ``users`` → canonical ``core.users`` (``core."Users"`` on PostgreSQL)."""
    return _tables.normalise(name, default_schema, dialect)


# --------------------------------------------------------------------------------------------------
# Functions: an allowlist per dialect, checked on the names the warehouse's own parser sees.

_COMMON_FUNCTIONS: Final = frozenset("""
count sum avg min max stddev stddev_pop stddev_samp variance var_pop var_samp bool_and bool_or every
string_agg array_agg corr covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept regr_r2
regr_slope regr_sxx regr_sxy regr_syy percentile_cont percentile_disc mode bit_and bit_or bit_xor
row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
abs ceil ceiling floor round trunc sign sqrt cbrt exp ln log log10 log2 power pow mod pi degrees radians
sin cos tan asin acos atan atan2 cot sinh cosh tanh greatest least random div gcd lcm factorial
width_bucket isnan
lower upper length char_length character_length octet_length bit_length concat concat_ws substring substr
left right lpad rpad ltrim rtrim btrim trim replace reverse repeat position strpos split_part initcap md5
ascii chr format regexp_replace regexp_matches regexp_match regexp_split_to_array starts_with translate
overlay to_hex encode decode sha256 unistr
now date_trunc date_part extract age to_char to_date to_timestamp make_date make_time make_timestamp
make_timestamptz make_interval timezone justify_days justify_hours justify_interval isfinite
coalesce nullif
json_extract_path json_extract_path_text json_array_length json_build_object json_build_array json_agg
json_object_agg to_json json_typeof json_object json_array_elements json_array_elements_text json_each
json_each_text json_object_keys row_to_json array_to_json
jsonb_extract_path jsonb_extract_path_text jsonb_array_length jsonb_build_object jsonb_build_array jsonb_agg
jsonb_object_agg to_jsonb jsonb_typeof jsonb_array_elements jsonb_array_elements_text jsonb_each
jsonb_each_text jsonb_object_keys jsonb_strip_nulls jsonb_set jsonb_insert jsonb_pretty jsonb_path_exists
jsonb_path_match jsonb_path_query jsonb_path_query_array jsonb_path_query_first
array_length cardinality unnest array_position array_positions array_remove array_replace array_append
array_prepend array_cat array_to_string string_to_array generate_series generate_subscripts
""".split())

ALLOWED_FUNCTIONS: Final[Mapping[str, frozenset[str]]] = {
    "postgres": _COMMON_FUNCTIONS | frozenset("""
array_dims array_lower array_upper array_ndims trim_array date_bin clock_timestamp statement_timestamp
transaction_timestamp localtime localtimestamp current_date current_time current_timestamp to_number
quote_ident quote_literal quote_nullable regexp_count regexp_instr regexp_like regexp_substr
regexp_split_to_table string_to_table num_nonnulls num_nulls scale min_scale trim_scale numeric int4 int8
float8 text bool date timestamp timestamptz
""".split()),
    "duckdb": _COMMON_FUNCTIONS | frozenset("""
count_star list_value struct_pack row array_extract array_slice list_extract list_slice struct_extract
list_element array_length list_contains list_has array_contains list_position list_distinct list_unique
list_sort list_reverse_sort list_transform list_filter list_reduce list_aggregate list_sum list_min list_max
list_avg list_count list_concat list_cat array_concat flatten len list_zip list_select list_grade_up
list_has_any list_has_all array_has_any array_has_all list_sort
strftime strptime try_strptime epoch epoch_ms epoch_us epoch_ns make_timestamp_ns to_timestamp date_diff
datediff date_sub datesub date_add dayname monthname year month day hour minute second millisecond
microsecond week weekday weekofyear quarter dayofweek dayofmonth dayofyear isodow isoyear yearweek era
last_day time_bucket today current_date current_timestamp get_current_timestamp get_current_time
to_days to_hours to_minutes to_seconds to_milliseconds to_microseconds to_weeks to_months to_years
to_centuries to_decades to_millennia
regexp_extract regexp_extract_all regexp_full_match regexp_split_to_array string_split str_split
string_split_regex contains ends_with suffix prefix lcase ucase strlen ifnull nvl if iif hash
approx_count_distinct approx_quantile median quantile quantile_cont quantile_disc arg_max arg_min argmax
argmin max_by min_by first last any_value list histogram product fsum favg kurtosis skewness entropy
bitstring_agg string_agg group_concat listagg
json_extract json_extract_string json_extract_path json_extract_path_text json_value json_exists json_keys
json_array_length json_type json_valid json_structure json_contains json_group_array json_group_object
json_merge_patch json_transform json_array json_object to_json json_quote json
typeof round_even even isinf bit_count gen_random_uuid uuid levenshtein jaro_winkler_similarity
damerau_levenshtein hamming jaccard editdist3 array_to_string nullif coalesce range union_value union_extract
union_tag map map_extract map_keys map_values map_entries map_from_entries element_at struct_insert
list_resize array_resize datetrunc datepart
""".split()),
}
# Functions that may appear in FROM (they make rows from their arguments; none reads a table).
ALLOWED_TABLE_FUNCTIONS: Final[Mapping[str, frozenset[str]]] = {
    "postgres": frozenset({"generate_series", "unnest", "generate_subscripts", "json_array_elements",
                           "jsonb_array_elements", "json_each", "jsonb_each", "json_array_elements_text",
                           "jsonb_array_elements_text", "jsonb_each_text", "json_each_text",
                           "regexp_split_to_table", "string_to_table", "jsonb_path_query"}),
    "duckdb": frozenset({"range", "generate_series", "unnest"}),
}
# Schemas a function name may be qualified with (built-ins only; a user-defined function is not checked).
_FUNCTION_SCHEMAS: Final = {"postgres": frozenset({"", "pg_catalog"}), "duckdb": frozenset({"", "main"})}


def _unknown_function_error(names: Iterable[str], dialect: str, *, table: bool = False) -> SqlAnalysisError:
    listed = ", ".join(f"{n}()" for n in sorted(names))
    key = "ALLOWED_TABLE_FUNCTIONS" if table else "ALLOWED_FUNCTIONS"
    return SqlAnalysisError(
        f"SQL cell calls {listed}, which reads tables named by a string, runs SQL given as text, reads files or "
        f"changes server state — or is not (yet) on the allowlist of functions a SQL cell may call on {dialect}. "
        "Such a call is refused because the purpose-zone checks cannot see which tables it reads. Name the tables "
        "in the query itself (SELECT ... FROM schema.table); if the function only computes on its arguments, ask "
        f"for it to be added to {key}[{dialect!r}] in dagster_bento/sql.py (with a test)")


@functools.cache
def _duckdb_parser() -> Any:
    import duckdb

    # an in-memory database without file or network access: only its parser is used
    return duckdb.connect(config={"enable_external_access": False, "lock_configuration": True})


def _duckdb_tree(sql: str) -> dict | None:
    """DuckDB's own parse tree (``json_serialize_sql``); None when DuckDB cannot serialise the statement."""
    con = _duckdb_parser()
    with _DUCKDB_LOCK:
        tree = json.loads(con.execute("SELECT json_serialize_sql($1)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        if tree.get("error_type") == "parser":
            raise SqlAnalysisError(f"DuckDB does not parse the SQL: {tree.get('error_message')}")
        return None
    return tree


def _duckdb_called(sql: str) -> tuple[set[tuple[str, str]], set[str]]:
    """((schema, function) called anywhere, table functions in FROM) by DuckDB's parser."""
    tree = _duckdb_tree(sql)
    if tree is None:  # a statement DuckDB cannot serialise (PIVOT, …): every name written like a call
        import duckdb

        tokens = duckdb.tokenize(sql)
        names: set[tuple[str, str]] = set()
        texts = []
        for i, (start, kind) in enumerate(tokens):
            end = tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)
            if kind != duckdb.token_type.comment:
                texts.append((sql[start:end].strip(), kind))
        for (text, kind), (following, _) in zip(texts, texts[1:]):
            if kind in (duckdb.token_type.identifier, duckdb.token_type.keyword) and following.startswith("("):
                names.add(("", text.strip('"').lower()))
        return names, set()
    called: set[tuple[str, str]] = set()
    table_functions: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class") == "FUNCTION" and "function_name" in node:
                called.add((str(node.get("schema") or "").lower(), str(node["function_name"]).lower()))
            function = node.get("function")
            if node.get("type") == "TABLE_FUNCTION" and isinstance(function, dict):
                table_functions.add(str(function.get("function_name", "")).lower())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return called, table_functions


def _is_operator(name: str) -> bool:
    return bool(name) and not any(c.isalnum() or c == "_" for c in name)


def check_functions(sql: str, dialect: str | None) -> None:
    """Refuse every function the warehouse's own parser sees that is not on :data:`ALLOWED_FUNCTIONS`."""
    d = _dialect_key(dialect)
    if d == "postgres":
        called, table_functions = _pg_called(_pg_parse(sql))
    else:
        called, table_functions = _duckdb_called(sql)
    bad_schema = sorted(f"{s}.{n}" for s, n in called if s not in _FUNCTION_SCHEMAS[d])
    if bad_schema:
        raise _unknown_function_error(bad_schema, d)
    unknown = {n for _s, n in called if n not in ALLOWED_FUNCTIONS[d] and not _is_operator(n)}
    if unknown:
        raise _unknown_function_error(unknown, d)
    unknown_tf = table_functions - ALLOWED_TABLE_FUNCTIONS[d]
    if unknown_tf:
        raise _unknown_function_error(unknown_tf, d, table=True)


# --------------------------------------------------------------------------------------------------
# PostgreSQL: its own parser (libpg_query via pglast)


def _pg_parse(sql: str) -> Any:
    from pglast import ast, parse_sql
    from pglast.parser import ParseError as PgParseError

    try:
        stmts = parse_sql(sql)
    except PgParseError as err:
        raise SqlAnalysisError(f"PostgreSQL does not parse the SQL: {err}") from err
    if len(stmts) != 1:
        raise SqlAnalysisError(f"SQL cell holds {len(stmts)} statements for PostgreSQL; a SQL cell is one SELECT query")
    stmt = stmts[0].stmt
    if not isinstance(stmt, ast.SelectStmt):
        kind = {"DoStmt": "DO", "CopyStmt": "COPY", "VariableSetStmt": "SET", "ExplainStmt": "EXPLAIN",
                "InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "CallStmt": "CALL",
                }.get(type(stmt).__name__, type(stmt).__name__.removesuffix("Stmt").upper())
        raise SqlAnalysisError(
            f"a {kind} statement is not allowed: a SQL cell must be one query (SELECT, WITH, VALUES or TABLE)")
    return stmt


def _pg_children(node: Any, skip: str | None = None) -> Iterable[Any]:
    from pglast import ast

    for name in node:
        if name == skip:
            continue
        value = getattr(node, name)
        if isinstance(value, (ast.Node, list, tuple)):
            yield value


def _pg_nodes(root: Any) -> Iterator[Any]:
    """Every pglast node under ``root`` (lists and tuples flattened), in no particular order."""
    from pglast import ast

    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, ast.Node):
            yield node
            stack.extend(_pg_children(node))


def _pg_walk(node: Any, visible: frozenset[str], out: list[tuple[str | None, str | None, str]]) -> None:
    """Collect (catalog, schema, relation) of every RangeVar that is not a CTE in scope."""
    from pglast import ast

    if isinstance(node, (list, tuple)):
        for item in node:
            _pg_walk(item, visible, out)
        return
    if not isinstance(node, ast.Node):
        return
    if isinstance(node, ast.RangeVar):
        if node.schemaname or node.catalogname or node.relname not in visible:
            out.append((node.catalogname, node.schemaname, node.relname))
        return
    with_clause = getattr(node, "withClause", None) if isinstance(node, ast.SelectStmt) else None
    if with_clause is not None:
        names = [cte.ctename for cte in with_clause.ctes]
        seen = visible | frozenset(names) if with_clause.recursive else visible
        for cte in with_clause.ctes:
            _pg_walk(cte.ctequery, seen, out)
            if not with_clause.recursive:
                seen = seen | {cte.ctename}
        visible = visible | frozenset(names)
    for child in _pg_children(node, skip="withClause" if with_clause is not None else None):
        _pg_walk(child, visible, out)


def _pg_called(stmt: Any) -> tuple[set[tuple[str, str]], set[str]]:
    from pglast import ast

    called: set[tuple[str, str]] = set()
    table_functions: set[str] = set()
    for node in _pg_nodes(stmt):
        if isinstance(node, ast.FuncCall):
            parts = [p.sval for p in node.funcname]
            called.add((".".join(parts[:-1]).lower(), parts[-1].lower()))
        elif isinstance(node, ast.RangeFunction):
            for item in node.functions or ():
                func = item[0] if isinstance(item, (list, tuple)) else item
                if isinstance(func, ast.FuncCall):
                    table_functions.add(func.funcname[-1].sval.lower())
                else:
                    table_functions.add(type(func).__name__)
        elif isinstance(node, ast.RangeTableFunc):
            table_functions.add("xmltable")
        elif isinstance(node, ast.JsonTable):
            table_functions.add("json_table")
    return called, table_functions


def _pg_check_shape(stmt: Any) -> None:
    from pglast import ast

    for node in _pg_nodes(stmt):
        if isinstance(node, ast.SelectStmt):
            if node.intoClause is not None:
                raise SqlAnalysisError("SQL cell uses SELECT … INTO, which creates a table; SQL cells only read")
            if node.lockingClause:
                raise SqlAnalysisError("SQL cell uses FOR UPDATE/FOR SHARE, which locks rows; SQL cells only read")


def postgres_parser_tables(sql: str, default_schema: str) -> set[str]:
    """The tables libpg_query sees in ``sql`` (CTE names in scope removed), as canonical names."""
    out: list[tuple[str | None, str | None, str]] = []
    _pg_walk(_pg_parse(sql), frozenset(), out)
    return {_pg_resolve(catalog, schema, rel, default_schema) for catalog, schema, rel in out}


def _pg_resolve(catalog: str | None, schema: str | None, rel: str, default_schema: str) -> str:
    """PostgreSQL searches ``pg_catalog`` before the default schema: an unqualified ``pg_*`` name is a catalog."""
    if not schema and rel.startswith("pg_"):
        schema = "pg_catalog"
    default = _tables.split_name(default_schema, "postgres")[0]
    return _tables.from_parts(rel, schema, default, catalog)


def _duckdb_walk(node: Any, visible: frozenset[str], out: list[tuple[str, str, str]]) -> None:
    """Collect (catalog, schema, table) of every BASE_TABLE in DuckDB's tree that is not a CTE in scope.

    DuckDB's scoping: a CTE body sees the CTEs before it (and itself when recursive); the query body sees all.
    """
    if isinstance(node, list):
        for item in node:
            _duckdb_walk(item, visible, out)
        return
    if not isinstance(node, dict):
        return
    if node.get("type") == "BASE_TABLE":
        catalog, schema = node.get("catalog_name") or "", node.get("schema_name") or ""
        name = str(node.get("table_name", "")).lower()
        if catalog or schema or name not in visible:
            out.append((catalog.lower(), schema.lower(), name))
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict) and cte_map.get("map"):
        seen = visible
        names = []
        for entry in cte_map["map"]:
            name = str(entry.get("key", "")).lower()
            body = (entry.get("value") or {}).get("query_node")
            recursive = isinstance(body, dict) and body.get("type") == "RECURSIVE_CTE_NODE"
            _duckdb_walk(body, seen | {name} if recursive else seen, out)
            seen = seen | {name}
            names.append(name)
        visible = visible | frozenset(names)
    for key, value in node.items():
        if key != "cte_map":
            _duckdb_walk(value, visible, out)


def duckdb_parser_tables(sql: str, default_schema: str) -> set[str]:
    """The tables DuckDB's parser sees in ``sql``, as canonical names: its parse tree (``json_serialize_sql``)
    walked with DuckDB's CTE scoping, united with ``get_table_names`` where that can bind the query."""
    default = _tables.split_name(default_schema, "duckdb")[0]
    con = _duckdb_parser()
    found: set[str] = set()
    tree = _duckdb_tree(sql)
    if tree is not None:
        out: list[tuple[str, str, str]] = []
        _duckdb_walk(tree.get("statements"), frozenset(), out)
        found = {_tables.from_parts(t, s, default, c) for c, s, t in out}
    try:
        with _DUCKDB_LOCK:
            names = con.get_table_names(sql, qualified=True)
    except Exception as err:  # noqa: BLE001 - DuckDB raises many error types
        if tree is None:  # neither view of the query: refuse
            raise SqlAnalysisError(
                f"DuckDB cannot list the tables the SQL reads: {str(err).splitlines()[0]}") from err
        return found
    for n in names:  # "schema.table" or, in some versions, "schema.table AS alias": read the leading name
        match = _LEADING_NAME.match(n)
        if match is None:
            raise SqlAnalysisError(f"DuckDB lists a table the analysis cannot read: {n!r}")
        found.add(_tables.normalise(match.group(1), default_schema, "duckdb"))
    return found


_LEADING_NAME: Final = re.compile(r'\s*((?:"(?:[^"]|"")*"|[^\s".]+)(?:\.(?:"(?:[^"]|"")*"|[^\s".]+))*)')


# --------------------------------------------------------------------------------------------------
# Our analysis (sqlglot), scope by scope

_DUCKDB_LOCK: Final = threading.Lock()
_SYSTEM_SCHEMAS: Final = {
    "postgres": ("pg_catalog", "information_schema", "pg_toast", "pg_temp", "pg_toast_temp"),
    "duckdb": ("information_schema", "pg_catalog"),
}


def _function_name(func: exp.Func) -> str:
    return (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()


def check_reads_only_tables(ast: exp.Expression) -> None:
    """Refuse table functions, catalog parts, file reads, SELECT INTO and row locks."""
    for table in ast.find_all(exp.Table):
        if isinstance(table.this, exp.Func):
            continue  # table functions are judged by the warehouse parser's allowlist (check_functions)
        if table.catalog:
            raise SqlAnalysisError(f"SQL cell names {table.sql()} with a catalog/database part; use schema.table")
        if any(ch in table.name for ch in "./\\") or table.name.startswith("~"):
            raise SqlAnalysisError(f"SQL cell reads the file {table.name!r}; SQL cells may only read warehouse tables")
        if isinstance(table.this, exp.Literal) or "'" in table.sql():
            raise SqlAnalysisError(f"SQL cell reads {table.sql()!r} by a string; name a warehouse table")
    if ast.find(exp.Into) is not None:
        raise SqlAnalysisError("SQL cell uses SELECT … INTO, which creates a table; SQL cells only read")
    if ast.find(exp.Lock) is not None:
        raise SqlAnalysisError("SQL cell uses FOR UPDATE/FOR SHARE, which locks rows; SQL cells only read")


def parse_query(sql: str, dialect: str | None) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as err:
        first = err.errors[0] if err.errors else {}
        where = f" (line {first.get('line')}, column {first.get('col')})" if first.get("line") else ""
        detail = first.get("description") or str(err).splitlines()[0]
        raise SqlAnalysisError(f"SQL does not parse{where}: {detail}") from err
    except SqlglotError as err:
        raise SqlAnalysisError(f"SQL does not parse: {str(err).splitlines()[0]}") from err
    if not statements:
        raise SqlAnalysisError("SQL cell holds no statement; write a SELECT query")
    if len(statements) > 1:
        raise SqlAnalysisError(f"SQL cell holds {len(statements)} statements; a SQL cell is one SELECT query")
    stmt = statements[0]
    if not isinstance(stmt, exp.Query):
        raise SqlAnalysisError(
            f"SQL cell is a {stmt.key.upper()} statement; SQL cells only read (SELECT/WITH …). "
            "Write data with a write cell instead")
    return stmt


def _ident(node: exp.Expression | None, dialect: str) -> str | None:
    """A folded identifier (``"Foo"`` keeps its case on PostgreSQL)."""
    if node is None:
        return None
    if isinstance(node, exp.Identifier):
        return _tables.fold(node.this, quoted=bool(node.args.get("quoted")), dialect=dialect)
    if isinstance(node, exp.Expression) and node.name:
        return _tables.fold(node.name, quoted=False, dialect=dialect)
    return None


def _with_of(node: exp.Expression) -> exp.With | None:
    w = node.args.get("with") or node.args.get("with_")
    return w if isinstance(w, exp.With) else None


def _is_cte_reference(table: exp.Table, name: str, dialect: str) -> bool:
    """Whether the unqualified ``table`` names a CTE in scope where it stands (SQL scoping rules)."""
    path: list[exp.Expression] = [table]
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            path.append(node)
            node = node.parent
            continue
        w = _with_of(node)
        if w is not None:
            ctes = [c for c in w.expressions if isinstance(c, exp.CTE)]
            if len(ctes) != len(w.expressions):
                raise SqlAnalysisError(f"SQL cell has a WITH clause of an unknown shape ({w.sql()[:60]}…)")
            names = [_ident(c.args.get("alias") and c.args["alias"].this, dialect) for c in ctes]
            if path[-1] is w:  # we came up through a CTE body: only earlier CTEs (all of them if RECURSIVE)
                body = path[-2] if len(path) >= 2 else None
                index = next((i for i, c in enumerate(ctes) if c is body), None)
                if index is None:
                    raise SqlAnalysisError("SQL cell has a CTE whose scope cannot be determined; simplify the WITH")
                if not w.args.get("recursive"):
                    visible = names[:index]
                elif dialect == "postgres":  # WITH RECURSIVE: every CTE of the list is in scope
                    visible = names
                else:  # DuckDB: the CTEs before it, and itself
                    visible = names[: index + 1]
            else:
                visible = names
            if name in visible:
                return True
        path.append(node)
        node = node.parent
    return False


def tables_read(ast: exp.Expression, default_schema: str, dialect: str | None = None,
                qualified: exp.Expression | None = None) -> tuple[str, ...]:
    """Every physical table ``ast`` reads, canonical and qualified as the warehouse resolves them."""
    d = _dialect_key(dialect)
    default = _tables.split_name(default_schema, d)[0]
    found: set[str] = set()
    for table in ast.find_all(exp.Table):
        if isinstance(table.this, exp.Func):
            continue  # a table function (allowlisted: it reads no table)
        if not isinstance(table.this, exp.Identifier) or not table.name:
            raise SqlAnalysisError(f"SQL cell reads {table.sql()!r}, which is not a plain table name")
        name = _ident(table.this, d)
        schema = _ident(table.args.get("db"), d)
        catalog = _ident(table.args.get("catalog"), d)
        if not schema and not catalog and _is_cte_reference(table, name, d):
            continue
        if d == "postgres":
            found.add(_pg_resolve(catalog, schema, name, default_schema))
        else:
            found.add(_tables.from_parts(name, schema, default, catalog))
    return tuple(sorted(found))


@functools.cache
def _duckdb_internal_views() -> frozenset[str]:
    """Names of DuckDB's built-in views (``duckdb_tables``, ``sqlite_master``, ``pg_class``, …)."""
    con = _duckdb_parser()
    with _DUCKDB_LOCK:
        rows = con.execute("SELECT lower(view_name) FROM duckdb_views() WHERE internal").fetchall()
    return frozenset(r[0] for r in rows)


def check_system_tables(tables: Iterable[str], dialect: str | None, default_schema: str) -> None:
    """Refuse reads of system catalogs (and DuckDB's built-in views, which an unqualified name can reach)."""
    d = _dialect_key(dialect)
    default = _tables.split_name(default_schema, d)[0]
    for table in tables:
        parts = _tables.parts_of(table)
        schema, name = parts[-2], parts[-1]
        if schema in _SYSTEM_SCHEMAS[d] or schema.startswith(("pg_temp", "pg_toast")):
            raise SqlAnalysisError(
                f"SQL cell reads {table}, a system catalog; SQL cells may only read warehouse tables")
        if d == "duckdb" and schema == default and name in _duckdb_internal_views():
            raise SqlAnalysisError(
                f"SQL cell reads {name}, which DuckDB resolves to a built-in catalog view; SQL cells may only read "
                "warehouse tables (write schema.table if you mean your own table)")


def cross_check(sql: str, ours: Iterable[str], *, default_schema: str, dialect: str | None) -> None:
    """Every table the warehouse's own parser sees must be in ``ours``; else an error naming both lists."""
    d = _dialect_key(dialect)
    theirs = (postgres_parser_tables(sql, default_schema) if d == "postgres"
              else duckdb_parser_tables(sql, default_schema))
    missing = theirs - set(ours)
    if missing:
        raise SqlAnalysisError(
            f"the table analysis disagrees with {d}'s own parser: it reads {sorted(theirs)} but the analysis found "
            f"{sorted(ours)} (missing {sorted(missing)}); the query is refused rather than checked against the wrong "
            "tables — rewrite the shape (e.g. rename a CTE that shadows a table, or schema-qualify the tables)")


def _nested_schema(schema: Mapping[str, Mapping[str, str]] | None, default_schema: str
                   ) -> dict[str, dict[str, dict[str, str]]]:
    nested: dict[str, dict[str, dict[str, str]]] = {}
    for table, cols in (schema or {}).items():
        try:
            s, t = _tables.parts_of(normalise_table(table, default_schema))[-2:]
        except ValueError:
            continue
        nested.setdefault(s, {})[t] = dict(cols)
    return nested


def _qualified(ast: exp.Expression, default_schema: str, dialect: str | None,
               schema: Mapping[str, Mapping[str, Mapping[str, str]]]) -> exp.Expression | None:
    """Qualified copy for column lineage only (best effort; the table set never depends on it)."""
    try:
        return qualify(ast.copy(), dialect=dialect, db=default_schema, schema=schema or None,
                       validate_qualify_columns=False, identify=False)
    except (SqlglotError, KeyError, ValueError, AttributeError, TypeError, RecursionError):
        return None


def column_lineage(qualified: exp.Expression | None, *, default_schema: str, dialect: str | None
                   ) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, str], ...]]]:
    """Best-effort DIRECT column lineage of a qualified query. ((), {}) when columns cannot be resolved."""
    from sqlglot.lineage import lineage
    from sqlglot.optimizer.scope import build_scope

    if qualified is None:
        return (), {}
    try:
        scope = build_scope(qualified)
        nodes = lineage(None, qualified, schema={}, dialect=dialect, scope=scope, copy=False)
    except (SqlglotError, KeyError, ValueError, AttributeError, TypeError, RecursionError):
        return (), {}
    if not isinstance(nodes, dict):
        return (), {}
    d = _dialect_key(dialect)
    default = _tables.split_name(default_schema, d)[0]
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for col, node in nodes.items():
        if col == "*":
            return (), {}
        deps = set()
        for n in node.walk():
            if not n.downstream and isinstance(n.source, exp.Table):
                src = n.source
                table = _tables.from_parts(_ident(src.this, d) or "", _ident(src.args.get("db"), d), default)
                deps.add((table, n.name.split(".")[-1].strip('"').lower()))
        if deps:
            out[col] = tuple(sorted(deps))
    return tuple(nodes), out


def analyse_query(sql: str, *, default_schema: str, dialect: str | None,
                  schema: Mapping[str, Mapping[str, str]] | None = None) -> SqlAnalysis:
    """Parse, check and analyse one SQL cell; raises :class:`SqlAnalysisError` when it cannot be done safely."""
    ast = parse_query(sql, dialect)
    check_reads_only_tables(ast)
    if _dialect_key(dialect) == "postgres":
        _pg_check_shape(_pg_parse(sql))
    check_functions(sql, dialect)
    tables = tables_read(ast, default_schema, dialect)
    cross_check(sql, tables, default_schema=default_schema, dialect=dialect)
    check_system_tables(tables, dialect, default_schema)
    qualified = _qualified(ast, default_schema, dialect, _nested_schema(schema, default_schema))
    columns, lineage_map = column_lineage(qualified, default_schema=default_schema, dialect=dialect)
    return SqlAnalysis(tables, lineage_map, columns)


# --------------------------------------------------------------------------------------------------
# Run time: views judged by what they read (the planner, under the fetch role)


def postgres_tables_read(cursor: Any, sql: str) -> set[str]:
    """The base tables PostgreSQL's planner scans for ``sql`` (views expanded), as canonical names.

    Runs ``EXPLAIN (VERBOSE, FORMAT JSON)`` — plans, never executes — on ``cursor``, which must already be
    in the fetch transaction under the fetch role (so names resolve along its ``search_path``). The runner
    compares the result with the job's analysed tables before fetching and refuses (or zone-checks) any
    table not in it.
    """
    cursor.execute("EXPLAIN (VERBOSE, FORMAT JSON) " + sql)
    row = cursor.fetchone()
    plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    found: set[str] = set()
    stack: list[Any] = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Relation Name" in node:
                found.add(_tables.join([node.get("Schema") or "public", node["Relation Name"]]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def duckdb_tables_read(con: Any, sql: str) -> set[str]:
    """The base tables DuckDB's planner scans for ``sql`` (views expanded), as canonical names.

    Runs ``EXPLAIN (FORMAT JSON)`` (plans, never executes) on ``con``, the fetch connection. A scan whose table
    name cannot be read unambiguously (a dot inside a part) raises :class:`SqlAnalysisError`.
    """
    rows = con.execute("EXPLAIN (FORMAT JSON) " + sql).fetchall()
    found: set[str] = set()
    for _kind, text in rows:
        stack: list[Any] = [json.loads(text)]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                table = (node.get("extra_info") or {}).get("Table") if isinstance(node.get("extra_info"), dict) else None
                if isinstance(table, str) and table:
                    parts = table.split(".")
                    if len(parts) != 3 or '"' in table:
                        raise SqlAnalysisError(f"DuckDB's plan scans {table!r}, a name the check cannot read; "
                                               "rename the table (no dots or quotes in its name)")
                    found.add(_tables.join([parts[1].lower(), parts[2].lower()]))
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return found
