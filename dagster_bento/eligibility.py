"""Static eligibility check of a notebook's plain code cells.

A notebook is scheduled only if its side effects are its declared I/O: data comes in through SQL cells
and goes out through write cells, both rewritten by the orchestrator. Every other code cell is arbitrary
Python, so before a notebook is scheduled its code cells are read (never run) and anything that reaches
the outside world on its own is refused with the notebook, the cell and the line:

* network access (``socket``, ``requests``, ``urllib.request``, remote ``s3://``/``https://`` paths, ...);
* process access (``subprocess``, ``os.system``, ``multiprocessing``, ``ctypes``, ``!cmd``, ``%%bash``,
  ``%run``, ``%pip``, ...);
* direct database access (drivers and engines, ``read_sql``/``to_sql``, ``%sql``), because the warehouse
  is reached only through SQL cells, which carry lineage and purpose-zone checks;
* file writes outside the run directory (absolute, ``~`` or ``..`` paths);
* dynamic evasion (``__import__("socket")``, ``importlib.import_module``, ``exec`` of built strings).

Why an AST check and not a regex: aliases (``import socket as s``, ``from os import system as run``),
comments, strings and line continuations make text matching both leaky and noisy. IPython syntax
(``!ls``, ``%%bash``) is not Python, so each cell is first rewritten by IPython's own input transformer,
which turns it into ``get_ipython().system(...)``/``run_cell_magic(...)`` calls that the AST shows.

The check is a denylist and deliberately not a security boundary: the run-time sandbox blocks these
effects anyway. Its job is to fail early, at ``check`` time, with a message that says what to change.
Where a path or a module name cannot be resolved statically it reports a *warning* (which does not fail
``check``) rather than guessing. Reviewed exceptions are declared in the schedule spec
(``notebooks/<stem>.bento.yaml``: ``exemptions: [{rule: network, reason: ..., cells: [3]}]``).
"""

import ast
import contextlib
import dataclasses
import functools
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from dagster_bento.errors import Problem

if TYPE_CHECKING:
    from IPython.core.inputtransformer2 import TransformerManager

# ---------------------------------------------------------------------------------------------------
# Codes
# ---------------------------------------------------------------------------------------------------

ELIGIBILITY_CODES: dict[str, str] = {
    # The cell is not valid Python, even after IPython's transforms: nothing else can be checked in it.
    "BENTO-E100": "syntax",
    # Imports or uses a network client/server module or function (socket, requests, urllib.request,
    # http.client, httpx, aiohttp, urllib3, ftplib, smtplib, paramiko, boto3, ...), or reads/writes a
    # remote URL such as "s3://..." or "https://...".
    "BENTO-E101": "network",
    # Imports or uses something that spawns or controls processes or runs native code: subprocess,
    # multiprocessing, pty, ctypes, os.system/popen/exec*/spawn*/fork/kill, ProcessPoolExecutor, ...
    "BENTO-E102": "process",
    # A shell escape or an IPython magic that runs commands or other files: `!cmd`, `!!cmd`,
    # get_ipython().system/getoutput, %%bash, %%sh, %%script, %%system, %system, %sx, %run, %pip, ...
    "BENTO-E103": "process",
    # Imports a database driver or engine: sqlalchemy, psycopg(2), duckdb, sqlite3, pymysql, MySQLdb,
    # adbc_driver_*, pyodbc, cx_Oracle/oracledb, snowflake.connector, google.cloud.bigquery, ...
    "BENTO-E104": "database",
    # Reads or writes the database without a SQL/write cell: read_sql*, to_sql, read_gbq, to_gbq,
    # read_database, write_database calls, or the %sql / %%sql magics (and loading them with %load_ext).
    "BENTO-E105": "database",
    # Writes, deletes, moves or changes into a path outside the run directory (absolute, "~" or "..").
    "BENTO-E106": "file_write",
    # Warning: writes to a path the check cannot resolve statically, so it cannot tell whether it stays
    # inside the run directory.
    "BENTO-E107": "file_write",
    # Warning: imports a module (or looks up a module attribute, or calls a magic) whose name is only
    # known at run time, so the check cannot see what it is.
    "BENTO-E108": "dynamic",
    # Warning: runs code built at run time with eval/exec/compile or get_ipython().run_cell.
    # (Code given as a string literal is checked like any other code instead.)
    "BENTO-E109": "dynamic",
    # An exemption in the schedule spec has no reason; it is not applied.
    "BENTO-E110": "exemption",
    # Warning: an exemption in the schedule spec matches no problem; remove it.
    "BENTO-E111": "exemption",
    # An exemption in the schedule spec is malformed (not a mapping, unknown rule, bad cells, ...).
    "BENTO-E112": "exemption",
}

EXEMPTABLE_CATEGORIES: tuple[str, ...] = ("network", "process", "database", "file_write", "dynamic")
# Codes reported as warnings: the check could not decide, so it does not fail `check`.
_WARNING_CODES = frozenset({"BENTO-E107", "BENTO-E108", "BENTO-E109", "BENTO-E111"})

_WHY = ("scheduled notebooks may only read through SQL cells and write through write cells; "
        "the sandbox blocks this at run time anyway")

_EFFECTS: dict[str, str] = {
    "BENTO-E101": "reaches the network",
    "BENTO-E102": "spawns or controls processes or runs native code",
    "BENTO-E104": "connects to a database directly",
    "BENTO-E105": "reads or writes the database directly",
}

_HINTS: dict[str, str] = {
    "BENTO-E101": "fetch the data with a SQL cell instead",
    "BENTO-E102": "remove it and do the work in Python inside the notebook",
    "BENTO-E103": "remove the shell escape or magic",
    "BENTO-E104": "move the query into a SQL cell (and write results with a write cell)",
    "BENTO-E105": "move the query into a SQL cell",
    "BENTO-E106": "write the dataframe with a write cell, or use a relative path inside the run directory",
    "BENTO-E107": "use a literal relative path (or a write cell) so the check can verify it",
    "BENTO-E108": "import the module with a plain import statement so the check can see it",
    "BENTO-E109": "run the code directly instead of through eval/exec",
}

# ---------------------------------------------------------------------------------------------------
# Denylists (fully qualified names; a module entry covers its submodules and members)
# ---------------------------------------------------------------------------------------------------

