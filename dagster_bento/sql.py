"""SQL analysis with sqlglot: the tables a query reads and, where resolvable, its column lineage.

Zone checks and the asset graph use *every* physical table a query touches (joins, subqueries, CTE
bodies, UNION arms, WHERE-only tables) — not only the ones that feed output columns — so a table used
only in a filter still counts as read. CTE names are not tables.
"""

import dataclasses
from collections.abc import Mapping

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import traverse_scope


class SqlAnalysisError(ValueError):
    """The SQL does not parse or is not a single read-only query."""


@dataclasses.dataclass(frozen=True)
class SqlAnalysis:
    tables: tuple[str, ...]  # sorted, normalised "schema.table"
    # output column -> sorted ((table, column), ...) it derives from, DIRECT lineage only
    column_lineage: Mapping[str, tuple[tuple[str, str], ...]]
    output_columns: tuple[str, ...]  # () when not resolvable (e.g. SELECT * without a schema)


def normalise_table(name: str, default_schema: str) -> str:
    """``"CORE"."Users"`` / ``users`` → ``core.users``. Catalog parts are dropped."""
    parts = [p.strip().strip('"').strip("`").lower() for p in name.split(".") if p.strip()]
    if len(parts) == 1:
        parts = [default_schema.lower(), parts[0]]
    return ".".join(parts[-2:])


# Functions that read data by name or from files, outside the tables the analysis can see: a SQL cell
# must not call them (the purpose-zone checks depend on knowing every table read). The warehouses are
# hardened too (DuckDB fetches run with external access disabled); this is the static half.
_DATA_READING_PREFIXES = (
    "read_", "query", "glob", "sniff_csv", "parquet_", "getenv", "pg_read", "pg_ls_", "pg_stat_file", "pg_file",
    "lo_", "dblink", "table_to_xml", "cursor_to_xml", "schema_to_xml", "database_to_xml", "query_to_xml",
    "pg_terminate", "pg_cancel", "pg_reload", "set_config", "load_extension", "iceberg_", "delta_scan",
)
_ALLOWED_TABLE_FUNCTIONS = (exp.GenerateSeries, exp.ExplodingGenerateSeries)


def _function_name(func: exp.Func) -> str:
    return (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()


def check_reads_only_tables(ast: exp.Expression) -> None:
    """Refuse table functions, file reads and functions that read data by name (e.g. query_table)."""
    for table in ast.find_all(exp.Table):
        if isinstance(table.this, exp.Func) and not isinstance(table.this, _ALLOWED_TABLE_FUNCTIONS):
            raise SqlAnalysisError(
                f"SQL cell uses the table function {_function_name(table.this)}(); SQL cells may only read "
                "warehouse tables by name (so their purpose zones can be checked)")
        if table.catalog:
            raise SqlAnalysisError(f"SQL cell names {table.sql()} with a catalog/database part; use schema.table")
        if any(ch in table.name for ch in "./\\") or table.name.startswith("~"):
            raise SqlAnalysisError(f"SQL cell reads the file {table.name!r}; SQL cells may only read warehouse tables")
    for func in ast.find_all(exp.Func):
        name = _function_name(func)
        if name.startswith(_DATA_READING_PREFIXES):
            raise SqlAnalysisError(
                f"SQL cell calls {name}(), which reads data or files outside the declared tables (or changes "
                "server state); SQL cells may only read warehouse tables by name")


def _table_name(table: exp.Table, default_schema: str) -> str:
    schema = (table.db or default_schema).lower()
    return f"{schema}.{table.name.lower()}"


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


def _qualified(ast: exp.Expression, default_schema: str, dialect: str | None,
               schema: Mapping[str, Mapping[str, Mapping[str, str]]]) -> exp.Expression | None:
    """Qualify once; both the table set and the column lineage read the result."""
    try:
        return qualify(ast.copy(), dialect=dialect, db=default_schema, schema=schema or None,
                       validate_qualify_columns=False, identify=False)
    except SqlglotError:
        return None


def tables_read(ast: exp.Expression, default_schema: str, dialect: str | None = None,
                qualified: exp.Expression | None = None) -> tuple[str, ...]:
    found: set[str] = set()
    qualified = qualified if qualified is not None else _qualified(ast, default_schema, dialect, {})
    if qualified is not None:
        try:
            for scope in traverse_scope(qualified):
                for _alias, (_node, source) in scope.selected_sources.items():
                    if isinstance(source, exp.Table) and source.name:  # not a generator like range()
                        found.add(_table_name(source, default_schema))
        except SqlglotError:
            found.clear()
    # Scope analysis misses tables in a few shapes (e.g. some set operations); union with a plain walk
    # minus CTE names so nothing read is ever left out.
    cte_names = {cte.alias_or_name.lower() for cte in ast.find_all(exp.CTE)}
    for table in ast.find_all(exp.Table):
        if not table.name:
            continue
        if not table.db and table.name.lower() in cte_names:
            continue
        found.add(_table_name(table, default_schema))
    return tuple(sorted(found))


def _nested_schema(schema: Mapping[str, Mapping[str, str]] | None, default_schema: str
                   ) -> dict[str, dict[str, dict[str, str]]]:
    nested: dict[str, dict[str, dict[str, str]]] = {}
    for table, cols in (schema or {}).items():
        s, t = normalise_table(table, default_schema).split(".")
        nested.setdefault(s, {})[t] = dict(cols)
    return nested


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
    except (SqlglotError, KeyError, ValueError, AttributeError, TypeError):
        return (), {}
    if not isinstance(nodes, dict):
        return (), {}
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for col, node in nodes.items():
        if col == "*":
            return (), {}
        deps = set()
        for n in node.walk():
            if not n.downstream and isinstance(n.source, exp.Table):
                deps.add((_table_name(n.source, default_schema), n.name.split(".")[-1].strip('"').lower()))
        if deps:
            out[col] = tuple(sorted(deps))
    return tuple(nodes), out


def analyse_query(sql: str, *, default_schema: str, dialect: str | None,
                  schema: Mapping[str, Mapping[str, str]] | None = None) -> SqlAnalysis:
    ast = parse_query(sql, dialect)
    check_reads_only_tables(ast)
    qualified = _qualified(ast, default_schema, dialect, _nested_schema(schema, default_schema))
    tables = tables_read(ast, default_schema, dialect, qualified)
    columns, lineage_map = column_lineage(qualified, default_schema=default_schema, dialect=dialect)
    return SqlAnalysis(tables, lineage_map, columns)
