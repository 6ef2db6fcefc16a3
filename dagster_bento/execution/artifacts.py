"""Step 5e: keep each run's executed notebook (with outputs) and an HTML rendering, never overwritten."""

import os
from pathlib import Path

import nbformat
from nbformat import NotebookNode


def artifact_path(artifacts_dir: Path, schedule: str, run_id: str) -> Path:
    return artifacts_dir / schedule / f"{run_id}.ipynb"


def save(nb: NotebookNode, target: Path, *, html: bool = True) -> Path:
    """Write ``target`` (and ``target.html``). A second save for the same run id gets a numbered
    name (a retried step), so an earlier artifact is never overwritten."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path, n = target, 1
    while path.exists():
        path = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    if html:
        write_html(nb, path.with_suffix(".html"))
    return path


def write_html(nb: NotebookNode, path: Path) -> None:
    from nbconvert import HTMLExporter  # imported lazily: ~0.3 s, only needed after execution

    body, _resources = HTMLExporter(template_name="classic").from_notebook_node(nb)
    path.write_text(body, encoding="utf-8")
