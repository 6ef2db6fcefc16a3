"""Step 5b: rewrite a notebook for a run. Pure and idempotent (golden-tested).

* each SQL cell becomes one line reading the file the orchestrator fetched into the cell's output
  variable;
* each write cell becomes one line writing its input dataframe into the run directory; the dataframe's
  index is never dropped silently (see ``_FRAME_HELPER``: named levels become columns, an unnamed integer
  index is dropped like a RangeIndex, any other unnamed index is refused with the fix);
* a cell tagged ``injected-parameters`` (papermill's convention) is inserted after the ``parameters``
  cell, or first when there is none, holding the schedule's parameters and ``ds``;
* every replaced cell keeps its original source in ``cell.metadata["bento"]["original_source"]`` and
  the notebook records the rewrite in ``nb.metadata["dagster_bento"]``, so a reviewer sees what ran.

Paths are relative to the run directory (the kernel's working directory), so the rewritten notebook
does not depend on where a run happens.
"""

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import nbformat
from nbformat import NotebookNode

from dagster_bento.notebook import CELL_KEY

INJECTED_TAG = "injected-parameters"
SETUP_TAG = "bento-setup"
REWRITE_VERSION = 1
Format = Literal["parquet", "arrow", "csv"]

# Every format writes through _bento_table: the index rule lives in one place, the same for Parquet, Arrow
# IPC and CSV, on every warehouse.
_FRAME_HELPER = '''\
def _bento_table(df, path, name):
    """The dataframe as an Arrow table, its index kept (reset_index semantics) or refused, never dropped:
    named index levels become columns; an unnamed integer index (a RangeIndex, or the row numbers left by
    filtering, sorting or head) is dropped; any other unnamed index is refused."""
    import pyarrow as pa
    table = path.split("/")[-1].rsplit(".", 1)[0]
    if isinstance(df, _bento_pd.Series):
        if df.name is None:
            raise ValueError(f"{name} is an unnamed pandas Series, written to table {table}; give its values a "
                             f"column name: {name} = {name}.to_frame('count') (or .rename('count'))")
        df = df.to_frame()
    if not isinstance(df, _bento_pd.DataFrame):
        raise TypeError(f"{name} is a {type(df).__name__}, not a pandas DataFrame; a write cell writes a "
                        f"DataFrame to table {table}")
    index = df.index
    if index.nlevels == 1 and index.name is None and (
            isinstance(index, _bento_pd.RangeIndex) or _bento_pd.api.types.is_integer_dtype(index.dtype)):
        return _bento_decimals_back(pa.Table.from_pandas(df, preserve_index=False))
    if any(level is None for level in index.names):
        sample = ", ".join(map(repr, index[:3].tolist()))
        names = repr("<name>") if index.nlevels == 1 else repr(["<name>"] * index.nlevels)
        raise ValueError(
            f"{name} has an unnamed index ({sample}, ...) that table {table} would lose. Name it to write it as "
            f"column(s): {name} = {name}.rename_axis({names}) — or drop it: {name} = {name}.reset_index(drop=True)")
    drop = []
    for level, level_name in enumerate(index.names):
        if level_name in df.columns:
            if not index.get_level_values(level).equals(_bento_pd.Index(df[level_name])):
                raise ValueError(
                    f"{name} has both an index level and a column named {level_name!r} with different values; "
                    f"table {table} can hold only one. Rename one: {name} = {name}.rename_axis(...) — or drop the "
                    f"index: {name} = {name}.reset_index(drop=True)")
            drop.append(level_name)
    if drop:
        df = df.reset_index(level=drop, drop=True) if len(drop) < index.nlevels else df.reset_index(drop=True)
    if df.index.nlevels > 1 or df.index.name is not None:
        df = df.reset_index()
    return _bento_decimals_back(pa.Table.from_pandas(df, preserve_index=False))


# DECIMAL columns: pandas arithmetic on pyarrow decimals fails as soon as precision would pass 38
# (`df.v * 2` on a DECIMAL(21,1): "Decimal precision out of range [1, 38]: 42"). A column whose every
# value has at most 15 significant digits is read as double[pyarrow] -- exact: such a value survives
# decimal -> double -> decimal (checked value by value) -- and written back as the DECIMAL it was read as
# while every value still converts back exactly; otherwise it stays (or is written as) it is.
_bento_decimals = {}  # column name -> the DECIMAL type it was read as (None: read with different types)


def _bento_frame(df):
    """The fetched dataframe with exact-as-double DECIMAL columns as double[pyarrow] (see above)."""
    import pyarrow as pa, pyarrow.compute as pc
    for position, column in enumerate(df.columns):
        kind = getattr(df.dtypes.iloc[position], "pyarrow_dtype", None)
        if kind is None or not pa.types.is_decimal(kind) or kind.scale > 15 or kind.scale < 0:
            continue
        values = pa.chunked_array(df.iloc[:, position].array.__arrow_array__())
        try:
            if kind.precision > 15:
                pc.cast(values, pa.decimal128(15, kind.scale))  # raises unless every value has <= 15 digits
            doubles = pc.cast(values, pa.float64())
            exact = pc.all(pc.fill_null(pc.equal(pc.cast(doubles, kind), values), True)).as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if exact is not False:
            df.isetitem(position, _bento_pd.arrays.ArrowExtensionArray(doubles))
            _bento_decimals[column] = kind if _bento_decimals.get(column, kind) == kind else None
    return df


def _bento_decimals_back(table):
    """Write a double column read as DECIMAL (same name) as that DECIMAL when every value converts exactly."""
    import pyarrow as pa, pyarrow.compute as pc
    for i, field in enumerate(table.schema):
        kind = _bento_decimals.get(field.name)
        if kind is None or not pa.types.is_float64(field.type):
            continue
        values = table.column(i)
        try:
            back = pc.cast(values, kind)  # a safe cast: raises on overflow (and on NaN or infinity)
            exact = pc.all(pc.fill_null(pc.equal(pc.cast(back, pa.float64()), values), True)).as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if exact is not False:
            table = table.set_column(i, pa.field(field.name, kind, field.nullable), back)
    return table
'''

