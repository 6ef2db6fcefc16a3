"""Kept notebooks: never overwritten, always valid, always rendered, and what is harmless is kept.

The attacks (script, links, widget state, spoofed kernel messages) are in tests/redteam/test_sanitise.py.
"""

import base64
import html.parser
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from dagster_bento.execution import artifacts

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def test_a_second_save_for_the_same_run_never_overwrites(tmp_path, monkeypatch):
    target = tmp_path / "sched" / "run-1.ipynb"
    first = artifacts.save(new_notebook(cells=[new_code_cell("first = 1")]), target, html=False)
    before = first.read_bytes()
    # even when the existence check lies (a concurrent retry saving at the same moment): the publish is
    # an exclusive link, not check-then-write
    monkeypatch.setattr(Path, "exists", lambda self: False)
    second = artifacts.save(new_notebook(cells=[new_code_cell("second = 2")]), target, html=False)
    third = artifacts.save(new_notebook(cells=[new_code_cell("third = 3")]), target, html=False)
    assert first == target and first.read_bytes() == before
    assert second.name == "run-1.1.ipynb" and third.name == "run-1.2.ipynb"
    assert "second = 2" in second.read_text() and "third = 3" in third.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["run-1.1.ipynb", "run-1.2.ipynb", "run-1.ipynb"]


def test_html_is_written_next_to_each_kept_notebook(tmp_path):
    target = tmp_path / "run.ipynb"
    a = artifacts.save(new_notebook(cells=[new_code_cell("alpha_first")]), target, html=True, html_in_background=False)
    b = artifacts.save(new_notebook(cells=[new_code_cell("beta_second")]), target, html=True, html_in_background=False)
    assert "alpha_first" in a.with_suffix(".html").read_text() and "beta_second" in b.with_suffix(".html").read_text()


def test_background_renderer_writes_a_page_even_for_a_broken_file(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [{"cell_type": "code", "execution_count": "abc"')
    subprocess.run([sys.executable, "-m", "dagster_bento.execution.artifacts", str(broken)], check=True, timeout=120)
    page = broken.with_suffix(".html").read_text()
    assert "unreadable" in page  # says why, instead of being silently missing


def test_what_is_harmless_is_kept(tmp_path):
    cell = new_markdown_cell("# Revenue\n\nBy *nation*, see [docs](https://example.com/x).\n\n"
                             "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\nx = 1\n\ny = 2\n```\n\n![plot](attachment:p.png)")
    cell.attachments = {"p.png": {"image/png": PNG}}
    code = new_code_cell("df", execution_count=4)
    code.metadata.update({"tags": ["parameters"], "bento": {"type": "sql", "output": "df"},
                          "jupyter": {"source_hidden": True}})
    code.outputs = [new_output("execute_result", execution_count=4, data={
        "text/html": '<table class="dataframe" border="1"><thead><tr><th>a</th></tr></thead>'
                     "<tbody><tr><td>1</td></tr></tbody></table>", "text/plain": "   a\n0  1"}),
        new_output("display_data", data={"image/png": PNG}, metadata={"image/png": {"width": 400, "height": 300}}),
        new_output("stream", name="stderr", text="warning\n"),
        new_output("error", ename="ValueError", evalue="bad", traceback=["\x1b[31mValueError\x1b[0m: bad"])]
    nb = new_notebook(cells=[cell, code])
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python", "version": "3.11.7"},
                        "dagster_bento": {"run": {"schedule": "s"}}})
    kept = nbformat.read(artifacts.save(nb, tmp_path / "r.ipynb", html=False), as_version=4)
    md, out = kept.cells[0].source, kept.cells[1]
    for shown in ("<h1>Revenue</h1>", "<em>nation</em>", 'href="https://example.com/x"', "<td>1</td>",
                  "x = 1&#10;&#10;y = 2", f'src="data:image/png;base64,{PNG}"'):
        assert shown in md, shown
    assert out.execution_count == 4 and out.metadata == code.metadata
    assert '<table class="dataframe" border="1">' in out.outputs[0].data["text/html"]
    assert out.outputs[0].data["text/plain"] == "   a\n0  1" and out.outputs[0].execution_count == 4
    assert out.outputs[1].metadata == {"image/png": {"width": 400, "height": 300}}
    assert out.outputs[2].text == "warning\n" and out.outputs[3].traceback == code.outputs[3].traceback
    assert kept.metadata == nb.metadata


@pytest.mark.kernel
def test_a_rerun_with_the_same_run_id_keeps_both_notebooks(tmp_path, monkeypatch):
    """Through the real runner (real kernel): a second execution under the same run id — what a retried
    step is — keeps a new file and leaves the first one as it was."""
    from dagster_bento import review
    from dagster_bento.project import load_project
    from tests.nbfactory import add_notebook, code, sql_cell, write_cell, write_policy
    from tests.test_execution import seed_duckdb

    url = seed_duckdb(tmp_path / "wh.duckdb")
    write_policy(tmp_path, {"raw.types": ["ANALYTICS"]})
    add_notebook(tmp_path, "again", [sql_cell("df", "SELECT id FROM raw.types"), code("out = df"),
                                     write_cell("out", "mart.again")])
    project = load_project(tmp_path, warehouse_url=url, use_cache=False)
    [job] = project.jobs
    fixed = uuid.UUID("00000000-0000-4000-8000-000000000001")
    monkeypatch.setattr(review.uuid, "uuid4", lambda: fixed)
    first = review.trial_run(project, job, warehouse_url=url, artifacts_dir=tmp_path / "artifacts")
    assert first["status"] == "SUCCESS", first
    kept_first = Path(first["executed_notebook"])
    before = kept_first.read_bytes()
    second = review.trial_run(project, job, warehouse_url=url, artifacts_dir=tmp_path / "artifacts")
    kept_second = Path(second["executed_notebook"])
    assert kept_first.name == f"trial-{fixed}.ipynb" and kept_second.name == f"trial-{fixed}.1.ipynb"
    assert kept_first.read_bytes() == before
    nbformat.validate(nbformat.read(kept_second, as_version=4))


class _Elements(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))


