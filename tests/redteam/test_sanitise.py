"""Red team: a kept notebook cannot run script, load anything or carry widget state into the Dagster UI.

Every attack goes through the real save path (``artifacts.save``) and is judged on the kept ``.ipynb``
and on HTML rendered the two ways it is shown: our ``.html`` and dagster-webserver's ``/notebook`` route
(``HTMLExporter()``: lab template, no sanitising). One attack notebook runs through a real kernel.
"""

import base64
import html.parser
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

from dagster_bento.execution import artifacts

MARK = "PWNED"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
SVG = f'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(\'{MARK}\')"><script>alert("{MARK}")</script></svg>'

MARKDOWN_ATTACKS = {
    "img onerror": f"Hello <img src=x onerror=alert('{MARK}')>",
    "script": f"<script>alert('{MARK}')</script>",
    "javascript link": f"[click](javascript:alert('{MARK}'))",
    "javascript autolink": f"<javascript:alert('{MARK}')>",
    "entity javascript": f"[click](jav&#x61;script:alert('{MARK}'))",
    "reference link": f"[click][r]\n\n[r]: javascript:alert('{MARK}')",
    "data html link": f"[click](data:text/html;base64,{base64.b64encode(MARK.encode()).decode()})",
    "iframe": f'<iframe src="javascript:alert(\'{MARK}\')"></iframe>',
    "svg inline": SVG,
    "style": f"<style>body{{background:url('https://evil.example/{MARK}')}}</style>",
    "mathjax href": f"$\\href{{javascript:alert('{MARK}')}}{{x}}$",
    "blank line breakout": f"> ```\n> a\n>\n> [x](javascript:alert('{MARK}'))\n> ```",
    "svg attachment": "![a](attachment:evil.svg)",
    "html attachment": "![a](attachment:evil.html)",
    "same-origin image": f"![a](/graphql?query={MARK})",
}


def attack_notebook() -> nbformat.NotebookNode:
    cells = []
    for name, src in MARKDOWN_ATTACKS.items():
        cell = new_markdown_cell(f"## {name}\n\n{src}")
        if "attachment" in name:
            cell.attachments = {"evil.svg": {"image/svg+xml": base64.b64encode(SVG.encode()).decode()},
                                "evil.html": {"text/html": base64.b64encode(SVG.encode()).decode()}}
        cells.append(cell)
    cells.append(new_markdown_cell("Inline image ![ok](attachment:ok.png) and [docs](https://example.com)"))
    cells[-1].attachments = {"ok.png": {"image/png": PNG}}
    raw = new_raw_cell(f"<img src=x onerror=alert('{MARK}')>")
    cells.append(raw)
    raw_html = new_raw_cell(f"<script>alert('{MARK}')</script>")
    raw_html.metadata["raw_mimetype"] = "text/html"
    cells.append(raw_html)
    code = new_code_cell("x", execution_count=3)
    code.metadata["tags"] = ["parameters", f'x" onmouseover="alert(\'{MARK}\')']
    code.metadata["widgets"] = {"state": MARK}
    code.metadata["vscode"] = {"data": MARK}
    code.outputs = [
        new_output("display_data", data={"text/html": f"<table><tr><td onclick=\"alert('{MARK}')\">1</td></tr>"
                                                      f"</table><script>alert('{MARK}')</script>"
                                                      f"<img src=x onerror=alert('{MARK}')>"
                                                      f"<td>$\\href{{javascript:alert('{MARK}')}}{{x}}$</td>",
                                         "text/plain": "1"}),
        new_output("display_data", data={"application/javascript": f"alert('{MARK}')"}),
        new_output("display_data", data={"image/svg+xml": SVG}),
        new_output("display_data", data={"text/markdown": f"<img src=x onerror=alert('{MARK}')>"}),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": MARK}}),
        new_output("display_data", data={"text/vnd.custom+html": f"<script>{MARK}</script>"}),
        new_output("display_data", data={"image/png": PNG},
                   metadata={"image/png": {"width": f"1 onerror=alert('{MARK}')", "height": 10}}),
        new_output("display_data", data={"image/png": f"not base64 <script>{MARK}</script>", "text/plain": "img"}),
        new_output("execute_result", data={"text/plain": "3"}, execution_count=3),
        new_output("stream", name="stdout", text=f"<script>alert('{MARK}')</script>\n"),
        new_output("error", ename="E", evalue=f"<img src=x onerror=alert('{MARK}')>", traceback=["tb"]),
    ]
    cells.append(code)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {"m": {"model_name": "HTMLModel", "state": {"value": f"<script>{MARK}</script>"}}},
        "version_major": 2, "version_minor": 0}}
    nb.metadata["title"] = f"</title><script>alert('{MARK}')</script>"
    nb.metadata["customer_emails"] = [f"{MARK}@example.com"]
    return nb