_NETWORK_MODULES = frozenset({
    "socket", "socketserver", "requests", "requests_toolbelt", "urllib.request", "urllib.robotparser",
    "urllib2", "http.client", "http.server", "httplib", "httplib2", "httpx", "aiohttp", "urllib3",
    "ftplib", "smtplib", "poplib", "imaplib", "telnetlib", "nntplib", "xmlrpc.client", "xmlrpc.server",
    "paramiko", "fabric", "asyncssh", "pycurl", "websocket", "websockets", "grpc", "zmq", "pika", "kafka",
    "confluent_kafka", "boto3", "botocore", "s3fs", "gcsfs", "adlfs", "google.cloud.storage",
    "azure.storage", "tornado.httpclient", "mechanize", "selenium",
})
_NETWORK_FUNCTIONS = frozenset({
    "urllib.urlopen", "urllib.urlretrieve", "asyncio.open_connection", "asyncio.start_server",
    "asyncio.open_unix_connection", "asyncio.start_unix_server",
})
_PROCESS_MODULES = frozenset({
    "subprocess", "_posixsubprocess", "multiprocessing", "concurrent.futures.process", "pty", "ctypes",
    "cffi", "pexpect", "sh", "plumbum", "webbrowser",
})
_PROCESS_FUNCTIONS = frozenset({
    "os.system", "os.popen", "os.fork", "os.forkpty", "os.startfile", "os.kill", "os.killpg",
    "platform.popen", "concurrent.futures.ProcessPoolExecutor", "asyncio.create_subprocess_exec",
    "asyncio.create_subprocess_shell",
})
_PROCESS_FUNCTION_PATTERN = re.compile(r"^os\.(exec|spawn|posix_spawn)\w*$")
_DATABASE_MODULES = frozenset({
    "sqlalchemy", "psycopg", "psycopg2", "psycopg2cffi", "asyncpg", "pg8000", "duckdb", "sqlite3",
    "pymysql", "MySQLdb", "mysql.connector", "mariadb", "pyodbc", "cx_Oracle", "oracledb",
    "snowflake.connector", "snowflake.snowpark", "snowflake.sqlalchemy", "google.cloud.bigquery",
    "pandas_gbq", "databricks.sql", "pyathena", "redshift_connector", "trino", "pyhive",
    "clickhouse_driver", "clickhouse_connect", "pymssql", "teradatasql", "vertica_python", "ibis",
    "connectorx", "pymongo", "redis", "cassandra", "pandas.io.sql",
})
_DATABASE_MODULE_PREFIX = "adbc_driver_"
# Attribute names that read or write a database, whatever object they are called on.
_DB_READ_ATTRS = frozenset({"read_sql", "read_sql_query", "read_sql_table", "read_gbq", "read_database",
                            "read_database_uri"})
_DB_WRITE_ATTRS = frozenset({"to_sql", "to_gbq", "write_database"})
_DB_ATTRS = _DB_READ_ATTRS | _DB_WRITE_ATTRS
_DATAFRAME_LIBRARIES = frozenset({"pandas", "polars", "modin", "dask"})
# IPython extensions that add SQL magics.
_SQL_EXTENSIONS = frozenset({"sql", "sql_magic", "jupysql"})

# Calls that write to the path passed at the given positions/keywords.
_ArgSpec = tuple[tuple[int, ...], tuple[str, ...]]
_PATH0: _ArgSpec = ((0,), ("path",))
_SRC_DST: _ArgSpec = ((0, 1), ("src", "dst"))
_DST: _ArgSpec = ((1,), ("dst",))
_MODULE_WRITERS: dict[str, _ArgSpec] = {
    **{f"os.{name}": _PATH0 for name in ("remove", "unlink", "rmdir", "removedirs", "chmod", "lchmod",
                                          "chown", "lchown", "chflags", "truncate", "mkfifo", "mknod",
                                          "utime", "chdir")},
    "os.mkdir": _PATH0, "os.makedirs": ((0,), ("name",)),
    "os.rename": _SRC_DST, "os.replace": _SRC_DST, "os.renames": ((0, 1), ("old", "new")),
    "os.link": _DST, "os.symlink": _DST,
    **{f"shutil.{name}": _DST for name in ("copy", "copy2", "copyfile", "copytree", "copymode", "copystat")},
    "shutil.move": _SRC_DST, "shutil.rmtree": _PATH0, "shutil.chown": _PATH0,
    "shutil.make_archive": ((0,), ("base_name",)), "shutil.unpack_archive": ((1,), ("extract_dir",)),
    "numpy.save": ((0,), ("file",)), "numpy.savez": ((0,), ("file",)),
    "numpy.savez_compressed": ((0,), ("file",)), "numpy.savetxt": ((0,), ("fname",)),
    "pyarrow.parquet.write_table": ((1,), ("where",)), "pyarrow.feather.write_feather": ((1,), ("dest",)),
    "pyarrow.csv.write_csv": ((1,), ("output_file",)), "joblib.dump": ((1,), ("filename",)),
    "pandas.ExcelWriter": _PATH0,
}
# Methods (on dataframes, figures, arrays) whose first argument is the destination path.
_FRAME_WRITERS = frozenset({
    "to_csv", "to_parquet", "to_json", "to_excel", "to_pickle", "to_feather", "to_hdf", "to_stata",
    "to_orc", "to_html", "to_latex", "to_markdown", "to_xml", "to_netcdf", "to_zarr", "write_csv",
    "write_parquet", "write_json", "write_ndjson", "write_ipc", "write_excel", "write_avro", "write_delta",
    "sink_parquet", "sink_csv", "sink_ipc", "savefig", "tofile",
})
_FRAME_PATH_KEYWORDS = ("path", "path_or_buf", "path_or_buffer", "excel_writer", "buf", "fname", "file",
                        "fid", "target", "uri", "where", "filename", "dest", "output_file", "table_uri")