def _elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser.found


def test_markdown_shows_formatted_in_our_html_and_in_the_webservers_rendering(tmp_path):
    """Headings, links, tables and images of a markdown cell are elements of the page, not escaped text,
    in our .html (write_html) and in what dagster-webserver's /notebook route serves (HTMLExporter())."""
    from nbconvert import HTMLExporter

    cell = new_markdown_cell("# Title\n\nSee [link](https://example.com).\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                             "![plot](attachment:p.png)")
    cell.attachments = {"p.png": {"image/png": PNG}}
    kept = artifacts.save(new_notebook(cells=[cell]), tmp_path / "r.ipynb", html=True, html_in_background=False)
    ours = kept.with_suffix(".html").read_text()
    webserver, _ = HTMLExporter().from_notebook_node(nbformat.read(kept, as_version=4))
    for name, page in (("write_html", ours), ("webserver", webserver)):
        found = _elements(page)
        tags = [tag for tag, _ in found]
        assert "h1" in tags and "table" in tags and "td" in tags, name
        assert ("a", "https://example.com") in [(t, a.get("href")) for t, a in found], name
        assert ("img", f"data:image/png;base64,{PNG}") in [(t, a.get("src")) for t, a in found], name
        assert "&lt;h1&gt;" not in page and "&lt;table" not in page and "&lt;p&gt;" not in page, name


def test_cell_timestamps_are_kept_and_nothing_else_rides_along():
    """nbclient's per-cell timestamps show when each cell ran (the benchmarks and `show` read them);
    anything in `metadata.execution` that is not a timestamp is dropped."""
    import nbformat

    from dagster_bento.execution.artifacts import sanitize

    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["execution"] = {"iopub.execute_input": "2026-12-07T01:28:04.123456Z",
                                  "shell.execute_reply": "2026-12-07T01:28:05.5Z", "iopub.status.busy": "<b>x</b>",
                                  "data": "secret"}
    kept = sanitize(nbformat.v4.new_notebook(cells=[cell]))
    assert kept.cells[0].metadata["execution"] == {"iopub.execute_input": "2026-12-07T01:28:04.123456Z",
                                                   "shell.execute_reply": "2026-12-07T01:28:05.5Z"}