_CSV_HELPERS = '''\
# CSV with a type sidecar (<file>.schema.json), the same format the orchestrator reads and writes.
import json as _bento_json, re as _bento_re
import pyarrow as _bento_pa, pyarrow.csv as _bento_pacsv


def _bento_arrow_type(text):
    stamp = _bento_re.fullmatch(r"timestamp\\[(s|ms|us|ns)(?:, tz=(.+))?\\]", text)
    if stamp:
        return _bento_pa.timestamp(stamp.group(1), tz=stamp.group(2))
    decimal = _bento_re.fullmatch(r"decimal(128|256)\\((\\d+), (\\d+)\\)", text)
    if decimal:
        return _bento_pa.decimal128(int(decimal.group(2)), int(decimal.group(3)))
    return _bento_pa.type_for_alias(text)


def _bento_read_csv(path):
    with open(path + ".schema.json") as f:
        types = {k: _bento_arrow_type(v) for k, v in _bento_json.load(f)["columns"].items()}
    options = _bento_pacsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                          quoted_strings_can_be_null=False)
    table = _bento_pacsv.read_csv(path, parse_options=_bento_pacsv.ParseOptions(newlines_in_values=True),
                                  convert_options=options)
    return _bento_frame(table.to_pandas(types_mapper=_bento_pd.ArrowDtype))


def _bento_write_csv(df, path, name="df"):
    table = _bento_table(df, path, name)
    _bento_pacsv.write_csv(table, path)
    with open(path + ".schema.json", "w") as f:
        _bento_json.dump({"format": "dagster-bento.csv-schema/1",
                          "columns": {field.name: str(field.type) for field in table.schema}}, f)
'''


_PARQUET_HELPERS = '''\
def _bento_read_parquet(path):
    """The Parquet file the orchestrator fetched, with pyarrow-backed dtypes."""
    return _bento_frame(_bento_pd.read_parquet(path, dtype_backend="pyarrow"))


def _bento_write_parquet(df, path, name="df"):
    """df.to_parquet, with row groups DuckDB reads in parallel, dictionaries only for strings that repeat
    (the orchestrator then counts them without decoding; unique ones are written plain) and no compression
    (a file that lives for one run on local disk)."""
    import pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
    table = _bento_table(df, path, name)
    sample = table.slice(0, 10_000)  # counting distinct values of a whole unique column costs seconds
    strings = [f.name for f in table.schema if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
               and pc.count_distinct(sample.column(f.name)).as_py() * 2 <= sample.num_rows]
    pq.write_table(table, path, row_group_size=122_880, use_dictionary=strings or False, compression="none")
'''


_ARROW_HELPERS = '''\
def _bento_read_arrow(path):
    """The Arrow IPC file the orchestrator fetched, memory-mapped, with pyarrow-backed dtypes."""
    import pyarrow as pa
    return _bento_frame(pa.ipc.open_file(pa.memory_map(path)).read_all().to_pandas(types_mapper=_bento_pd.ArrowDtype))


def _bento_write_arrow(df, path, name="df"):
    """The dataframe as an uncompressed Arrow IPC file, the format the orchestrator loads."""
    import pyarrow as pa
    table = _bento_table(df, path, name)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=122_880)
'''
_HELPERS = {"parquet": _PARQUET_HELPERS, "arrow": _ARROW_HELPERS, "csv": _CSV_HELPERS}


def input_path(output: str, fmt: Format) -> str:
    return f"inputs/{output}.{fmt}"


def output_path(table: str, fmt: Format) -> str:
    return f"outputs/{table}.{fmt}"


def _read_line(var: str, path: str, fmt: Format) -> str:
    if fmt == "csv":
        return f'{var} = _bento_read_csv("{path}")'
    if fmt == "arrow":
        return f'{var} = _bento_read_arrow("{path}")'
    return f'{var} = _bento_read_parquet("{path}")'


def _write_line(var: str, path: str, fmt: Format) -> str:
    return f'_bento_write_{fmt}({var}, "{path}", "{var}")'


