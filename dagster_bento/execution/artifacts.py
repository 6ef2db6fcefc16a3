"""Step 5e: keep each run's executed notebook (with outputs) and an HTML rendering, never overwritten.

The Dagster UI renders a kept ``.ipynb`` in its own origin (dagster-webserver's ``/notebook`` route runs
nbconvert's ``HTMLExporter()`` — the ``lab`` template, *unsanitised*, MathJax on) and outputs are written
by untrusted notebook code, so what is kept is built to be safe for any renderer, by allowlist:

* **Markdown cells** are rendered to HTML (markdown-it, CommonMark + tables), cleaned by Ammonia (``nh3``:
  formatting tags, ``http``/``https``/``mailto`` links, images from those schemes or inline PNG/JPEG/GIF)
  and stored as that HTML on one line inside ``<div class="tex2jax_ignore">``, so a renderer's own
  markdown parser passes it through verbatim (one raw HTML block) and MathJax leaves its text alone.
  Attachments are inlined (PNG/JPEG/GIF only) and dropped from the cell.
* **Raw cells** become markdown cells showing their text in ``<pre>`` (nbconvert would paste a raw cell
  into the page as HTML).
* **Outputs** keep only ``text/plain``, ``text/html`` (cleaned to table/formatting tags), ``image/png``
  and ``image/jpeg`` (valid base64); streams and errors keep their text; output metadata keeps only
  integer ``width``/``height`` (the template writes them into an unquoted attribute). Everything else
  (script, SVG, markdown, LaTeX, widgets, unknown types) is replaced by a note.
* **Metadata**: notebook metadata keeps ``kernelspec``, ``language_info`` and ``dagster_bento``; cell
  metadata keeps ``bento``, ``dagster_bento``, ``tags`` (letters, digits, ``-_`` only: the template writes
  them into a class attribute) and the boolean display flags. Widget state and anything else is dropped.
* **What the kernel sends is validated and repaired**: ``execution_count`` is an integer ≥ 0 or null,
  texts are strings, the result validates against the nbformat schema (else the save refuses).

Our ``.html`` is the ``classic`` template on the sanitised notebook: :func:`sanitize` is its sanitiser too
(nbconvert's ``sanitize_html`` would escape the cleaned markdown HTML into visible ``&lt;h1&gt;`` text).

Kept notebooks are never overwritten: each save publishes its file with an exclusive link (a retried
step, or any second save for the same run id, gets ``<run_id>.<n>.ipynb``).
"""

import base64
import binascii
import copy
import html as html_lib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

__all__ = ["artifact_path", "author_view", "sanitize", "save", "write_html", "render_html_in_background", "clean_html",
           "allowed_cell_metadata", "allowed_notebook_metadata"]

KEPT_MIME = ("text/html", "image/png", "image/jpeg", "text/plain")
_IMAGE_MIME = {"image/png", "image/jpeg", "image/gif"}
_TABLE_TAGS = {"table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col", "div", "span",
               "p", "br", "hr", "b", "i", "em", "strong", "code", "pre", "small", "sub", "sup", "ul", "ol", "li",
               "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"}
_MARKDOWN_TAGS = _TABLE_TAGS | {"a", "img", "del", "s", "dl", "dt", "dd", "kbd", "abbr", "details", "summary"}
_TABLE_ATTRS = {"*": {"class", "colspan", "rowspan", "align", "border"}}
_MARKDOWN_ATTRS = {"*": {"colspan", "rowspan", "align", "title"}, "a": {"href"},
                   "img": {"src", "alt", "width", "height"}, "ol": {"start"}, "abbr": {"title"}}
_URL_SCHEMES = {"http", "https", "mailto"}
_DATA_IMAGE = re.compile(r"^data:image/(png|jpeg|gif);base64,[A-Za-z0-9+/=\s]*$")
_TAG = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_CELL_META_FLAGS = ("collapsed", "scrolled", "editable", "deletable")
_STRING_META = ("name", "display_name", "language", "version", "file_extension", "mimetype", "pygments_lexer",
                "nbconvert_exporter")
_NO_MATH_CLASS = "tex2jax_ignore"  # MathJax's ignore class (v2 ignoreClass, v3 ignoreHtmlClass)


def artifact_path(artifacts_dir: Path, schedule: str, run_id: str) -> Path:
    return artifacts_dir / schedule / f"{run_id}.ipynb"


# ------------------------------------------------------------------------------------------ HTML

