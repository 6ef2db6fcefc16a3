"""Step 1: read an ``.ipynb`` and classify its cells. No Dagster imports.

The cell format is a contract (README "Cell format"):

* **SQL cell** — ``cell.metadata["bento"] = {"type": "sql", "output": "<identifier>"}`` with the SQL
  as the source, or a first line ``%%bento_sql <identifier>``. Optional keys ``connection``,
  ``dialect``.
* **Write cell** — ``cell.metadata["bento"] = {"type": "write", "input": "<identifier>", "table":
  "<schema>.<table>", "mode": "overwrite" | "append" | "overwrite_partition"}`` or a single line
  ``%bento_write <identifier> <schema>.<table> [mode]``.
* **Parameters** — the cell tagged ``parameters`` (papermill's convention).

When metadata and the typed magic line are both present they must agree.
"""

import ast
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal


from dagster_bento.errors import DagsterBentoNotebookError, Problem

CELL_KEY = "bento"
SQL_MAGIC = "%%bento_sql"
WRITE_MAGIC = "%bento_write"
WRITE_MODES = ("overwrite", "append", "overwrite_partition")
WriteMode = Literal["overwrite", "append", "overwrite_partition"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# schema.table, either part may contain Jinja placeholders ({{ region }}); rendered names are
# validated again after rendering.
_TABLE = re.compile(r"^[A-Za-z0-9_{}\s.|'\"-]+$")
_SQL_KEYS = {"type", "output", "connection", "dialect"}
_WRITE_KEYS = {"type", "input", "table", "mode", "partition_column"}


class ComputedDefault:
    """A parameter whose default is computed in the parameters cell (not a literal): known name,
    value only known inside the kernel. Templates cannot use it unless a schedule sets it."""

    def __repr__(self) -> str:
        return "<computed>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ComputedDefault)

    def __hash__(self) -> int:
        return hash(ComputedDefault)


COMPUTED = ComputedDefault()
INJECTED_TAGS = ("injected-parameters", "bento-setup")


@dataclasses.dataclass(frozen=True)
class SqlCell:
    index: int
    output: str
    sql: str  # template text (may hold {{ placeholders }})
    connection: str | None = None
    dialect: str | None = None


@dataclasses.dataclass(frozen=True)
class WriteCell:
    index: int
    input: str
    table: str  # template text
    mode: WriteMode = "overwrite"
    partition_column: str = "ds"


@dataclasses.dataclass(frozen=True)
class CodeCell:
    index: int
    source: str
    is_parameters: bool = False


@dataclasses.dataclass(frozen=True)
class ParsedNotebook:
    """What the notebook declares, independent of any schedule."""

    path: str  # display path, relative to the project when known
    sha256: str
    sql_cells: tuple[SqlCell, ...]
    write_cells: tuple[WriteCell, ...]
    code_cells: tuple[CodeCell, ...]
    parameters: dict[str, Any]  # defaults from the parameters cell (literal values only)
    parameters_cell: int | None
    kernel_name: str
    problems: tuple[Problem, ...]


# ---------------------------------------------------------------------------------------------
# reading


def read_notebook_node(path: Path, display: str) -> tuple[Any | None, bytes, list[Problem]]:
    """Read and validate with nbformat. Returns (node or None, raw bytes, problems)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, b"", [Problem(display, None, "BENTO001", f"cannot read the file: {err}")]
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        return None, raw, [Problem(display, None, "BENTO001",
                                   f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                                   "re-save it from Jupyter or fix the JSON by hand")]
    if not isinstance(data, dict) or data.get("nbformat") != 4:
        found = data.get("nbformat") if isinstance(data, dict) else type(data).__name__
        return None, raw, [Problem(display, None, "BENTO001",
                                   f"is not an nbformat 4 notebook (nbformat={found!r}); "
                                   "open and re-save it with Jupyter 4+")]
    try:
        import nbformat  # only when a notebook is parsed (not on a warm definitions load)

        nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # nbformat raises several unrelated types  # noqa: BLE001
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, raw, [Problem(display, None, "BENTO001",
                                   f"does not validate as nbformat 4: {msg}; re-save it from Jupyter")]
    return nb, raw, []


def parse_notebook(path: Path | str, display: str | None = None) -> ParsedNotebook:
    """Parse a notebook file. Never raises for content problems: they are in ``.problems``."""
    path = Path(path)
    display = display or str(path)
    nb, raw, problems = read_notebook_node(path, display)
    sha = hashlib.sha256(raw).hexdigest()
    if nb is None:
        return ParsedNotebook(display, sha, (), (), (), {}, None, "python3", tuple(problems))
    return parse_notebook_node(nb, display, sha)


def load_notebook(path: Path | str, display: str | None = None) -> ParsedNotebook:
    """Like `parse_notebook` but raises `DagsterBentoNotebookError` when there is any error."""
    parsed = parse_notebook(path, display)
    errors = [p for p in parsed.problems if p.severity == "error"]
    if errors:
        raise DagsterBentoNotebookError(errors)
    return parsed


def parse_notebook_node(nb: Any, display: str, sha: str = "") -> ParsedNotebook:
    problems: list[Problem] = []
    sql_cells: list[SqlCell] = []
    write_cells: list[WriteCell] = []
    code_cells: list[CodeCell] = []
    parameters: dict[str, Any] = {}
    parameters_cell: int | None = None
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        meta = cell.get("metadata", {}).get(CELL_KEY)
        tags = cell.get("metadata", {}).get("tags", []) or []
        injected = sorted(set(INJECTED_TAGS) & set(tags))
        if injected:
            problems.append(Problem(display, index, "BENTO003",
                                    f"cell is tagged {injected[0]!r}: this looks like an executed copy (papermill or "
                                    "dagster-bento output); delete the cell — parameters are injected at run time"))
            continue
        kind, found = _classify(display, index, source, meta, problems)
        if kind == "sql" and found is not None:
            sql_cells.append(found)
        elif kind == "write" and found is not None:
            write_cells.append(found)
        elif kind == "code":
            is_params = "parameters" in tags
            if is_params:
                if parameters_cell is not None:
                    problems.append(Problem(display, index, "BENTO003",
                                            f"a second cell is tagged 'parameters' (the first is cell "
                                            f"{parameters_cell}); keep one parameters cell"))
                else:
                    parameters_cell = index
                    parameters = _parameter_defaults(display, index, source, problems)
            code_cells.append(CodeCell(index, source, is_params))
    kernel = (nb.metadata.get("kernelspec") or {}).get("name", "python3")
    _check_outputs_unique(display, sql_cells, problems)
    _check_write_inputs(display, sql_cells, write_cells, code_cells, problems)
    return ParsedNotebook(display, sha, tuple(sql_cells), tuple(write_cells), tuple(code_cells),
                          parameters, parameters_cell, kernel, tuple(problems))


# ---------------------------------------------------------------------------------------------
# classification


def _classify(nb: str, index: int, source: str, meta: Any, problems: list[Problem]) -> tuple[str, Any]:
    first, _, rest = source.lstrip("\n").partition("\n")
    first = first.strip()
    sql_magic = _parse_sql_magic(nb, index, first, problems) if first.startswith(SQL_MAGIC) else None
    write_magic = (_parse_write_magic(nb, index, source, problems)
                   if first.startswith(WRITE_MAGIC) and not first.startswith(SQL_MAGIC) else None)
    if meta is None and sql_magic is None and write_magic is None:
        return "code", None
    if meta is not None and not isinstance(meta, dict):
        problems.append(Problem(nb, index, "BENTO003",
                                f"cell metadata 'bento' must be an object, found {type(meta).__name__}"))
        return "invalid", None
    kind = (meta or {}).get("type") or ("sql" if sql_magic is not None else "write" if write_magic else None)
    if kind == "sql":
        body = rest if sql_magic is not None else source
        return "sql", _sql_cell(nb, index, body, meta or {}, sql_magic, write_magic, problems)
    if kind == "write":
        return "write", _write_cell(nb, index, source, meta or {}, write_magic, sql_magic, problems)
    problems.append(Problem(nb, index, "BENTO003",
                            f"cell metadata 'bento.type' is {kind!r}; use \"sql\" or \"write\""))
    return "invalid", None


def _parse_sql_magic(nb: str, index: int, first: str, problems: list[Problem]) -> dict[str, str] | None:
    parts = first.split()
    if len(parts) != 2 or not _IDENT.match(parts[1]):
        problems.append(Problem(nb, index, "BENTO003",
                                f"'{first}' should be '%%bento_sql <python identifier>' followed by the SQL"))
        return None
    return {"output": parts[1]}


def _parse_write_magic(nb: str, index: int, source: str, problems: list[Problem]) -> dict[str, str] | None:
    lines = [ln for ln in source.strip().splitlines() if ln.strip()]
    parts = lines[0].split(maxsplit=2)
    if len(lines) != 1 or len(parts) != 3:
        problems.append(Problem(nb, index, "BENTO003",
                                "a write cell is a single line '%bento_write <dataframe> <schema>.<table> [mode]'; "
                                "move other code into its own cell"))
        return None
    out = {"input": parts[1], "table": parts[2].strip()}
    # the table may hold Jinja with spaces ({{ region | lower }}); a trailing mode word is the mode
    head, _, last = out["table"].rpartition(" ")
    if head and last in WRITE_MODES:
        out["table"], out["mode"] = head.strip(), last
    return out


def _sql_cell(nb: str, index: int, body: str, meta: dict, magic: dict | None, wmagic: dict | None,
              problems: list[Problem]) -> SqlCell | None:
    start = len(problems)
    if wmagic is not None:
        problems.append(Problem(nb, index, "BENTO002",
                                "cell metadata says type 'sql' but the cell starts with %bento_write; "
                                "make the metadata and the magic line agree"))
    unknown = set(meta) - _SQL_KEYS
    if unknown:
        problems.append(Problem(nb, index, "BENTO003",
                                f"unknown key(s) {sorted(unknown)} in SQL cell metadata; allowed: {sorted(_SQL_KEYS)}"))
    output = meta.get("output")
    if magic is not None and output is not None and output != magic["output"]:
        problems.append(Problem(nb, index, "BENTO002",
                                f"cell metadata says output {output!r} but the magic line says "
                                f"{magic['output']!r}; make them agree"))
    output = output if output is not None else (magic or {}).get("output")
    if not isinstance(output, str) or not _IDENT.match(output):
        problems.append(Problem(nb, index, "BENTO003",
                                f"SQL cell output {output!r} is not a Python identifier; set "
                                "metadata bento.output or write '%%bento_sql <name>' on the first line"))
    if not body.strip():
        problems.append(Problem(nb, index, "BENTO004", "SQL cell is empty; write a SELECT query"))
    if len(problems) > start:
        return None
    return SqlCell(index, output, body.strip(), meta.get("connection"), meta.get("dialect"))


def _write_cell(nb: str, index: int, source: str, meta: dict, magic: dict | None, smagic: dict | None,
                problems: list[Problem]) -> WriteCell | None:
    start = len(problems)
    if smagic is not None:
        problems.append(Problem(nb, index, "BENTO002",
                                "cell metadata says type 'write' but the cell starts with %%bento_sql; "
                                "make the metadata and the magic line agree"))
    unknown = set(meta) - _WRITE_KEYS
    if unknown:
        problems.append(Problem(nb, index, "BENTO003",
                                f"unknown key(s) {sorted(unknown)} in write cell metadata; allowed: {sorted(_WRITE_KEYS)}"))
    if meta and magic is None and source.strip() and not source.strip().startswith("#"):
        problems.append(Problem(nb, index, "BENTO003",
                                "a write cell's source is replaced at run time, so it must be empty, a comment or the "
                                "'%bento_write' line; move this code into its own cell"))
    values: dict[str, Any] = {}
    for key in ("input", "table", "mode"):
        m_val, t_val = meta.get(key), (magic or {}).get(key)
        if key == "mode" and magic is not None and t_val is None:
            t_val = None  # mode omitted in the magic line: metadata (or default) decides
        if m_val is not None and t_val is not None and m_val != t_val:
            problems.append(Problem(nb, index, "BENTO002",
                                    f"cell metadata says {key} {m_val!r} but the magic line says {t_val!r}; "
                                    "make them agree"))
        values[key] = m_val if m_val is not None else t_val
    mode = values["mode"] or "overwrite"
    if not isinstance(values["input"], str) or not _IDENT.match(values["input"]):
        problems.append(Problem(nb, index, "BENTO003",
                                f"write cell input {values['input']!r} is not a Python identifier naming a dataframe"))
    table = values["table"]
    if not isinstance(table, str) or not _TABLE.match(table):
        problems.append(Problem(nb, index, "BENTO003",
                                f"write cell table {table!r} is not '<schema>.<table>'"))
    if mode not in WRITE_MODES:
        problems.append(Problem(nb, index, "BENTO003",
                                f"write mode {mode!r} is not one of {', '.join(WRITE_MODES)}"))
    if len(problems) > start:
        return None
    return WriteCell(index, values["input"], table.strip(), mode, meta.get("partition_column", "ds"))


def _parameter_defaults(nb: str, index: int, source: str, problems: list[Problem]) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        problems.append(Problem(nb, index, "BENTO003",
                                f"the parameters cell is not valid Python ({err.msg}); fix its syntax", line=err.lineno))
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(value) if value is not None else None
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    out[target.id] = COMPUTED  # known name, value computed in the kernel
    return out


# ---------------------------------------------------------------------------------------------
# cross-cell checks


def _check_outputs_unique(nb: str, sql_cells: list[SqlCell], problems: list[Problem]) -> None:
    seen: dict[str, int] = {}
    for cell in sql_cells:
        if cell.output in seen:
            problems.append(Problem(nb, cell.index, "BENTO003",
                                    f"SQL cell output {cell.output!r} is also produced by cell {seen[cell.output]}; "
                                    "give each SQL cell its own output name"))
        seen.setdefault(cell.output, cell.index)


def assigned_names(source: str) -> set[str]:
    """Names a code cell binds at top level or anywhere (assignments, imports, defs, for/with targets)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
        tree = ast.parse(source)
    except (SyntaxError, ImportError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _check_write_inputs(nb: str, sql_cells: Iterable[SqlCell], write_cells: Iterable[WriteCell],
                        code_cells: Iterable[CodeCell], problems: list[Problem]) -> None:
    producers: list[tuple[int, set[str]]] = [(c.index, {c.output}) for c in sql_cells]
    producers += [(c.index, assigned_names(c.source)) for c in code_cells]
    for w in write_cells:
        if not any(idx < w.index and w.input in names for idx, names in producers):
            later = sorted(idx for idx, names in producers if w.input in names and idx > w.index)
            hint = (f"it is only assigned later, in cell {later[0]}; move the write cell after it"
                    if later else "assign it in a code cell above, or fix the name")
            problems.append(Problem(nb, w.index, "BENTO008",
                                    f"write cell input {w.input!r} is never produced by a cell before it; {hint}"))