def _parameters_source(parameters: Mapping[str, Any]) -> str:
    lines = ["# Parameters injected by dagster-bento"]
    lines += [f"{name} = {value!r}" for name, value in parameters.items()]
    return "\n".join(lines)


# Lines that only configure this extension in an interactive session. A scheduled run has no use for
# them (and its sandbox cannot import dagster_bento): `strip_session_magics` comments them out.
_SESSION_MAGIC = re.compile(
    r"^\s*%(?:(?:re)?load_ext\s+dagster_bento(?:\.ipython)?|unload_ext\s+dagster_bento(?:\.ipython)?"
    r"|bento_zone\b|bento_notebook\b|bento_status\b)[^\n]*$")


def strip_session_magics(source: str) -> str:
    """The cell's source with this extension's session lines (``%load_ext dagster_bento``, ``%bento_zone Z``,
    ``%bento_notebook P``, ``%bento_status``) replaced by ``pass`` with the line as a comment, for the rewrite of a scheduled run. Other lines
    are left as they are; a cell without such lines is returned unchanged."""
    lines = source.split("\n")
    out = []
    for line in lines:
        if _SESSION_MAGIC.match(line):  # `pass` keeps an enclosing block valid
            indent = line[: len(line) - len(line.lstrip())]
            line = f"{indent}pass  # {line.strip()}  (interactive only: dagster-bento)"
        out.append(line)
    return "\n".join(out)


def restore_original(nb: NotebookNode) -> NotebookNode:
    """Undo a previous rewrite: drop injected cells and put original sources back."""
    nb = copy.deepcopy(nb)
    keep = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if INJECTED_TAG in tags or SETUP_TAG in tags:
            continue
        meta = cell.get("metadata", {}).get(CELL_KEY)
        if isinstance(meta, dict) and "original_source" in meta:
            cell.source = meta.pop("original_source")
            if not meta:
                cell.metadata.pop(CELL_KEY)
        keep.append(cell)
    nb.cells = keep
    nb.metadata.pop("dagster_bento", None)
    return nb


def rewrite_notebook(nb: NotebookNode, *, sql_cells: Sequence[tuple[int, str]],
                     write_cells: Sequence[tuple[int, str, str]], parameters: Mapping[str, Any],
                     parameters_cell: int | None, fmt: Format = "parquet",
                     run_info: Mapping[str, Any] | None = None) -> NotebookNode:
    """Return the notebook to execute.

    ``sql_cells``: (cell index, output variable); ``write_cells``: (cell index, input variable, table).
    Indices refer to the original notebook (as parsed); ``nb`` may be an original or a rewritten one.
    """
    nb = restore_original(nb)
    rewritten: list[dict[str, Any]] = []
    for index, var in sql_cells:
        line = _read_line(var, input_path(var, fmt), fmt)
        _replace(nb.cells[index], line)
        rewritten.append({"cell": index, "kind": "sql", "output": var, "source": line})
    for index, var, table in write_cells:
        line = _write_line(var, output_path(table, fmt), fmt)
        _replace(nb.cells[index], line)
        rewritten.append({"cell": index, "kind": "write", "input": var, "table": table, "source": line})
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if index not in {i for i, _v in sql_cells} | {i for i, _v, _t in write_cells}:
                stripped = strip_session_magics(cell.source)  # the sandbox cannot import dagster_bento
                if stripped != cell.source:
                    _replace(cell, stripped)
    setup_src = "import pandas as _bento_pd  # injected by dagster-bento: the SQL/write cells below use it"
    setup_src += "\n\n" + _FRAME_HELPER + "\n\n" + _HELPERS[fmt]
    setup = nbformat.v4.new_code_cell(setup_src, metadata={"tags": [SETUP_TAG]})
    injected = nbformat.v4.new_code_cell(_parameters_source(parameters), metadata={"tags": [INJECTED_TAG]})
    # deterministic ids keep the rewrite idempotent and golden files stable
    setup.id, injected.id = "bento-setup", "bento-injected-parameters"
    position = parameters_cell + 1 if parameters_cell is not None else 0
    nb.cells.insert(position, injected)
    nb.cells.insert(0, setup)
    nb.metadata["dagster_bento"] = {
        "rewrite_version": REWRITE_VERSION,
        "format": fmt,
        "parameters": dict(parameters),
        "rewritten_cells": rewritten,
        "injected_cells": [SETUP_TAG, INJECTED_TAG],
        **dict(run_info or {}),
    }
    return nb


def _replace(cell: NotebookNode, line: str) -> None:
    meta = cell.metadata.setdefault(CELL_KEY, {})
    meta["original_source"] = cell.source
    cell.source = line


def _is_injected(cell: NotebookNode) -> bool:
    return bool({INJECTED_TAG, SETUP_TAG} & set(cell.get("metadata", {}).get("tags", [])))


def original_index(executed: NotebookNode, index: int) -> int:
    """Map a cell index of the rewritten notebook back to the original notebook's index. An injected
    cell maps to the cell it follows (the parameters cell), the setup cell to 0."""
    injected_before = sum(1 for cell in executed.cells[:index] if _is_injected(cell))
    if _is_injected(executed.cells[index]):
        return max(0, index - injected_before - 1)
    return index - injected_before