def _url_ok(url: str, *, image: bool) -> bool:
    value = re.sub(r"[\x00-\x20]", "", html_lib.unescape(url)).lower()
    if image and _DATA_IMAGE.match(re.sub(r"[\x00-\x20]", "", url)):
        return True
    scheme = value.split(":", 1)[0] if re.match(r"^[a-z][a-z0-9+.\-]*:", value) else None
    if image:  # an image loads by itself: only from the web or inline, never from the UI's own origin
        return scheme in ("http", "https")
    return scheme in _URL_SCHEMES or value.startswith("#")


def _markdown_attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if attr == "src":
        return value if _url_ok(value, image=True) else None
    if attr == "href":
        return value if _url_ok(value, image=False) else None
    if attr in ("width", "height", "start", "colspan", "rowspan"):
        return value if value.isdigit() else None
    return value


def clean_html(html: str) -> str:
    """An HTML output (a pandas table...) cleaned to table and formatting tags: no script, style, links,
    images or event handlers, and no text MathJax would typeset."""
    import nh3

    cleaned = nh3.clean(html, tags=_TABLE_TAGS, attributes=_TABLE_ATTRS, clean_content_tags={"script", "style"},
                        strip_comments=True, url_schemes=set(), link_rel=None)
    return f'<div class="{_NO_MATH_CLASS}">{cleaned}</div>'


def _markdown_html(source: str, attachments: Mapping[str, Any]) -> str:
    """A markdown cell's source as clean, single-line HTML that renders the same in any markdown renderer."""
    import nh3
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True, "linkify": False}).enable(["table", "strikethrough"])
    images = {name: _attachment_uri(bundle) for name, bundle in attachments.items()} if attachments else {}

    def resolve(tag: str, attr: str, value: str) -> str | None:
        if tag == "img" and attr == "src" and value.startswith("attachment:"):
            value = images.get(value.removeprefix("attachment:")) or ""
            return value or None
        return _markdown_attribute_filter(tag, attr, value)

    rendered = md.render(source)
    cleaned = nh3.clean(rendered, tags=_MARKDOWN_TAGS, attributes=_MARKDOWN_ATTRS, attribute_filter=resolve,
                        clean_content_tags={"script", "style"}, strip_comments=True,
                        url_schemes=_URL_SCHEMES | {"data", "attachment"}, link_rel="noopener noreferrer nofollow")
    # one line: a markdown parser then sees a single raw HTML block and never re-reads text in it as markdown
    return f'<div class="{_NO_MATH_CLASS}">' + cleaned.replace("\r", "").replace("\n", "&#10;") + "</div>"


def _attachment_uri(bundle: Any) -> str | None:
    if not isinstance(bundle, Mapping):
        return None
    for mime in ("image/png", "image/jpeg", "image/gif"):
        data = _base64(bundle.get(mime))
        if data is not None:
            return f"data:{mime};base64,{data}"
    return None


