"""Build tiny notebooks and projects for tests (one behaviour per notebook)."""

import json
import textwrap
from pathlib import Path
from typing import Any

import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]


def sql_cell(output: str, query: str, *, magic: bool = True, meta: bool = True, **extra: Any):
    src = (f"%%bento_sql {output}\n" if magic else "") + textwrap.dedent(query).strip()
    cell = new_code_cell(src)
    if meta:
        cell.metadata["bento"] = {"type": "sql", "output": output, **extra}
    return cell


def write_cell(inp: str, table: str, mode: str | None = None, *, magic: bool = True, meta: bool = True):
    src = f"%bento_write {inp} {table}" + (f" {mode}" if mode else "") if magic else ""
    cell = new_code_cell(src)
    if meta:
        cell.metadata["bento"] = {"type": "write", "input": inp, "table": table, "mode": mode or "overwrite"}
    return cell


def code(src: str):
    return new_code_cell(textwrap.dedent(src).strip())


def params(src: str):
    cell = new_code_cell(textwrap.dedent(src).strip())
    cell.metadata["tags"] = ["parameters"]
    return cell


def md(src: str):
    return new_markdown_cell(src)


def write_notebook(path: Path, cells: list) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def write_spec(notebook: Path, **spec: Any) -> Path:
    spec.setdefault("owners", ["owner@example.com"])
    spec.setdefault("zone", "ANALYTICS")
    spec.setdefault("schedules", [{"name": notebook.stem}])
    path = notebook.with_name(notebook.stem + ".bento.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def add_notebook(project: Path, stem: str, cells: list, **spec: Any) -> Path:
    nb = write_notebook(project / "notebooks" / f"{stem}.ipynb", cells)
    if spec.pop("draft", False) is False:
        write_spec(nb, **spec)
    return nb


def write_policy(project: Path, tables: dict[str, list[str] | None], zones: dict[str, Any] | None = None,
                 default_schema: str = "main", **extra: Any) -> Path:
    data = {
        "version": 1,
        "default_schema": default_schema,
        "zones": zones or {"ANALYTICS": {"permits": ["ANALYTICS"]}, "PUBLIC": {"permits": "*"}},
        "tables": {t: ({"zones": z} if z is not None else {}) for t, z in tables.items()},
        **extra,
    }
    path = project / "purpose_zones.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raw_json(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)
