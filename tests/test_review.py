"""`dagster-bento schedule`: spec, pipeline preview and trial run committed on a review branch."""

import json
import subprocess
import sys

import duckdb
import nbformat
import pytest

from tests.nbfactory import code, sql_cell, write_cell, write_notebook, write_policy

pytestmark = pytest.mark.kernel


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("CREATE SCHEMA raw; CREATE TABLE raw.orders AS SELECT range AS id, range * 1.5::DOUBLE AS amount FROM range(5)")
    con.execute("CREATE TABLE raw.customers AS SELECT * FROM (VALUES ('alice_pii_7', 1), ('bob_pii_8', 2)) t(name, n)")
    con.close()
    write_policy(tmp_path, {"raw.orders": ["ANALYTICS"], "raw.customers": ["ANALYTICS"]})
    (tmp_path / ".gitignore").write_text("warehouse.duckdb*\n.bento/\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def cli(repo, *args):
    return subprocess.run([sys.executable, "-m", "dagster_bento.cli", "schedule", *args], cwd=repo,
                          capture_output=True, text=True, timeout=300)


def test_schedule_creates_a_review_branch(repo):
    write_notebook(repo / "notebooks" / "totals.ipynb", [
        sql_cell("orders", "SELECT id, amount FROM raw.orders"),
        code("totals = orders.assign(double=orders.amount * 2)"), write_cell("totals", "mart.totals")])
    out = cli(repo, "notebooks/totals.ipynb", "--owner", "alice@example.com", "--zone", "ANALYTICS",
              "--cron", "0 6 * * *", "--timezone", "Europe/London")
    assert out.returncode == 0, out.stdout + out.stderr
    assert git(repo, "branch", "--show-current") == "bento/schedule-totals"
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").splitlines())
    assert files == {"notebooks/totals.ipynb", "notebooks/totals.bento.yaml", "reviews/totals/pipeline.md",
                     "reviews/totals/trial-totals.ipynb"}
    preview = (repo / "reviews" / "totals" / "pipeline.md").read_text()
    assert "flowchart LR" in preview and "raw/orders" in preview and "mart/totals" in preview
    assert "cron `0 6 * * *` (`Europe/London`)" in preview
    assert "SUCCESS" in preview and "`mart.totals`: 5 rows" in preview and "double" in preview
    trial = nbformat.read(repo / "reviews" / "totals" / "trial-totals.ipynb", as_version=4)
    assert trial.metadata["dagster_bento"]["rewritten_cells"]
    assert all(not c.get("outputs") for c in trial.cells)  # no warehouse data in git
    # a trial uploads nothing
    con = duckdb.connect(str(repo / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'totals'").fetchall() == [(0,)]
    con.close()


def test_failed_trial_commits_nothing(repo):
    write_notebook(repo / "notebooks" / "broken.ipynb", [
        sql_cell("orders", "SELECT id FROM raw.orders"), code("raise RuntimeError('bad data')"),
        write_cell("orders", "mart.broken")])
    out = cli(repo, "notebooks/broken.ipynb", "--owner", "a@example.com", "--zone", "ANALYTICS",
              "--trigger", "upstream_landed")
    assert out.returncode == 1
    assert "trial run of broken failed" in out.stderr and "bad data" in out.stderr
    assert git(repo, "branch", "--show-current") == "main"
    assert git(repo, "log", "--oneline").count("\n") == 0  # still only the initial commit
    assert not (repo / "notebooks" / "broken.bento.yaml").exists()  # the spec it wrote is removed


def test_static_problems_block_the_proposal(repo):
    write_notebook(repo / "notebooks" / "bad.ipynb", [sql_cell("o", "SELECT FROM WHERE"), write_cell("o", "mart.b")])
    out = cli(repo, "notebooks/bad.ipynb", "--owner", "a@example.com", "--zone", "ANALYTICS", "--cron", "0 1 * * *")
    assert out.returncode == 1 and "BENTO004" in out.stderr and "cell 0" in out.stderr
    assert git(repo, "branch", "--show-current") == "main"


def test_review_commits_no_data_and_sql_cannot_leave_its_block(repo):
    """Column names built from data values, widget-like metadata the kernel writes and a SQL text that
    holds a longer backtick run than the fence: none of it reaches the commit as data or markup."""
    from markdown_it import MarkdownIt

    sql = "SELECT name, n /*\n````\n<img src=x onerror=alert(1)>\n*/ FROM raw.customers"
    write_notebook(repo / "notebooks" / "wide.ipynb", [
        sql_cell("customers", sql),
        code("""
            import pandas as pd
            from IPython.display import display
            display({"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "w"}, raw=True)
            print(customers.to_string())
            wide = pd.DataFrame([{name: n for name, n in zip(customers["name"], customers["n"])}])
            wide["total"] = wide.sum(axis=1)
        """),
        write_cell("wide", "mart.wide")])
    out = cli(repo, "notebooks/wide.ipynb", "--owner", "alice@example.com", "--zone", "ANALYTICS",
              "--cron", "0 6 * * *")
    assert out.returncode == 0, out.stdout + out.stderr
    committed = git(repo, "show", "HEAD", "--format=", "--", "reviews/")
    assert "alice_pii" not in committed and "bob_pii" not in committed
    preview = (repo / "reviews" / "wide" / "pipeline.md").read_text()
    assert "`mart.wide`: 1 rows" in preview and "`total`" in preview
    assert "column 0" in preview and "2 column name(s) not shown" in preview
    tokens = MarkdownIt("commonmark").parse(preview)
    assert not [t for t in tokens if t.type in ("html_block", "html_inline")]
    assert not [t for c in tokens if c.children for t in c.children if t.type == "html_inline"]
    fences = [t for t in tokens if t.type == "fence" and t.info == "sql"]
    assert [t.content.strip() for t in fences] == [sql]
    trial = json.loads((repo / "reviews" / "wide" / "trial-wide.ipynb").read_text())
    assert all(not c.get("outputs") and "attachments" not in c for c in trial["cells"])
    assert set(trial["metadata"]) <= {"kernelspec", "language_info", "dagster_bento"}
    for cell in trial["cells"]:
        assert set(cell["metadata"]) <= {"bento", "dagster_bento", "tags", "jupyter", "collapsed", "scrolled", "execution"}


def test_a_notebook_with_saved_outputs_or_widget_state_is_not_committed(repo):
    path = write_notebook(repo / "notebooks" / "saved.ipynb", [
        sql_cell("orders", "SELECT id FROM raw.orders"), code("orders"), write_cell("orders", "mart.saved")])
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "alice_pii_7"},
                                                  execution_count=1)]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"v": "bob_pii_8"}}}
    nbformat.write(nb, path)
    out = cli(repo, "notebooks/saved.ipynb", "--owner", "a@example.com", "--zone", "ANALYTICS", "--cron", "0 1 * * *")
    assert out.returncode == 1
    assert "[cell 1]: 1 saved output(s)" in out.stderr and "widget state" in out.stderr
    assert "--clear-output" in out.stderr
    assert git(repo, "branch", "--show-current") == "main"
    assert not (repo / "notebooks" / "saved.bento.yaml").exists()