def _base64(value: Any) -> str | None:
    text = "".join(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else value
    if not isinstance(text, str):
        return None
    text = re.sub(r"\s", "", text)
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return text


# ------------------------------------------------------------------------------------------ notebook

def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return "" if value is None else str(value)


def _count(value: Any) -> int | None:
    """A valid ``execution_count``: an integer ≥ 0 (not a bool), else null."""
    return value if type(value) is int and 0 <= value < 2**53 else None


def _note(text: str) -> NotebookNode:
    return nbformat.v4.new_output("stream", name="stdout", text=f"[{text}]\n")


def _output(output: Any) -> NotebookNode:
    if not isinstance(output, Mapping):
        return _note("an output that is not an object was not kept")
    kind = output.get("output_type")
    if kind == "stream":
        name = output.get("name") if output.get("name") in ("stdout", "stderr") else "stdout"
        return nbformat.v4.new_output("stream", name=name, text=_text(output.get("text")))
    if kind == "error":
        traceback = output.get("traceback")
        return nbformat.v4.new_output(
            "error", ename=_text(output.get("ename")), evalue=_text(output.get("evalue")),
            traceback=[_text(t) for t in traceback] if isinstance(traceback, list) else [])
    if kind in ("display_data", "execute_result"):
        data = output.get("data") if isinstance(output.get("data"), Mapping) else {}
        kept: dict[str, str] = {}
        for mime in KEPT_MIME:
            if mime not in data:
                continue
            if mime.startswith("image/"):
                value = _base64(data[mime])
                if value is not None:
                    kept[mime] = value
            elif mime == "text/html":
                kept[mime] = clean_html(_text(data[mime]))
            else:
                kept[mime] = _text(data[mime])
        dropped = sorted(str(m) for m in data if m not in kept)
        if not kept:
            kept["text/plain"] = f"[output of type {', '.join(dropped) or 'none'} not kept in run artifacts]"
        metadata: dict[str, Any] = {}
        raw_meta = output.get("metadata") if isinstance(output.get("metadata"), Mapping) else {}
        for mime in ("image/png", "image/jpeg"):
            dims = raw_meta.get(mime)
            if mime in kept and isinstance(dims, Mapping):
                sizes = {k: dims[k] for k in ("width", "height") if type(dims.get(k)) is int and 0 < dims[k] < 100000}
                if sizes:
                    metadata[mime] = sizes
        if kind == "execute_result":
            return nbformat.v4.new_output("execute_result", data=kept, metadata=metadata,
                                          execution_count=_count(output.get("execution_count")))
        return nbformat.v4.new_output("display_data", data=kept, metadata=metadata)
    return _note(f"an output of type {str(kind)[:40]!r} was not kept")


def allowed_cell_metadata(meta: Any) -> dict[str, Any]:
    meta = meta if isinstance(meta, Mapping) else {}
    out: dict[str, Any] = {}
    for key in ("bento", "dagster_bento"):
        if isinstance(meta.get(key), Mapping):
            out[key] = copy.deepcopy(dict(meta[key]))
    tags = meta.get("tags")
    if isinstance(tags, list):
        out["tags"] = [t for t in tags if isinstance(t, str) and _TAG.match(t)]
    for key in _CELL_META_FLAGS:
        if isinstance(meta.get(key), bool):
            out[key] = meta[key]
    jupyter = meta.get("jupyter")
    if isinstance(jupyter, Mapping):
        flags = {k: v for k, v in jupyter.items() if k in ("source_hidden", "outputs_hidden") and isinstance(v, bool)}
        if flags:
            out["jupyter"] = flags
    execution = meta.get("execution")  # nbclient's per-cell timestamps: when each cell ran, never data
    if isinstance(execution, Mapping):
        stamps = {k: v for k, v in execution.items()
                  if isinstance(k, str) and _EXECUTION_KEY.match(k) and isinstance(v, str) and _TIMESTAMP.match(v)}
        if stamps:
            out["execution"] = stamps
    return out


_EXECUTION_KEY = re.compile(r"^(iopub|shell)\.[a-z_]{1,40}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?$")


def allowed_notebook_metadata(meta: Any) -> dict[str, Any]:
    meta = meta if isinstance(meta, Mapping) else {}
    out: dict[str, Any] = {}
    for key in ("kernelspec", "language_info"):
        value = meta.get(key)
        if isinstance(value, Mapping):
            out[key] = {k: v for k, v in value.items() if k in _STRING_META and isinstance(v, str)}
    if "kernelspec" in out and not {"name", "display_name"} <= out["kernelspec"].keys():
        del out["kernelspec"]  # the schema requires both
    if "language_info" in out and "name" not in out["language_info"]:
        del out["language_info"]
    if isinstance(meta.get("dagster_bento"), Mapping):
        out["dagster_bento"] = copy.deepcopy(dict(meta["dagster_bento"]))
    return out


def sanitize(nb: NotebookNode) -> NotebookNode:
    """A valid copy of ``nb`` that cannot run script or load anything in a browser that renders it (see
    the module docstring for what is kept). Raises ``nbformat.ValidationError`` if it cannot be made valid."""
    cells = []
    for cell in nb.get("cells", []):
        if not isinstance(cell, Mapping):
            continue
        kind = cell.get("cell_type")
        source = _text(cell.get("source"))
        meta = allowed_cell_metadata(cell.get("metadata"))
        if kind == "code":
            new = nbformat.v4.new_code_cell(source=source, metadata=meta,
                                            execution_count=_count(cell.get("execution_count")))
            outputs = cell.get("outputs")
            new.outputs = [_output(o) for o in outputs] if isinstance(outputs, list) else []
        elif kind == "markdown":
            attachments = cell.get("attachments") if isinstance(cell.get("attachments"), Mapping) else {}
            new = nbformat.v4.new_markdown_cell(source=_markdown_html(source, attachments), metadata=meta)
        else:  # raw (or unknown): its text, shown as text
            meta.setdefault("dagster_bento", {})["kept_as_text"] = str(kind)[:40]
            new = nbformat.v4.new_markdown_cell(
                source=f'<div class="{_NO_MATH_CLASS}"><pre>'
                       + html_lib.escape(source).replace("\r", "").replace("\n", "&#10;") + "</pre></div>",
                metadata=meta)
        cell_id = cell.get("id")
        if isinstance(cell_id, str) and re.fullmatch(r"[a-zA-Z0-9\-_]{1,64}", cell_id):
            new["id"] = cell_id
        cells.append(new)
    clean = nbformat.v4.new_notebook(cells=cells, metadata=allowed_notebook_metadata(nb.get("metadata")))
    ids = [c["id"] for c in clean.cells]
    if len(set(ids)) != len(ids):  # duplicate ids make the notebook invalid: give every cell a fresh one
        for c in clean.cells:
            c["id"] = nbformat.v4.new_code_cell()["id"]
    nbformat.validate(clean)
    return clean


# ------------------------------------------------------------------------------------------ author's view

SETUP_BANNER = ("# ── dagster-bento setup: injected for this run, not part of the notebook ──\n"
                "# Helpers the SQL and write cells below ran (their executed lines are in each cell's\n"
                "# metadata: dagster_bento.executed_source). Hidden by default.\n")


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n:,} bytes"  # unreachable