_READ_PATH_KEYWORDS = ("filepath_or_buffer", "path", "source", "io", "path_or_buf", "uri", "file")
# open()-like calls: (path position, mode position, default mode).
_OPENERS: dict[str, tuple[int, int, str]] = {
    "open": (0, 1, "r"), "io.open": (0, 1, "r"), "codecs.open": (0, 1, "r"), "gzip.open": (0, 1, "rb"),
    "bz2.open": (0, 1, "rb"), "lzma.open": (0, 1, "rb"), "tarfile.open": (0, 1, "r"),
    "zipfile.ZipFile": (0, 1, "r"),
}
_PATH_CONSTRUCTORS = frozenset({
    f"{prefix}{name}" for prefix in ("pathlib.", "")
    for name in ("Path", "PurePath", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")
})
# pathlib methods that only exist on paths: an unresolved receiver still means a file write.
_PATH_ONLY_WRITERS = frozenset({"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir",
                                "symlink_to", "hardlink_to", "link_to"})
# Method names shared with other types (str.replace): checked only on receivers known to be paths.
_PATH_GENERIC_WRITERS = frozenset({"rename", "replace", "chmod", "lchmod"})
_HANDLE_FACTORIES = frozenset({*_OPENERS, "io.StringIO", "io.BytesIO", "pandas.ExcelWriter", "sys.stdout",
                               "sys.stderr", "os.open", "tempfile.TemporaryFile",
                               "tempfile.NamedTemporaryFile", "tempfile.SpooledTemporaryFile"})

_DYNAMIC_IMPORTS = frozenset({"__import__", "importlib.import_module", "importlib.__import__"})
_EXEC_FUNCTIONS = frozenset({"eval", "exec", "compile"})
_SENSITIVE_MODULES = frozenset({"os", "builtins", "importlib", "subprocess", "shutil", "socket", "sys",
                                "IPython", "pathlib"})
_GET_IPYTHON = frozenset({"get_ipython", "IPython.get_ipython", "IPython.core.getipython.get_ipython"})
# Names conventionally bound to well-known modules; used only for names the cell never binds.
_CONVENTIONAL_ALIASES = {"np": "numpy", "pd": "pandas", "pq": "pyarrow.parquet", "plt": "matplotlib.pyplot",
                         "pl": "polars"}

_SHELL_MAGICS = frozenset({"bash", "sh", "zsh", "script", "system", "sx", "sc", "!", "perl", "ruby",
                           "python", "python2", "python3", "pypy", "alias", "rehashx", "edit"})
_PACKAGE_MAGICS = frozenset({"pip", "conda", "mamba", "micromamba", "uv"})
_FILE_RUNNING_MAGICS = frozenset({"run"})
_PYTHON_MAGICS = frozenset({"time", "timeit", "prun", "capture", "debug"})
_IPYTHON_SHELL_METHODS = frozenset({"system", "system_raw", "system_piped", "getoutput"})
_IPYTHON_FILE_METHODS = frozenset({"safe_execfile", "safe_execfile_ipy", "safe_run_module"})
_IPYTHON_EXEC_METHODS = frozenset({"run_cell", "ex", "ev"})

_REMOTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Exemption:
    """A reviewed exception from the schedule spec.

    ``rule`` is a code ("BENTO-E101") or a category ("network", "process", "database", "file_write",
    "dynamic"); ``cells`` restricts it to those cell indices (``None``: the whole notebook). A reason is
    mandatory because the exemption is the audit trail of why a notebook may reach outside its I/O.
    """

    rule: str
    reason: str
    cells: tuple[int, ...] | None = None

    def matches(self, problem: Problem) -> bool:
        rule = _normalize_rule(self.rule)
        if rule is None or ELIGIBILITY_CODES.get(problem.code) not in EXEMPTABLE_CATEGORIES:
            return False
        if rule != problem.code and rule != ELIGIBILITY_CODES[problem.code]:
            return False
        return self.cells is None or problem.cell in self.cells


def check_cell(source: str, *, notebook: str, cell: int) -> list[Problem]:
    """Check one code cell on its own (names imported in other cells fall back to their plain meaning)."""
    checker = _CellChecker(notebook=notebook, cell=cell, scope=_Scope())
    checker.check_cell(source)
    return _sorted(checker.problems)


def check_notebook_cells(cells: Iterable[tuple[int, str]], *, notebook: str,
                         exemptions: Sequence[Exemption] = ()) -> list[Problem]:
    """Check the plain code cells of a notebook in order and apply its exemptions.

    Cells share one namespace at run time, so they share one scope here: ``import os`` in cell 1 makes
    ``os.system`` in cell 4 resolvable, and a variable assigned in one cell is not mistaken for a module
    in the next. Exempted problems are dropped; malformed or unused exemptions are reported.
    """
    scope = _Scope()
    problems: list[Problem] = []
    for index, source in cells:
        checker = _CellChecker(notebook=notebook, cell=index, scope=scope)
        checker.check_cell(source)
        problems.extend(checker.problems)
    return _sorted(_apply_exemptions(problems, exemptions, notebook=notebook))


def parse_exemptions(raw: object, *, notebook: str) -> tuple[list[Exemption], list[Problem]]:
    """Validate the ``exemptions`` entry of a schedule spec.

    Malformed entries are reported (BENTO-E112) and dropped. An entry without a reason is kept with an
    empty reason so that `check_notebook_cells` reports it once (BENTO-E110) and does not apply it.
    """
    if raw is None:
        return [], []
    spec = _spec_path(notebook)
    if not isinstance(raw, (list, tuple)):
        return [], [_exemption_problem(notebook, "BENTO-E112",
                                       f"'exemptions' in {spec} must be a list of {{rule, reason, cells}} "
                                       f"mappings, got {type(raw).__name__}; fix it in {spec}")]
    exemptions: list[Exemption] = []
    problems: list[Problem] = []
    for position, entry in enumerate(raw):
        exemption, errors = _parse_exemption(entry)
        if exemption is not None:
            exemptions.append(exemption)
        problems.extend(_exemption_problem(notebook, "BENTO-E112",
                                           f"exemption #{position + 1} in {spec} {error}; fix it in {spec}")
                        for error in errors)
    return exemptions, problems


# ---------------------------------------------------------------------------------------------------
# Exemptions
# ---------------------------------------------------------------------------------------------------


def _normalize_rule(rule: str) -> str | None:
    """The canonical code or category of an exemption rule, or None if it names nothing exemptable."""
    text = rule.strip()
    if ELIGIBILITY_CODES.get(text.upper()) in EXEMPTABLE_CATEGORIES:
        return text.upper()
    category = text.lower().replace("-", "_")
    return category if category in EXEMPTABLE_CATEGORIES else None


def _parse_exemption(entry: object) -> tuple[Exemption | None, list[str]]:
    if not isinstance(entry, Mapping):
        return None, [f"must be a mapping with 'rule' and 'reason', got {type(entry).__name__}"]
    errors = [f"has unknown key {key!r} (allowed: rule, reason, cells)"
              for key in entry if key not in ("rule", "reason", "cells")]
    rule = entry.get("rule")
    if not isinstance(rule, str) or _normalize_rule(rule) is None:
        errors.append(f"has rule {rule!r}; use a category ({', '.join(EXEMPTABLE_CATEGORIES)}) "
                      "or a code such as BENTO-E101")
    reason = entry.get("reason")
    if reason is not None and not isinstance(reason, str):
        errors.append(f"has a reason that is not text ({reason!r})")
    cells, cell_error = _parse_cells(entry.get("cells"))
    if cell_error:
        errors.append(cell_error)
    if errors:
        return None, errors
    assert isinstance(rule, str)
    return Exemption(rule=rule, reason=reason or "", cells=cells), []


def _parse_cells(raw: object) -> tuple[tuple[int, ...] | None, str | None]:
    if raw is None:
        return None, None
    items = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in items):
        return None, f"has cells {raw!r}; use a list of cell indices, e.g. cells: [3]"
    return tuple(items), None