class _Judge(html.parser.HTMLParser):
    """Collects everything in a page that a browser would run or load because of the attacker's payload."""

    ACTIVE = {"iframe", "object", "embed", "form", "base", "svg", "math", "frame", "link", "meta", "input",
              "button", "textarea", "video", "audio", "source"}

    def __init__(self, template_scripts_allowed: bool):
        super().__init__(convert_charrefs=True)
        self.allowed_scripts = template_scripts_allowed
        self.findings: list[str] = []
        self.stack: list[tuple[str, bool]] = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        ignore = any(n == "class" and v and "tex2jax_ignore" in v.split() for n, v in attrs)
        self.stack.append((tag, ignore or (self.stack[-1][1] if self.stack else False)))
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.findings.append(f"<{tag} {name}=...>")
            if MARK in value or MARK in name:
                self.findings.append(f"payload in <{tag} {name}={value[:60]!r}>")
            if name in ("href", "src", "action", "formaction", "xlink:href", "data", "srcdoc"):
                v = "".join(value.split()).lower()
                if v.startswith(("javascript:", "vbscript:", "data:text", "data:image/svg")) or (
                        tag == "img" and v.startswith("/")):
                    self.findings.append(f"<{tag} {name}={value[:60]!r}>")
        if tag == "script":
            self.in_script = True
            if not self.allowed_scripts:
                self.findings.append("<script>")
        elif tag in self.ACTIVE and MARK in self.get_starttag_text():
            self.findings.append(f"<{tag}>")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        if MARK not in data:
            return
        if self.in_script or (self.stack and self.stack[-1][0] == "style"):
            self.findings.append(f"payload inside <script>/<style>: {data[:80]!r}")
        elif "$" in data or "\\(" in data:
            if not (self.stack and self.stack[-1][1]):
                self.findings.append(f"TeX that MathJax would typeset: {data[:80]!r}")


def findings(page: str, *, template_scripts_allowed: bool = False) -> list[str]:
    judge = _Judge(template_scripts_allowed)
    judge.feed(page)
    judge.close()
    return judge.findings