def _facts_output(title: str, rows: list[tuple[str, str]]) -> NotebookNode:
    """The facts of a SQL or write cell as that cell's output: text, and the same as a small HTML table."""
    text = title + "\n" + "\n".join(f"  {k}: {v}" for k, v in rows)
    body = "".join(f"<tr><th>{html_lib.escape(k)}</th><td>{html_lib.escape(v)}</td></tr>" for k, v in rows)
    table = (f'<table class="dagster-bento-facts"><caption>{html_lib.escape(title)}</caption>'
             f"<tbody>{body}</tbody></table>")
    return nbformat.v4.new_output("display_data", data={"text/plain": text, "text/html": table})


def author_view(nb: NotebookNode, *, sql: Mapping[int, Mapping[str, Any]] | None = None,
                writes: Mapping[int, Mapping[str, Any]] | None = None) -> NotebookNode:
    """The executed notebook as its author wrote it, for keeping (a copy; ``nb`` is unchanged).

    * each SQL cell shows its SQL rendered with the run's parameters (``sql[i]["sql"]``; the magic line is
      kept when the author wrote one) and, as its first output, what the fetch did: rows, seconds, tables;
    * each write cell shows its source as written and, as its first output, what the notebook wrote: rows,
      file size, the target table and mode;
    * the line that actually ran stays in ``metadata.dagster_bento.executed_source`` and the original
      source in ``metadata.bento.original_source`` (``restore_original``, ``dagster-bento show``);
    * the injected setup cell is marked by a banner and hidden (``jupyter.source_hidden``, ``collapsed``).

    Keys of ``sql``/``writes`` are cell indices of the original notebook. Values (all optional): SQL —
    ``sql``, ``output``, ``rows``, ``seconds``, ``tables``; write — ``input``, ``table``, ``mode``, ``rows``,
    ``bytes``.
    """
    from dagster_bento.execution.rewrite import SETUP_TAG, original_index

    out = copy.deepcopy(nb)
    record = (out.get("metadata", {}).get("dagster_bento") or {}).get("rewritten_cells") or []
    kinds = {r.get("cell"): r for r in record if isinstance(r, Mapping)}
    sql, writes = sql or {}, writes or {}
    for position, cell in enumerate(out.cells):
        meta = cell.get("metadata", {})
        if SETUP_TAG in (meta.get("tags") or []):
            if not _text(cell.source).startswith(SETUP_BANNER):
                cell.source = SETUP_BANNER + _text(cell.source)
            meta["jupyter"] = {**(meta.get("jupyter") or {}), "source_hidden": True, "outputs_hidden": True}
            meta["collapsed"] = True
            continue
        bento = meta.get("bento")
        if cell.cell_type != "code" or not isinstance(bento, Mapping) or "original_source" not in bento:
            continue
        index = original_index(out, position)
        rec = kinds.get(index)
        if rec is None:  # a cell whose session magics were commented out: show it as written
            meta.setdefault("dagster_bento", {})["executed_source"] = _text(cell.source)
            cell.source = bento["original_source"]
            continue
        meta.setdefault("dagster_bento", {})["executed_source"] = _text(cell.source)
        original = _text(bento["original_source"])
        if rec.get("kind") == "sql":
            facts = sql.get(index, {})
            rendered = facts.get("sql")
            if isinstance(rendered, str):
                first, _, _rest = original.partition("\n")
                cell.source = (first + "\n" + rendered) if first.strip().startswith("%%bento_sql") else rendered
            else:
                cell.source = original
            rows = [("into", str(facts.get("output") or rec.get("output") or "?"))]
            if facts.get("rows") is not None:
                rows.append(("rows", f"{int(facts['rows']):,}"))
            if facts.get("seconds") is not None:
                rows.append(("seconds", f"{float(facts['seconds']):.2f}"))
            if facts.get("tables"):
                rows.append(("tables read", ", ".join(map(str, facts["tables"]))))
            title = "dagster-bento fetched this query's result" if facts.get("rows") is not None else \
                "dagster-bento: this query's result was not fetched"
        elif rec.get("kind") == "write":
            facts = writes.get(index, {})
            cell.source = original
            rows = [("from", str(facts.get("input") or rec.get("input") or "?")),
                    ("table", str(facts.get("table") or rec.get("table") or "?"))]
            if facts.get("mode"):
                rows.append(("mode", str(facts["mode"])))
            if facts.get("rows") is not None:
                rows.append(("rows", f"{int(facts['rows']):,}"))
            if facts.get("bytes") is not None:
                rows.append(("file size", _human_bytes(int(facts["bytes"]))))
            title = ("dagster-bento: the notebook wrote" if facts.get("bytes") is not None or
                     facts.get("rows") is not None else "dagster-bento: nothing was written for this cell")
        else:
            continue
        cell.outputs = [_facts_output(title, rows), *cell.get("outputs", [])]
    return out