def _apply_exemptions(problems: list[Problem], exemptions: Sequence[Exemption], *,
                      notebook: str) -> list[Problem]:
    spec = _spec_path(notebook)
    kept = list(problems)
    extra: list[Problem] = []
    for exemption in exemptions:
        label = _exemption_label(exemption)
        if _normalize_rule(exemption.rule) is None:
            extra.append(_exemption_problem(notebook, "BENTO-E112",
                                            f"{label} in {spec} names no exemptable rule; use a category "
                                            f"({', '.join(EXEMPTABLE_CATEGORIES)}) or a code such as "
                                            f"BENTO-E101"))
            continue
        if not exemption.reason.strip():
            extra.append(_exemption_problem(notebook, "BENTO-E110",
                                            f"{label} in {spec} has no reason, so it is not applied: every "
                                            f"exemption is a reviewed decision; add reason: \"...\" to it"))
            continue
        matched = [p for p in kept if exemption.matches(p)]
        if not matched:
            extra.append(_exemption_problem(notebook, "BENTO-E111",
                                            f"unused exemption {label} in {spec}: nothing in the notebook "
                                            f"needs it; remove it", severity="warning"))
        kept = [p for p in kept if p not in matched]
    return kept + extra


def _exemption_label(exemption: Exemption) -> str:
    where = "" if exemption.cells is None else f" for cells {list(exemption.cells)}"
    return f"{{rule: {exemption.rule}}}{where}"


def _exemption_problem(notebook: str, code: str, message: str, severity: str = "error") -> Problem:
    return Problem(notebook=notebook, cell=None, code=code, message=message, severity=severity)


def _spec_path(notebook: str) -> str:
    path = PurePosixPath(notebook)
    return str(path.with_name(path.stem + ".bento.yaml"))


def _sorted(problems: list[Problem]) -> list[Problem]:
    """Order by cell then line; ``sorted(problems)`` cannot compare a ``None`` cell with an int."""
    return sorted(problems, key=lambda p: (p.cell is None, p.cell or 0, p.line or 0, p.code, p.message))


# ---------------------------------------------------------------------------------------------------
# Name resolution
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _PathValue:
    """A statically known path: the whole text, or only a prefix when ``complete`` is False.

    ``pathlib`` tells a ``Path`` object from a plain string, so that methods shared with ``str``
    (``replace``) are treated as file operations only on real paths.
    """

    text: str
    complete: bool = True
    pathlib: bool = False


@dataclasses.dataclass(frozen=True)
class _Binding:
    """What a name is bound to, as far as the check can tell.

    ``qualname`` is the fully qualified name of a module or module member (None: a local value);
    ``reported`` means the statement that bound it was already reported, so uses are not reported again.
    """

    qualname: str | None = None
    reported: bool = False
    path: _PathValue | None = None
    kind: str | None = None  # "ipython" (get_ipython()) or "handle" (an open file or buffer)


@dataclasses.dataclass
class _Scope:
    """Names bound so far; shared by the cells of one notebook, since they share a namespace."""

    bindings: dict[str, _Binding] = dataclasses.field(default_factory=dict)
    star_modules: list[str] = dataclasses.field(default_factory=list)


def _normalize(qualname: str) -> str:
    """Map equivalent spellings to one name (builtins.open is open, posix.system is os.system)."""
    if qualname.startswith("builtins."):
        return qualname[len("builtins."):]
    for alias in ("posix.", "nt."):
        if qualname.startswith(alias):
            return "os." + qualname[len(alias):]
    return qualname


def _within(qualname: str, modules: frozenset[str]) -> bool:
    parts = qualname.split(".")
    return any(".".join(parts[:i]) in modules for i in range(1, len(parts) + 1))


def _forbidden(qualname: str) -> str | None:
    """The problem code of a module or member that must not be bound or used, or None."""
    if _within(qualname, _NETWORK_MODULES) or qualname in _NETWORK_FUNCTIONS:
        return "BENTO-E101"
    if (_within(qualname, _PROCESS_MODULES) or qualname in _PROCESS_FUNCTIONS
            or _PROCESS_FUNCTION_PATTERN.match(qualname)):
        return "BENTO-E102"
    if _within(qualname, _DATABASE_MODULES) or qualname.startswith(_DATABASE_MODULE_PREFIX):
        return "BENTO-E104"
    head, _, last = qualname.rpartition(".")
    if last in _DB_ATTRS and head.split(".")[0] in _DATAFRAME_LIBRARIES:
        return "BENTO-E105"
    return None


def _literal_str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _argument(call: ast.Call, position: int, keywords: Sequence[str]) -> ast.expr | None:
    """The argument at ``position`` or under one of ``keywords``; None if absent or unpacked."""
    if position < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        return call.args[position]
    for keyword in call.keywords:
        if keyword.arg in keywords:
            return keyword.value
    return None


def _join(parts: Sequence[_PathValue | None]) -> _PathValue | None:
    """``os.path.join``/``Path(a, b)`` on partially known parts: stop at the first unknown part."""
    if not parts or parts[0] is None:
        return None
    result = parts[0]
    for part in parts[1:]:
        if not result.complete:
            return result
        if part is None:
            return _PathValue(result.text.rstrip("/") + "/" if result.text else "", complete=False)
        result = _PathValue(posixpath.join(result.text, part.text), part.complete)
    return result


def _as_pathlib(path: _PathValue | None) -> _PathValue | None:
    return None if path is None else dataclasses.replace(path, pathlib=True)


def _where(path: _PathValue | None) -> str:
    """Classify a path: "inside" the run directory, "outside" it, "remote" (a URL) or "unknown"."""
    if path is None:
        return "unknown"
    text = path.text
    if _REMOTE_URL.match(text):
        return "outside" if text.lower().startswith("file://") else "remote"
    if text.startswith(("/", "\\", "~")) or _WINDOWS_DRIVE.match(text):
        return "outside"
    if not text:
        return "inside" if path.complete else "unknown"
    normalized = posixpath.normpath(text.replace("\\", "/"))
    if normalized == ".." or normalized.startswith("../"):
        return "outside"
    return "inside"


