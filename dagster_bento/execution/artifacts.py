"""Step 5e: keep each run's executed notebook (with outputs) and an HTML rendering, never overwritten.

Outputs are written by untrusted notebook code and the Dagster UI renders kept notebooks from its own
origin, so the kept copy is sanitised first: scripts, SVG and raw markdown outputs are dropped and
HTML outputs (pandas tables) are cleaned to formatting tags only.
"""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat import NotebookNode

_DROPPED_MIME = ("application/javascript", "text/javascript", "image/svg+xml", "text/markdown", "text/latex",
                 "application/vnd.jupyter.widget-view+json")
_HTML_TAGS = {"table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col", "div", "span", "p",
              "br", "hr", "b", "i", "em", "strong", "code", "pre", "small", "sub", "sup", "ul", "ol", "li", "h1",
              "h2", "h3", "h4", "h5", "h6", "blockquote"}
_HTML_ATTRS = {"*": ["class", "colspan", "rowspan", "align", "border"]}
_STYLE_BLOCK = re.compile(r"<style\b.*?</style\s*>", re.IGNORECASE | re.DOTALL)


def artifact_path(artifacts_dir: Path, schedule: str, run_id: str) -> Path:
    return artifacts_dir / schedule / f"{run_id}.ipynb"


def sanitize(nb: NotebookNode) -> NotebookNode:
    """A copy whose outputs cannot run script in a browser that renders it."""
    import bleach

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data:
                continue
            dropped = [m for m in data if m in _DROPPED_MIME]
            for mime in dropped:
                del data[mime]
            if "text/html" in data:
                html = data["text/html"]
                html = "".join(html) if isinstance(html, list) else html
                data["text/html"] = bleach.clean(_STYLE_BLOCK.sub("", html), tags=_HTML_TAGS,
                                                 attributes=_HTML_ATTRS, strip=True, strip_comments=True)
            if not data:
                data["text/plain"] = f"[output of type {', '.join(dropped)} not kept in run artifacts]"
    return nb


def save(nb: NotebookNode, target: Path, *, html: bool = True, html_in_background: bool = True) -> Path:
    """Write the sanitised notebook to ``target`` (and ``target.html``). A second save for the same run
    id gets a numbered name (a retried step), so an earlier artifact is never overwritten.

    The HTML rendering costs ~0.7 s in a fresh step process (importing nbconvert and IPython, first
    render); by default a detached process renders it from the saved ``.ipynb`` so the run does not wait.
    """
    nb = sanitize(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    path, n = target, 1
    while path.exists():
        path = target.with_name(f"{target.stem}.{n}{target.suffix}")
        n += 1
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    if html and html_in_background:
        render_html_in_background(path)
    elif html:
        write_html(nb, path.with_suffix(".html"))
    return path


def render_html_in_background(path: Path) -> None:
    """Render ``path`` (a saved, sanitised notebook) to ``.html`` in a detached, low-priority process."""
    subprocess.Popen([sys.executable, "-m", "dagster_bento.execution.artifacts", str(path)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def write_html(nb: NotebookNode, path: Path) -> None:
    from nbconvert import HTMLExporter  # imported lazily: ~0.3 s, only needed after execution

    body, _resources = HTMLExporter(template_name="classic", sanitize_html=True).from_notebook_node(nb)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, path)  # readers never see a half-written page


if __name__ == "__main__":  # the background renderer: python -m dagster_bento.execution.artifacts NB.ipynb
    os.nice(10)  # nobody waits for it: leave the CPU to runs
    source = Path(sys.argv[1])
    write_html(nbformat.read(source, as_version=4), source.with_suffix(".html"))