# ------------------------------------------------------------------------------------------ files

def save(nb: NotebookNode, target: Path, *, html: bool = True, html_in_background: bool = True) -> Path:
    """Write the sanitised notebook to ``target`` (and ``target.html``). The file is published with an
    exclusive link, so an existing artifact is never overwritten: a second save for the same run id (a
    retried step) gets ``<stem>.1.ipynb``, ``<stem>.2.ipynb``...

    The HTML rendering costs ~0.7 s in a fresh step process (importing nbconvert and IPython, first
    render); by default a detached process renders it from the saved ``.ipynb`` so the run does not wait.
    """
    nb = sanitize(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        path = target
        for n in range(1, 10_000):
            try:
                os.link(tmp, path)  # fails if path exists: never replaces a kept notebook
                break
            except FileExistsError:
                path = target.with_name(f"{target.stem}.{n}{target.suffix}")
        else:
            raise FileExistsError(f"{target}: 10000 kept notebooks for one run id; refusing to keep more")
    finally:
        tmp.unlink(missing_ok=True)
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
    """Render ``nb`` (sanitised again: the file may have changed since it was kept) to ``path``; if it
    cannot be rendered, ``path`` says so instead of being silently missing.

    :func:`sanitize` is the sanitiser, as it is for dagster-webserver's rendering of the same file. nbconvert's
    own ``sanitize_html`` is not used: its bleach allowlist (links, lists, emphasis) does not hold headings,
    paragraphs, tables or images, and it *escapes* what it does not allow, so every markdown cell (kept as
    cleaned HTML) would show as ``&lt;h1&gt;...`` text.
    """
    try:
        from nbconvert import HTMLExporter  # imported lazily: ~0.3 s, only needed after execution

        body, _resources = HTMLExporter(template_name="classic").from_notebook_node(sanitize(nb))
    except Exception as err:  # noqa: BLE001 - a page that says why beats no page
        body = ("<!DOCTYPE html><html><body><h1>This notebook could not be rendered</h1><pre>"
                + html_lib.escape(f"{type(err).__name__}: {err}")[:4000]
                + "</pre><p>The kept .ipynb next to this file holds the run's notebook.</p></body></html>")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(body)
    os.replace(tmp, path)  # readers never see a half-written page


if __name__ == "__main__":  # the background renderer: python -m dagster_bento.execution.artifacts NB.ipynb
    os.nice(10)  # nobody waits for it: leave the CPU to runs
    source = Path(sys.argv[1])
    try:
        notebook = nbformat.read(source, as_version=4)
    except Exception as err:  # noqa: BLE001
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"unreadable: {err}")])
    write_html(notebook, source.with_suffix(".html"))