def _write_mode(mode: str) -> bool:
    return any(flag in mode for flag in "wax+")


# ---------------------------------------------------------------------------------------------------
# IPython transform
# ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _transformer() -> "TransformerManager":
    """Built lazily: importing IPython is slow and only needed once a cell is checked."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def _to_python(source: str) -> tuple[str, int]:
    """Rewrite IPython syntax into plain Python; return it and the number of lines dropped at the top.

    IPython drops leading blank lines, so line numbers in the result are shifted by that many.
    """
    try:
        text = _transformer().transform_cell(source)
    except Exception:  # noqa: BLE001 - an untransformable cell is then reported as a syntax error
        return source, 0
    return text, _leading_blank_lines(source) - _leading_blank_lines(text)


def _leading_blank_lines(text: str) -> int:
    count = 0
    for line in text.splitlines():
        if line.strip():
            break
        count += 1
    return count


def _parse(text: str) -> ast.Module | SyntaxError:
    try:
        return ast.parse(text)
    except SyntaxError as err:
        return err
    except ValueError as err:  # source with NUL bytes
        return SyntaxError(str(err))


# ---------------------------------------------------------------------------------------------------
# The visitor
# ---------------------------------------------------------------------------------------------------


class _CellChecker(ast.NodeVisitor):
    """Walks one cell in source order, resolving names through the shared scope, and collects problems.

    Forbidden modules and members are reported where they are bound (the import) or, when reached
    through an already-imported allowed module (``os.system``), where they are used. File writes are
    reported at the call, because only the arguments tell whether the path leaves the run directory.
    """

    def __init__(self, *, notebook: str, cell: int, scope: _Scope) -> None:
        self.notebook = notebook
        self.cell = cell
        self.scope = scope
        self.spec = _spec_path(notebook)
        self.problems: list[Problem] = []
        self._offset = 0  # added to node line numbers: nested sources (%%time bodies, exec strings)
        self._seen: set[tuple[str, int | None, str]] = set()

    # -- entry points ------------------------------------------------------------------------------

    def check_cell(self, source: str) -> None:
        self._check_source(source, offset=0, ipython=True, report_syntax=True)

    def _check_source(self, source: str, *, offset: int, ipython: bool, report_syntax: bool) -> None:
        """Parse and visit ``source`` whose line 1 is line ``offset + 1`` of the cell."""
        text, dropped = _to_python(source) if ipython else (source, 0)
        tree = _parse(text)
        if isinstance(tree, SyntaxError):
            if report_syntax:
                self._report_syntax(tree, offset + dropped)
            return
        saved = self._offset
        self._offset = offset + dropped
        try:
            self.visit(tree)
        finally:
            self._offset = saved

    def _report_syntax(self, err: SyntaxError, offset: int) -> None:
        line = (err.lineno or 1) + offset
        self._add(line, "BENTO-E100",
                  f"the cell is not valid Python at line {line} ({err.msg}); fix the syntax so the "
                  "eligibility check can read the cell")

    # -- reporting ---------------------------------------------------------------------------------

    def _add(self, line: int | None, code: str, message: str, severity: str = "error") -> None:
        key = (code, line, message)
        if key in self._seen:
            return
        self._seen.add(key)
        self.problems.append(Problem(notebook=self.notebook, cell=self.cell, code=code, message=message,
                                     line=line, severity=severity))

    def _report(self, node: ast.AST, code: str, found: str, hint: str | None = None) -> None:
        """Report ``found`` with why it is refused and how to fix it (including the exemption route)."""
        category = ELIGIBILITY_CODES[code]
        severity = "warning" if code in _WARNING_CODES else "error"
        prefix = "the check cannot verify this statically; " if severity == "warning" else ""
        message = (f"{found}: {prefix}{_WHY}; {hint or _HINTS[code]}, or add a reviewed exemption to "
                   f"{self.spec}: exemptions: [{{rule: {category}, reason: ...}}]")
        line = getattr(node, "lineno", None)
        self._add(None if line is None else line + self._offset, code, message, severity)

    # -- scope -------------------------------------------------------------------------------------

    def _bind(self, name: str, binding: _Binding | None = None) -> None:
        self.scope.bindings[name] = binding or _Binding()

    @contextlib.contextmanager
    def _nested_scope(self, arguments: ast.arguments | None = None) -> Iterator[None]:
        """Function, class and comprehension bodies: their local names do not leak out."""
        saved = dict(self.scope.bindings)
        if arguments is not None:
            for arg in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                        arguments.vararg, arguments.kwarg):
                if arg is not None:
                    self._bind(arg.arg)
        try:
            yield
        finally:
            self.scope.bindings = saved

    def _fallback(self, name: str) -> str:
        """A name the cells never bound: assume its conventional meaning (imported in another cell)."""
        for module in self.scope.star_modules:
            if _forbidden(_normalize(module)):
                continue  # the star import itself was reported; every name would otherwise match
            candidate = _normalize(f"{module}.{name}")
            if _forbidden(candidate) or candidate in _MODULE_WRITERS or candidate in _OPENERS:
                return candidate
        return _CONVENTIONAL_ALIASES.get(name, name)

    def _resolve(self, node: ast.AST) -> tuple[str, bool] | None:
        """The qualified name an expression refers to and whether its binding was reported."""
        if isinstance(node, ast.Name):
            binding = self.scope.bindings.get(node.id)
            if binding is None:
                return _normalize(self._fallback(node.id)), False
            return None if binding.qualname is None else (binding.qualname, binding.reported)
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            return None if base is None else (_normalize(f"{base[0]}.{node.attr}"), base[1])
        if isinstance(node, ast.Call) and self._is_literal_getattr(node):
            base = self._resolve(node.args[0])
            attr = _literal_str(node.args[1])
            return None if base is None else (_normalize(f"{base[0]}.{attr}"), base[1])
        return None

    def _qualname(self, node: ast.AST) -> str | None:
        resolved = self._resolve(node)
        return None if resolved is None else resolved[0]

    def _is_literal_getattr(self, node: ast.Call) -> bool:
        return (self._qualname(node.func) == "getattr" and len(node.args) >= 2
                and _literal_str(node.args[1]) is not None)

    def _is_ipython(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            return self._qualname(node.func) in _GET_IPYTHON
        if isinstance(node, ast.Name):
            binding = self.scope.bindings.get(node.id)
            return binding is not None and binding.kind == "ipython"
        return False

    def _is_handle(self, node: ast.AST) -> bool:
        """An open file, buffer or writer object: writing to it was checked where it was created."""
        if isinstance(node, ast.Name):
            binding = self.scope.bindings.get(node.id)
            if binding is not None and binding.kind == "handle":
                return True
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr == "open":
                return True
            return self._qualname(node.func) in _HANDLE_FACTORIES
        return self._qualname(node) in _HANDLE_FACTORIES

    def _binding_for(self, value: ast.AST) -> _Binding:
        """What a name assigned ``value`` is bound to."""
        if self._is_ipython(value):
            return _Binding(kind="ipython")
        if self._is_handle(value):
            return _Binding(kind="handle")
        module = self._dynamic_import_target(value)
        if module is not None:
            return _Binding(qualname=module, reported=_forbidden(module) is not None)
        path = self._path_of(value)
        if path is not None:
            return _Binding(path=path)
        resolved = self._resolve(value) if isinstance(value, (ast.Name, ast.Attribute, ast.Call)) else None
        if resolved is not None:
            return _Binding(qualname=resolved[0], reported=resolved[1] or _forbidden(resolved[0]) is not None)
        return _Binding()

    def _is_pathlib(self, node: ast.AST) -> bool:
        path = self._path_of(node)
        return path is not None and path.pathlib

    def _dynamic_import_target(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Call) and self._qualname(node.func) in _DYNAMIC_IMPORTS and node.args:
            return _literal_str(node.args[0])
        return None

    # -- static paths ------------------------------------------------------------------------------

    def _path_of(self, node: ast.AST | None) -> _PathValue | None:
        """The path an expression evaluates to, as far as it is statically known."""
        if node is None:
            return None
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
            value = node.value
            return _PathValue(value if isinstance(value, str) else value.decode("utf-8", "replace"))
        if isinstance(node, ast.JoinedStr):
            return self._path_of_fstring(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Div)):
            return self._path_of_binop(node)
        if isinstance(node, ast.Name):
            binding = self.scope.bindings.get(node.id)
            return None if binding is None else binding.path
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            base = self._path_of(node.value)
            return _as_pathlib(_join([base, _PathValue("..")])) if base is not None else None
        if isinstance(node, ast.Call):
            return self._path_of_call(node)
        return None

    def _path_of_fstring(self, node: ast.JoinedStr) -> _PathValue:
        """An f-string is known up to its first placeholder that does not resolve to a whole path."""
        text = ""
        for value in node.values:
            part = self._fstring_part(value)
            if part is None or not part.complete:
                return _PathValue(text + (part.text if part else ""), complete=False)
            text += part.text
        return _PathValue(text)

    def _fstring_part(self, value: ast.expr) -> _PathValue | None:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return _PathValue(value.value)
        if isinstance(value, ast.FormattedValue) and value.format_spec is None:
            return self._path_of(value.value)
        return None

    def _path_of_binop(self, node: ast.BinOp) -> _PathValue | None:
        left = self._path_of(node.left)
        if left is None or not left.complete:
            return left
        right = self._path_of(node.right)
        if isinstance(node.op, ast.Div):
            return _as_pathlib(_join([left, right])) if left.pathlib else None
        if right is None:
            return _PathValue(left.text, complete=False)
        return _PathValue(left.text + right.text, right.complete)

    def _path_of_call(self, node: ast.Call) -> _PathValue | None:
        name = self._qualname(node.func)
        args = [self._path_of(arg) for arg in node.args]
        if name in _PATH_CONSTRUCTORS:
            return _as_pathlib(_join(args) if args else _PathValue("."))
        if name in ("os.path.join", "posixpath.join"):
            return _join(args)
        if name in ("os.path.abspath", "os.path.normpath", "os.path.realpath", "os.path.expanduser",
                    "os.fspath", "str") and args:
            return args[0]
        if name == "os.getcwd":
            return _PathValue(".")
        if name in ("pathlib.Path.cwd", "Path.cwd"):
            return _PathValue(".", pathlib=True)
        if name in ("pathlib.Path.home", "Path.home"):
            return _PathValue("~", pathlib=True)
        if isinstance(node.func, ast.Attribute):
            return self._path_of_method(node.func, args)
        return None

    def _path_of_method(self, func: ast.Attribute, args: list[_PathValue | None]) -> _PathValue | None:
        base = self._path_of(func.value)
        if base is None or not base.pathlib:
            return None
        if func.attr == "joinpath":
            return _as_pathlib(_join([base, *args]))
        if func.attr in ("resolve", "absolute", "expanduser", "with_suffix"):
            return base
        if func.attr in ("with_name", "with_stem"):
            return _PathValue(posixpath.dirname(base.text), complete=False, pathlib=True)
        return None

    # -- statements that bind names ----------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            code = _forbidden(_normalize(alias.name))
            if code:
                self._report(node, code, f"imports '{alias.name}', which {_EFFECTS[code]}", _import_hint(code))
            bound = alias.asname or alias.name.split(".")[0]
            qualname = alias.name if alias.asname else bound
            self._bind(bound, _Binding(qualname=qualname, reported=code is not None))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            for alias in node.names:
                self._bind(alias.asname or alias.name)
            return
        module_code = _forbidden(_normalize(node.module))
        if module_code:
            self._report(node, module_code, f"imports from '{node.module}', which {_EFFECTS[module_code]}",
                         _import_hint(module_code))
        for alias in node.names:
            if alias.name == "*":
                if node.module not in self.scope.star_modules:
                    self.scope.star_modules.append(node.module)
                continue
            qualname = _normalize(f"{node.module}.{alias.name}")
            code = module_code or _forbidden(qualname)
            if code and not module_code:
                self._report(node, code, f"imports '{qualname}', which {_EFFECTS[code]}",
                             _import_hint(code, qualname))
            self._bind(alias.asname or alias.name, _Binding(qualname=qualname, reported=code is not None))

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._assign(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._assign(node.target, node.value)
        else:
            self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._assign(node.target, node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self._bind(node.target.id)
        else:
            self.visit(node.target)

    def _assign(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._bind(target.id, self._binding_for(value))
        else:
            self.visit(target)

    def visit_withitem(self, node: ast.withitem) -> None:
        self.visit(node.context_expr)
        if node.optional_vars is not None:
            self._assign(node.optional_vars, node.context_expr)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self._bind(node.name)
        for statement in node.body:
            self.visit(statement)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_function(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in (*node.decorator_list, *node.args.defaults, *node.args.kw_defaults):
            if expr is not None:
                self.visit(expr)
        self._bind(node.name)
        with self._nested_scope(node.args):
            for statement in node.body:
                self.visit(statement)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in (*node.args.defaults, *node.args.kw_defaults):
            if expr is not None:
                self.visit(expr)
        with self._nested_scope(node.args):
            self.visit(node.body)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            self.visit(expr)
        self._bind(node.name)
        with self._nested_scope():
            for statement in node.body:
                self.visit(statement)

    def _visit_comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp,
                             results: Sequence[ast.expr]) -> None:
        """Bind the loop variables before the element is read (``generic_visit`` reads it first)."""
        with self._nested_scope():
            for generator in node.generators:
                self.visit(generator.iter)
                self.visit(generator.target)
                for condition in generator.ifs:
                    self.visit(condition)
            for result in results:
                self.visit(result)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._visit_comprehension(node, [node.elt])

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comprehension(node, [node.key, node.value])

    # -- references --------------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._check_reference(node)
        else:
            self._bind(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            if node.attr in _DB_ATTRS:
                self._report_db_attribute(node, node.attr)
            elif self._check_reference(node):
                return
        self.generic_visit(node)

    def _check_reference(self, node: ast.expr) -> bool:
        """Report a use of a forbidden module or member not already reported where it was bound."""
        resolved = self._resolve(node)
        if resolved is None or resolved[1]:
            return False
        code = _forbidden(resolved[0])
        if code is None:
            return False
        if code == "BENTO-E105":
            self._report_db_attribute(node, resolved[0].rpartition(".")[2])
        else:
            self._report(node, code, f"uses '{resolved[0]}', which {_EFFECTS[code]}",
                         _import_hint(code, resolved[0]))
        return True

    def _report_db_attribute(self, node: ast.AST, attr: str) -> None:
        hint = "write the dataframe with a write cell" if attr in _DB_WRITE_ATTRS else None
        verb = "writes to" if attr in _DB_WRITE_ATTRS else "reads from"
        self._report(node, "BENTO-E105", f"{verb} the database directly with {attr}()", hint)

    # -- calls -------------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> None:
        self._check_call(node)
        self.generic_visit(node)

    def _check_call(self, node: ast.Call) -> None:
        name = self._qualname(node.func)
        if isinstance(node.func, ast.Attribute) and self._is_ipython(node.func.value):
            self._check_ipython_call(node, node.func.attr)
        elif name in _DYNAMIC_IMPORTS:
            self._check_dynamic_import(node, name)
        elif name in _EXEC_FUNCTIONS:
            self._check_exec(node, _argument(node, 0, ("source", "expression")), f"{name}()")
        elif name == "getattr":
            self._check_getattr(node)
        elif name in _OPENERS:
            self._check_open(node, name)
        elif name == "os.open":
            self._check_os_open(node)
        elif name in _MODULE_WRITERS:
            self._check_module_writer(node, name)
        elif isinstance(node.func, ast.Attribute):
            self._check_method_call(node, node.func)

    def _check_method_call(self, node: ast.Call, func: ast.Attribute) -> None:
        attr = func.attr
        if attr in _FRAME_WRITERS:
            target = _argument(node, 0, _FRAME_PATH_KEYWORDS)
            self._check_write(node, target, f"{attr}()", certain=True)
        elif attr in _PATH_ONLY_WRITERS or (attr in _PATH_GENERIC_WRITERS and self._is_pathlib(func.value)):
            self._check_path_method(node, func)
        elif attr == "open" and self._is_pathlib(func.value):
            mode_node = _argument(node, 0, ("mode",))
            mode = "r" if mode_node is None else _literal_str(mode_node)
            self._check_mode_write(node, func.value, mode, "Path.open()")
        elif attr.startswith("read_"):
            source = _argument(node, 0, _READ_PATH_KEYWORDS)
            if _where(self._path_of(source)) == "remote":
                self._report(node, "BENTO-E101", f"{attr}() reads the remote URL {_show(self._path_of(source))}")

    def _check_path_method(self, node: ast.Call, func: ast.Attribute) -> None:
        self._check_write(node, func.value, f"Path.{func.attr}()", certain=True)
        if func.attr in ("rename", "replace"):
            self._check_write(node, _argument(node, 0, ("target",)), f"Path.{func.attr}()", certain=True)

    def _check_module_writer(self, node: ast.Call, name: str) -> None:
        positions, keywords = _MODULE_WRITERS[name]
        for position in positions:
            target = _argument(node, position, keywords)
            self._check_write(node, target, f"{name}()", certain=True)

    def _check_open(self, node: ast.Call, name: str) -> None:
        path_position, mode_position, default = _OPENERS[name]
        mode_node = _argument(node, mode_position, ("mode",))
        mode = default if mode_node is None else _literal_str(mode_node)
        self._check_mode_write(node, _argument(node, path_position, ("file", "name", "filename")), mode,
                               f"{name}()")

    def _check_mode_write(self, node: ast.Call, target: ast.expr | None, mode: str | None, label: str) -> None:
        """A write if the mode says so; an unknown mode only matters for a path known to be outside."""
        if mode is None:
            self._check_write(node, target, f"{label} (mode unknown)", certain=False)
        elif _write_mode(mode):
            self._check_write(node, target, f"{label} with mode {mode!r}", certain=True)

    def _check_os_open(self, node: ast.Call) -> None:
        flags = _argument(node, 1, ("flags",))
        names = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(flags)
                 if isinstance(n, (ast.Attribute, ast.Name))} if flags is not None else set()
        names = {name for name in names if name.startswith("O_")}
        writes = names & {"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"}
        if writes or names != {"O_RDONLY"}:
            self._check_write(node, _argument(node, 0, ("path",)), "os.open()", certain=bool(writes))

    def _check_write(self, node: ast.Call, target: ast.expr | None, label: str, *, certain: bool) -> None:
        """Report a write to ``target`` unless it stays in the run directory (or is an open handle)."""
        if target is None or self._is_handle(target):
            return
        if isinstance(target, ast.Constant) and target.value is None:  # to_html(buf=None) returns text
            return
        path = self._path_of(target)
        known = path is not None and (path.complete or bool(path.text))
        self._check_path(node, path, _show(path) if known else f"`{ast.unparse(target)}`", label,
                         certain=certain)

    def _check_path(self, node: ast.Call, path: _PathValue | None, shown: str, label: str, *,
                    certain: bool) -> None:
        """Classify a written path.

        ``certain`` is False when the call may or may not write (e.g. a non-literal open mode): then only
        a path known to be outside is reported, and as a warning.
        """
        where = _where(path)
        if where == "inside":
            return
        if where == "remote":
            self._report(node, "BENTO-E101", f"{label} writes to the remote URL {shown}")
        elif where == "outside" and certain:
            self._report(node, "BENTO-E106", f"{label} writes outside the run directory ({shown})")
        elif where == "outside" or certain:
            self._report(node, "BENTO-E107", f"{label} may write outside the run directory ({shown})")

    def _check_dynamic_import(self, node: ast.Call, name: str) -> None:
        module = _literal_str(_argument(node, 0, ("name",)))
        if module is None:
            self._report(node, "BENTO-E108", f"{name}() imports a module whose name is only known at run time")
            return
        code = _forbidden(_normalize(module))
        if code:
            self._report(node, code, f"imports '{module}' dynamically with {name}(), which {_EFFECTS[code]}",
                         _import_hint(code))

    def _check_exec(self, node: ast.Call, source: ast.expr | None, label: str) -> None:
        """Check literal code like any other code; warn about code built at run time."""
        if source is None:
            return
        text = _literal_str(source)
        if text is None:
            self._report(node, "BENTO-E109", f"{label} runs code built at run time")
            return
        self._check_source(text, offset=self._offset + node.lineno - 1, ipython=False, report_syntax=False)

    def _check_getattr(self, node: ast.Call) -> None:
        if self._is_literal_getattr(node):
            self._check_reference(node)
        elif node.args and self._qualname(node.args[0]) in _SENSITIVE_MODULES:
            self._report(node, "BENTO-E108",
                         f"getattr() looks up a member of '{self._qualname(node.args[0])}' chosen at run time")

    # -- IPython -----------------------------------------------------------------------------------

    def _check_ipython_call(self, node: ast.Call, method: str) -> None:
        if method in _IPYTHON_SHELL_METHODS:
            command = _literal_str(_argument(node, 0, ("cmd",)))
            shown = repr(command) if command is not None else "built at run time"
            self._report(node, "BENTO-E103",
                         f"runs a shell command ({shown}) with a `!`/`!!` line or get_ipython().{method}()")
        elif method in _IPYTHON_FILE_METHODS:
            self._report(node, "BENTO-E103", f"runs another file with get_ipython().{method}()")
        elif method in _IPYTHON_EXEC_METHODS:
            self._check_exec(node, _argument(node, 0, ("raw_cell", "expr")), f"get_ipython().{method}()")
        elif method in ("run_line_magic", "run_cell_magic", "magic"):
            self._check_magic_call(node, method)

    def _check_magic_call(self, node: ast.Call, method: str) -> None:
        args = [_literal_str(arg) for arg in node.args]
        if not args or args[0] is None:
            self._report(node, "BENTO-E108", "calls an IPython magic whose name is only known at run time")
            return
        if method == "magic":  # legacy get_ipython().magic("name args")
            name, _, line = args[0].lstrip("%").partition(" ")
            self._check_magic(node, name, line, None)
        elif method == "run_line_magic":
            self._check_magic(node, args[0], args[1] if len(args) > 1 else "", None)
        else:
            self._check_magic(node, args[0], args[1] if len(args) > 1 else "", args[2] if len(args) > 2 else "")

    def _check_magic(self, node: ast.Call, name: str, line: str | None, body: str | None) -> None:
        """Classify one magic; ``body`` is None for a line magic."""
        name = name.lstrip("%")
        label = f"%%{name}" if body is not None else f"%{name}"
        line = line or ""
        if name in _SHELL_MAGICS:
            self._report(node, "BENTO-E103", f"runs shell commands with the {label} magic")
        elif name in _FILE_RUNNING_MAGICS:
            self._report(node, "BENTO-E103", f"runs another file with the {label} magic")
        elif name in _PACKAGE_MAGICS:
            self._report(node, "BENTO-E103", f"installs packages at run time with the {label} magic",
                         "declare the dependency in the project environment instead")
        elif name == "sql":
            self._report(node, "BENTO-E105", f"queries the database with the {label} magic")
        elif name in ("load_ext", "reload_ext"):
            self._check_load_ext(node, line.split(), label)
        elif name in ("cd", "pushd"):
            self._check_cd(node, line.strip(), label)
        elif name in ("writefile", "file", "save"):
            target = next((token for token in line.split() if not token.startswith("-")), None)
            if target is not None:
                path = _PathValue(target.strip("'\""))
                self._check_path(node, path, _show(path), label, certain=True)
        elif name == "store" and line.strip() and not line.strip().startswith("-r"):
            self._report(node, "BENTO-E106", f"{label} persists variables outside the run directory")
        elif name in _PYTHON_MAGICS:
            self._check_magic_code(node, line, body)

    def _check_load_ext(self, node: ast.Call, extensions: Sequence[str], label: str) -> None:
        for extension in extensions:
            if extension in _SQL_EXTENSIONS:
                self._report(node, "BENTO-E105", f"loads the SQL magics with {label} {extension}")
                continue
            code = _forbidden(extension)
            if code:
                self._report(node, code, f"loads '{extension}' with {label}, which {_EFFECTS[code]}",
                             _import_hint(code))

    def _check_cd(self, node: ast.Call, argument: str, label: str) -> None:
        """Changing directory makes every later relative write land outside the run directory."""
        label = f"{label} (changes the working directory)"
        if argument.startswith("-"):
            self._check_path(node, None, f"`{argument}`", label, certain=True)
            return
        path = _PathValue(argument.strip("'\"") or "~")  # a bare %cd goes to the home directory
        self._check_path(node, path, _show(path), label, certain=True)

    def _check_magic_code(self, node: ast.Call, line: str, body: str | None) -> None:
        """``%%time``/``%%capture`` bodies and ``%time``/``%timeit`` arguments are Python: check them."""
        here = self._offset + node.lineno
        if body is not None:
            self._check_source(body, offset=here, ipython=True, report_syntax=True)
            return
        tokens = line.split(" ")
        for start in range(len(tokens)):  # skip options such as `-n 10` until the rest parses
            candidate = " ".join(tokens[start:])
            if candidate.strip() and not isinstance(_parse(_to_python(candidate)[0]), SyntaxError):
                self._check_source(candidate, offset=here - 1, ipython=True, report_syntax=False)
                return


def _import_hint(code: str, qualname: str | None = None) -> str:
    if code == "BENTO-E105" and qualname and qualname.rpartition(".")[2] in _DB_WRITE_ATTRS:
        return "write the dataframe with a write cell"
    return _HINTS[code]


def _show(path: _PathValue | None) -> str:
    if path is None:
        return "an unresolved path"
    return repr(path.text) if path.complete else f"a path starting with {path.text!r}"