def test_uncommitted_policy_changes_the_schedule_needs_go_into_the_branch(repo):
    """The review branch passes `check` on its own: a table labelled only in the working copy's policy
    is committed with the schedule, and named in the commit message."""
    import yaml

    policy_path = repo / "purpose_zones.yaml"
    policy = yaml.safe_load(policy_path.read_text())
    policy["tables"]["raw.extra"] = {"zones": ["ANALYTICS"]}
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    con = duckdb.connect(str(repo / "warehouse.duckdb"))
    con.execute("CREATE TABLE raw.extra AS SELECT 1 AS id")
    con.close()
    write_notebook(repo / "notebooks" / "extra.ipynb", [
        sql_cell("e", "SELECT id FROM raw.extra"), write_cell("e", "mart.extra")])
    out = cli(repo, "notebooks/extra.ipynb", "--owner", "a@example.com", "--zone", "ANALYTICS", "--cron", "0 1 * * *")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "also committed" in out.stdout and "purpose_zones.yaml" in out.stdout
    files = set(git(repo, "show", "--name-only", "--format=", "HEAD").splitlines())
    assert "purpose_zones.yaml" in files
    assert "purpose_zones.yaml" in git(repo, "log", "-1", "--format=%B")
    assert git(repo, "status", "--porcelain", "--", "purpose_zones.yaml") == ""