def webserver_html(path: Path) -> str:
    """What dagster-webserver's /notebook route serves for a kept notebook."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.reads(path.read_bytes().decode(), as_version=4))
    return body


def assert_kept_notebook_is_inert(path: Path) -> nbformat.NotebookNode:
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    assert "widgets" not in raw["metadata"] and "customer_emails" not in raw["metadata"]
    assert "title" not in raw["metadata"]
    for cell in raw["cells"]:
        assert cell["cell_type"] in ("code", "markdown"), "raw cells are pasted into the page as HTML"
        assert "attachments" not in cell
        assert set(cell["metadata"]) <= {"bento", "dagster_bento", "tags", "jupyter", "collapsed", "scrolled",
                                         "editable", "deletable", "execution"}
        if cell["cell_type"] == "markdown":
            assert findings("".join(cell["source"])) == [], cell["source"]
            assert "\n" not in "".join(cell["source"]), "one line: one raw HTML block for any markdown parser"
        for out in cell.get("outputs", []):
            assert set(out.get("data", {})) <= set(artifacts.KEPT_MIME)
            assert findings("".join(out.get("data", {}).get("text/html", ""))) == []
    for page in (webserver_html(path), path.with_suffix(".html").read_text()):
        assert findings(page, template_scripts_allowed=True) == []
        assert "jupyter-widgets" not in page and "widget-state" not in page
    return nb


def test_every_attack_is_inert_in_the_kept_notebook_and_both_renderings(tmp_path):
    kept = artifacts.save(attack_notebook(), tmp_path / "s" / "run.ipynb", html=True, html_in_background=False)
    nb = assert_kept_notebook_is_inert(kept)
    text = "".join(c.source for c in nb.cells)
    # what is harmless survives: headings, the inline PNG, the https link, tables, streams, errors
    assert "<h2>img onerror</h2>" in text and f"data:image/png;base64,{PNG}" in text
    assert 'href="https://example.com"' in text
    code = [c for c in nb.cells if c.cell_type == "code"][0]
    assert code.metadata["tags"] == ["parameters"]
    assert "<td>1</td>" in code.outputs[0].data["text/html"]
    assert code.outputs[6].metadata == {"image/png": {"height": 10}}
    assert code.outputs[6].data["image/png"] == PNG and "image/png" not in code.outputs[7].data
    assert code.outputs[9].text.startswith("<script>")  # a stream is text: nbconvert escapes it
    assert code.outputs[10].evalue.startswith("<img")
    assert "not kept" in code.outputs[1].data["text/plain"]


def test_unsanitised_notebook_fails_the_judge(tmp_path):
    """The judge finds the attacks in an unsanitised copy (else the tests above prove nothing)."""
    path = tmp_path / "raw.ipynb"
    nbformat.write(attack_notebook(), path)
    page = webserver_html(path)
    found = findings(page, template_scripts_allowed=True)
    for attack in ("<img onerror=...>", "<td onclick=...>", "payload inside <script>/<style>",
                   "TeX that MathJax would typeset"):
        assert any(f.startswith(attack) for f in found), (attack, found)
    assert "widget-state" in page


def test_write_html_sanitises_a_notebook_changed_since_it_was_kept(tmp_path):
    """The background renderer reads the kept file back: write_html sanitises what it renders (it is the only
    sanitiser of our .html; nbconvert's would escape the kept markdown). Removing that call fails this test."""
    page = tmp_path / "changed.html"
    artifacts.write_html(attack_notebook(), page)
    text = page.read_text()
    assert "could not be rendered" not in text
    assert findings(text, template_scripts_allowed=True) == []
    assert "<h2>img onerror</h2>" in text and 'href="https://example.com"' in text  # formatted, not escaped


@pytest.mark.parametrize("bad", ["abc", -5, 1e100, True, 2**64, None, [1]])
def test_spoofed_execution_count_is_repaired_and_the_html_is_written(tmp_path, bad):
    nb = new_notebook(cells=[new_code_cell("x")])
    nb.cells[0]["execution_count"] = bad
    nb.cells[0].outputs = [new_output("execute_result", data={"text/plain": "1"})]
    nb.cells[0].outputs[0]["execution_count"] = bad
    nb.cells[0].outputs.append({"output_type": "stream", "name": "evil", "text": ["a", "b"]})
    nb.cells[0].outputs.append({"output_type": "bogus"})
    kept = artifacts.save(nb, tmp_path / "run.ipynb", html=True, html_in_background=False)
    clean = nbformat.read(kept, as_version=4)
    nbformat.validate(clean)
    assert clean.cells[0].execution_count is None and clean.cells[0].outputs[0].execution_count is None
    assert clean.cells[0].outputs[1] == {"output_type": "stream", "name": "stdout", "text": "ab"}
    page = kept.with_suffix(".html").read_text()
    assert "could not be rendered" not in page and "jp-Cell" in page or "cell" in page


def test_the_save_path_sanitises(tmp_path, monkeypatch):
    """Removing the sanitiser call from save() fails this test."""
    nb = new_notebook(cells=[new_markdown_cell('<img src="x" onerror="alert(1)">'), new_code_cell("x")])
    nb.cells[1].outputs = [new_output("display_data", data={"application/javascript": "alert(1)"})]
    nb.metadata["widgets"] = {"state": {}}
    kept = artifacts.save(nb, tmp_path / "run.ipynb", html=False)
    assert "onerror" not in kept.read_text() and "alert" not in kept.read_text()
    assert "widgets" not in json.loads(kept.read_text())["metadata"]


@pytest.mark.kernel
def test_a_real_run_keeps_an_inert_notebook(tmp_path):
    """The kernel itself sends the attacks: HTML/JS/SVG displays, widget-like output, a markdown cell."""
    from tests.nbfactory import add_notebook, code, md, sql_cell, write_cell, write_policy
    from tests.test_execution import run, seed_duckdb

    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "xss", [
        md(f"# Report\n\n<img src=x onerror=alert('{MARK}')> [x](javascript:alert('{MARK}'))"),
        sql_cell("df", "SELECT id FROM raw.types"),
        code(f"""
            from IPython.display import HTML, Javascript, SVG, display
            display(HTML("<b>ok</b><script>alert('{MARK}')</script><img src=x onerror=alert('{MARK}')>"))
            display(Javascript("alert('{MARK}')"))
            display({{"text/html": "<table><tr><td>$\\\\href{{javascript:alert('{MARK}')}}{{x}}$</td></tr></table>",
                     "text/plain": "t"}}, raw=True)
            out = df
        """),
        write_cell("out", "mart.xss")])
    result = run(tmp_path, url)
    assert result.success
    kept = sorted((tmp_path / "artifacts" / "xss").glob("*.ipynb"))
    assert len(kept) == 1
    from dagster_bento.execution.artifacts import write_html

    write_html(nbformat.read(kept[0], as_version=4), kept[0].with_suffix(".html"))
    nb = assert_kept_notebook_is_inert(kept[0])
    shown = [c for c in nb.cells if "display(HTML" in c.source][0]
    assert "<b>ok</b>" in shown.outputs[0].data["text/html"]
    assert list(shown.outputs[1].data) == ["text/plain"]  # the Javascript display: its repr only


@pytest.mark.kernel
def test_no_credential_of_the_warehouse_url_reaches_lineage_events_metadata_or_logs(tmp_path, capfd, caplog):
    """A real run on PostgreSQL whose URL carries the password as a query parameter (trust auth ignores
    it): one run succeeds, one fails in its SQL cell. Neither the lineage file, nor any Dagster event
    (messages and metadata), nor the logs hold the secret."""
    import logging
    import uuid as _uuid

    import psycopg

    from tests.nbfactory import add_notebook, code, sql_cell, write_cell, write_policy
    from tests.test_execution import PG_URL, run

    secret = "Sekr1tQ"
    url = f"{PG_URL}?password={secret}&sslpassword={secret}"
    schema = f"bento_s_{_uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t AS SELECT 1 AS id")
    try:
        write_policy(tmp_path, {f"{schema}.t": ["ANALYTICS"]}, default_schema="public")
        add_notebook(tmp_path, "ok", [sql_cell("df", f"SELECT id FROM {schema}.t"), code("out = df"),
                                      write_cell("out", f"{schema}.ok")])
        add_notebook(tmp_path, "bad", [sql_cell("df", f"SELECT id / 0 AS x FROM {schema}.t"), code("out = df"),
                                       write_cell("out", f"{schema}.bad")])
        caplog.set_level(logging.DEBUG)
        ok = run(tmp_path, url, select="ok")
        bad = run(tmp_path, url, select="bad", raise_on_error=False)
        assert ok.success and not bad.success
        events = [str(e) for result in (ok, bad) for e in result.all_events]
        leaks = [e[:300] for e in events if secret in e]
        lineage = (tmp_path / "artifacts" / "openlineage.jsonl").read_text()
        out, err = capfd.readouterr()
        assert secret not in lineage
        assert leaks == []
        assert secret not in caplog.text and secret not in out and secret not in err
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")
            con.execute(f"DELETE FROM bento_meta.table_labels WHERE table_name LIKE '{schema}.%'")
            con.execute(f"DELETE FROM bento_meta.landings WHERE table_name LIKE '{schema}.%'")
