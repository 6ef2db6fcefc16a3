"""Tests of the static eligibility check of plain code cells (dagster_bento.eligibility)."""

import pytest

from dagster_bento.eligibility import (
    ELIGIBILITY_CODES,
    EXEMPTABLE_CATEGORIES,
    Exemption,
    check_cell,
    check_notebook_cells,
    parse_exemptions,
)
from dagster_bento.errors import Problem

NB = "notebooks/revenue.ipynb"
SPEC = "notebooks/revenue.bento.yaml"
CELL = 7


def problems_of(source: str, cell: int = CELL) -> list[Problem]:
    return check_cell(source, notebook=NB, cell=cell)


def errors_of(source: str) -> list[Problem]:
    return [p for p in problems_of(source) if p.severity == "error"]


def only(source: str) -> Problem:
    found = problems_of(source)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


# --------------------------------------------------------------------------------------------------
# One case per refused side effect: (source, code, line)
# --------------------------------------------------------------------------------------------------

SIDE_EFFECTS = {
    # network
    "socket": ("import socket", "BENTO-E101", 1),
    "requests": ("x = 1\nimport requests\nrequests.get('https://example.com')", "BENTO-E101", 2),
    "urllib.request": ("import urllib.request", "BENTO-E101", 1),
    "from urllib.request": ("from urllib.request import urlopen", "BENTO-E101", 1),
    "from urllib import request": ("from urllib import request", "BENTO-E101", 1),
    "urllib attribute": ("import urllib\nurllib.request.urlopen('https://x')", "BENTO-E101", 2),
    "http.client": ("import http.client", "BENTO-E101", 1),
    "from http import client": ("from http import client", "BENTO-E101", 1),
    "httpx": ("import httpx", "BENTO-E101", 1),
    "aiohttp": ("import aiohttp", "BENTO-E101", 1),
    "urllib3": ("import urllib3", "BENTO-E101", 1),
    "ftplib": ("from ftplib import FTP", "BENTO-E101", 1),
    "smtplib": ("import smtplib", "BENTO-E101", 1),
    "paramiko": ("import paramiko", "BENTO-E101", 1),
    "boto3": ("import boto3", "BENTO-E101", 1),
    "remote read": ("import pandas as pd\ndf = pd.read_csv('https://example.com/x.csv')", "BENTO-E101", 2),
    "remote write": ("df.to_parquet('s3://bucket/key.parquet')", "BENTO-E101", 1),
    # process
    "subprocess": ("import subprocess", "BENTO-E102", 1),
    "from subprocess": ("from subprocess import run", "BENTO-E102", 1),
    "multiprocessing": ("import multiprocessing", "BENTO-E102", 1),
    "os.system": ("import os\nos.system('ls')", "BENTO-E102", 2),
    "os.popen": ("import os\n\nos.popen('ls')", "BENTO-E102", 3),
    "os.execvp": ("import os\nos.execvp('ls', ['ls'])", "BENTO-E102", 2),
    "os.spawnl": ("import os\nos.spawnl(os.P_WAIT, '/bin/ls')", "BENTO-E102", 2),
    "os.fork": ("import os\npid = os.fork()", "BENTO-E102", 2),
    "pty": ("import pty", "BENTO-E102", 1),
    "ctypes": ("import ctypes", "BENTO-E102", 1),
    "ProcessPoolExecutor": ("from concurrent.futures import ProcessPoolExecutor", "BENTO-E102", 1),
    # shell escapes and magics
    "! line": ("x = 1\n!ls -l", "BENTO-E103", 2),
    "! assignment": ("files = !ls", "BENTO-E103", 1),
    "!! line": ("!!ls", "BENTO-E103", 1),
    "indented !": ("if True:\n    !ls", "BENTO-E103", 2),
    "%%bash": ("%%bash\necho hi\n", "BENTO-E103", 1),
    "%%sh": ("%%sh\necho hi\n", "BENTO-E103", 1),
    "%%script": ("%%script bash\necho hi\n", "BENTO-E103", 1),
    "%%system": ("%%system\nls\n", "BENTO-E103", 1),
    "%system": ("%system ls", "BENTO-E103", 1),
    "%sx": ("out = %sx ls", "BENTO-E103", 1),
    "%run": ("%run other_notebook.ipynb", "BENTO-E103", 1),
    "%pip": ("%pip install requests", "BENTO-E103", 1),
    "get_ipython().system": ("get_ipython().system('ls')", "BENTO-E103", 1),
    "get_ipython().getoutput": ("out = get_ipython().getoutput('ls')", "BENTO-E103", 1),
    # database drivers and engines
    "sqlalchemy": ("import sqlalchemy as sa", "BENTO-E104", 1),
    "from sqlalchemy": ("from sqlalchemy import create_engine", "BENTO-E104", 1),
    "psycopg": ("import psycopg", "BENTO-E104", 1),
    "psycopg2": ("import psycopg2", "BENTO-E104", 1),
    "duckdb": ("import duckdb", "BENTO-E104", 1),
    "sqlite3": ("import sqlite3", "BENTO-E104", 1),
    "pymysql": ("import pymysql", "BENTO-E104", 1),
    "MySQLdb": ("import MySQLdb", "BENTO-E104", 1),
    "adbc_driver_postgresql": ("import adbc_driver_postgresql.dbapi", "BENTO-E104", 1),
    "adbc_driver_manager": ("from adbc_driver_manager import dbapi", "BENTO-E104", 1),
    "pyodbc": ("import pyodbc", "BENTO-E104", 1),
    "cx_Oracle": ("import cx_Oracle", "BENTO-E104", 1),
    "oracledb": ("import oracledb", "BENTO-E104", 1),
    "snowflake.connector": ("import snowflake.connector", "BENTO-E104", 1),
    "from snowflake import connector": ("from snowflake import connector", "BENTO-E104", 1),
    "google.cloud.bigquery": ("from google.cloud import bigquery", "BENTO-E104", 1),
    # database through dataframes and magics
    "read_sql": ("import pandas as pd\ndf = pd.read_sql('select 1', con)", "BENTO-E105", 2),
    "read_sql_query": ("df = pd.read_sql_query('select 1', con)", "BENTO-E105", 1),
    "read_sql_table": ("df = pd.read_sql_table('orders', con)", "BENTO-E105", 1),
    "to_sql": ("df.to_sql('orders', con)", "BENTO-E105", 1),
    "read_gbq": ("df = pd.read_gbq('select 1')", "BENTO-E105", 1),
    "to_gbq": ("df.to_gbq('dataset.table')", "BENTO-E105", 1),
    "from pandas import read_sql": ("from pandas import read_sql", "BENTO-E105", 1),
    "%sql": ("%sql SELECT 1", "BENTO-E105", 1),
    "%%sql": ("%%sql\nSELECT 1\n", "BENTO-E105", 1),
    "%load_ext sql": ("%load_ext sql", "BENTO-E105", 1),
    # file writes outside the run directory
    "open absolute w": ("open('/etc/x.txt', 'w')", "BENTO-E106", 1),
    "open parent a": ("with open('../x.txt', 'a') as f:\n    f.write('x')", "BENTO-E106", 1),
    "open home x": ("open('~/x.txt', 'x')", "BENTO-E106", 1),
    "open r+": ("open('/etc/hosts', 'r+')", "BENTO-E106", 1),
    "open mode keyword": ("open(file='/tmp/x', mode='wb')", "BENTO-E106", 1),
    "to_csv absolute": ("df.to_csv('/tmp/out.csv')", "BENTO-E106", 1),
    "to_parquet parent": ("df.to_parquet('../out.parquet')", "BENTO-E106", 1),
    "to_json keyword": ("df.to_json(path_or_buf='/tmp/out.json')", "BENTO-E106", 1),
    "to_excel": ("df.to_excel('/tmp/out.xlsx')", "BENTO-E106", 1),
    "to_pickle": ("df.to_pickle('~/out.pkl')", "BENTO-E106", 1),
    "to_feather": ("df.to_feather('/tmp/out.feather')", "BENTO-E106", 1),
    "savefig": ("import matplotlib.pyplot as plt\nplt.savefig('/tmp/fig.png')", "BENTO-E106", 2),
    "numpy.save": ("import numpy as np\nnp.save('/tmp/a.npy', a)", "BENTO-E106", 2),
    "Path.write_text": ("from pathlib import Path\nPath('/etc/x').write_text('x')", "BENTO-E106", 2),
    "Path.write_bytes": ("import pathlib\npathlib.Path('/tmp/x').write_bytes(b'x')", "BENTO-E106", 2),
    "Path.mkdir": ("Path('../out').mkdir()", "BENTO-E106", 1),
    "Path.touch": ("Path('/tmp/flag').touch()", "BENTO-E106", 1),
    "Path division": ("(Path('/data') / 'x.csv').write_text('x')", "BENTO-E106", 1),
    "Path.home": ("(Path.home() / 'x.txt').write_text('x')", "BENTO-E106", 1),
    "Path.open w": ("Path('/tmp/x').open('w')", "BENTO-E106", 1),
    "Path.rename target": ("Path('a.csv').rename('/tmp/a.csv')", "BENTO-E106", 1),
    "Path.cwd().parent": ("out = Path.cwd().parent\n(out / 'x.csv').write_text('x')", "BENTO-E106", 2),
    "os.remove": ("import os\nos.remove('/tmp/x')", "BENTO-E106", 2),
    "os.unlink": ("os.unlink('../x')", "BENTO-E106", 1),
    "os.rename target": ("os.rename('a.csv', '/tmp/a.csv')", "BENTO-E106", 1),
    "os.replace": ("os.replace('/tmp/a', 'b')", "BENTO-E106", 1),
    "os.makedirs": ("os.makedirs('/tmp/out', exist_ok=True)", "BENTO-E106", 1),
    "os.mkdir": ("os.mkdir('/tmp/out')", "BENTO-E106", 1),
    "os.rmdir": ("os.rmdir('../out')", "BENTO-E106", 1),
    "os.chmod": ("os.chmod('/etc/passwd', 0o777)", "BENTO-E106", 1),
    "os.chown": ("os.chown('/etc/passwd', 0, 0)", "BENTO-E106", 1),
    "os.path.join": ("import os\nopen(os.path.join('/tmp', 'x.txt'), 'w')", "BENTO-E106", 2),
    "shutil.copy": ("import shutil\nshutil.copy('a.csv', '/tmp/a.csv')", "BENTO-E106", 2),
    "shutil.move": ("shutil.move('/tmp/a.csv', 'a.csv')", "BENTO-E106", 1),
    "shutil.rmtree": ("shutil.rmtree('/data')", "BENTO-E106", 1),
    "variable path": ("out = '/tmp/report.csv'\ndf.to_csv(out)", "BENTO-E106", 2),
    "f-string absolute prefix": ("df.to_csv(f'/tmp/{name}.csv')", "BENTO-E106", 1),
    "%%writefile": ("%%writefile /tmp/x.py\nprint(1)\n", "BENTO-E106", 1),
    "%cd": ("%cd /tmp", "BENTO-E106", 1),
    # dynamic imports of a forbidden module: reported under the module's own code
    "__import__": ("s = __import__('socket')", "BENTO-E101", 1),
    "importlib.import_module": ("import importlib\nm = importlib.import_module('subprocess')", "BENTO-E102", 2),
    "importlib db": ("import importlib\nimportlib.import_module('duckdb')", "BENTO-E104", 2),
    "exec literal": ("exec('import socket')", "BENTO-E101", 1),
}


@pytest.mark.parametrize(("source", "code", "line"), list(SIDE_EFFECTS.values()), ids=list(SIDE_EFFECTS))
def test_side_effect_is_refused(source: str, code: str, line: int) -> None:
    found = problems_of(source)
    assert [(p.code, p.cell, p.line, p.severity) for p in found] == [(code, CELL, line, "error")], \
        [str(p) for p in found]
    assert found[0].notebook == NB
    assert ELIGIBILITY_CODES[code] in EXEMPTABLE_CATEGORIES


def test_message_says_what_why_and_fix() -> None:
    message = only("import socket").message
    assert "'socket'" in message
    assert "scheduled notebooks may only read through SQL cells and write through write cells" in message
    assert "the sandbox blocks this at run time anyway" in message
    assert f"add a reviewed exemption to {SPEC}: exemptions: [{{rule: network, reason: ...}}]" in message


@pytest.mark.parametrize(("source", "fix"), [
    ("df = pd.read_sql('select 1', con)", "move the query into a SQL cell"),
    ("import duckdb", "move the query into a SQL cell"),
    ("df.to_sql('t', con)", "write the dataframe with a write cell"),
    ("df.to_csv('/tmp/x.csv')", "write the dataframe with a write cell"),
])
def test_message_names_the_fix(source: str, fix: str) -> None:
    assert fix in only(source).message


def test_problem_renders_location() -> None:
    assert str(only("x = 1\nimport socket")).startswith(f"{NB} [cell {CELL}, line 2]: BENTO-E101 ")


# --------------------------------------------------------------------------------------------------
# Alias resolution
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "code", "line"), [
    ("import socket as s\ns.create_connection(('x', 80))", "BENTO-E101", 1),
    ("from subprocess import run as r\nr(['ls'])", "BENTO-E102", 1),
    ("import os\nos.system('ls')", "BENTO-E102", 2),
    ("import os as o\no.system('ls')", "BENTO-E102", 2),
    ("from os import system\nsystem('ls')", "BENTO-E102", 1),
    ("from os import system as run_it\nrun_it('ls')", "BENTO-E102", 1),
    ("import os\nsh = os.system\n", "BENTO-E102", 2),
    ("import os\nf = getattr(os, 'system')", "BENTO-E102", 2),
    ("import posix\nposix.system('ls')", "BENTO-E102", 2),
    ("import builtins\nbuiltins.__import__('socket')", "BENTO-E101", 2),
    ("ip = get_ipython()\nip.system('ls')", "BENTO-E103", 2),
    ("from IPython import get_ipython\nget_ipython().system('ls')", "BENTO-E103", 2),
    ("from os import *\nsystem('ls')", "BENTO-E102", 2),
    ("import shutil as sh\nsh.rmtree('/data')", "BENTO-E106", 2),
    ("from shutil import rmtree as nuke\nnuke('/data')", "BENTO-E106", 2),
    ("from pathlib import Path as P\nP('/tmp/x').write_text('x')", "BENTO-E106", 2),
])
def test_aliases_are_resolved(source: str, code: str, line: int) -> None:
    assert [(p.code, p.line) for p in problems_of(source)] == [(code, line)]


def test_a_binding_is_reported_once_not_at_every_use() -> None:
    found = problems_of("import subprocess as sp\nsp.run(['ls'])\nsp.check_output(['ls'])")
    assert [(p.code, p.line) for p in found] == [("BENTO-E102", 1)]


def test_names_resolve_across_cells() -> None:
    found = check_notebook_cells([(1, "import os"), (3, "x = 1\nos.system('ls')")], notebook=NB)
    assert [(p.code, p.cell, p.line) for p in found] == [("BENTO-E102", 3, 2)]


def test_a_variable_from_an_earlier_cell_is_not_a_module() -> None:
    cells = [(1, "sh = df.shape\nredis = 3"), (2, "print(sh.count(1), redis)")]
    assert check_notebook_cells(cells, notebook=NB) == []


@pytest.mark.parametrize("source", [
    "def f(requests):\n    return requests.count(1)",
    "[sh.upper() for sh in names]",
    "for socket in sockets:\n    print(socket.name)",
    "lambda duckdb: duckdb + 1",
    "try:\n    pass\nexcept Exception as sqlite3:\n    print(sqlite3)",
    "text = 'import socket; os.system(1)'  # import requests",
    "s = 'a,b'.replace(',', ';')",
])
def test_shadowed_names_comments_and_strings_are_not_flagged(source: str) -> None:
    assert problems_of(source) == []


# --------------------------------------------------------------------------------------------------
# IPython magics and `!` lines
# --------------------------------------------------------------------------------------------------


def test_shell_escape_lines_are_reported_where_they_are() -> None:
    found = problems_of("import pandas as pd\n!ls\ndf = 1\n!!pwd")
    assert [(p.code, p.line) for p in found] == [("BENTO-E103", 2), ("BENTO-E103", 4)]
    assert "'ls'" in found[0].message


def test_cell_magic_after_blank_lines_keeps_its_line() -> None:
    assert [(p.code, p.line) for p in problems_of("\n\n%%bash\nls\n")] == [("BENTO-E103", 3)]


@pytest.mark.parametrize(("source", "code", "line"), [
    ("%%time\nimport socket\n", "BENTO-E101", 2),
    ("%%time\n\nx = 1\nimport os\nos.system('ls')\n", "BENTO-E102", 5),
    ("%%capture out\n!ls\n", "BENTO-E103", 2),
    ("x = 1\n%time os.system('ls')", "BENTO-E102", 2),
    ("%timeit -n 10 -r 1 os.popen('ls')", "BENTO-E102", 1),
])
def test_python_magic_bodies_are_checked(source: str, code: str, line: int) -> None:
    assert [(p.code, p.line) for p in problems_of(source)] == [(code, line)]


def test_syntax_error_inside_a_python_cell_magic_is_reported_at_its_line() -> None:
    found = problems_of("%%time\nx = 1\ny = (\n")
    assert [(p.code, p.line) for p in found] == [("BENTO-E100", 3)]


@pytest.mark.parametrize("source", [
    "%matplotlib inline",
    "%%time\ndf = df.assign(x=1)\n",
    "%timeit df.sum()",
    "%load_ext autoreload\n%autoreload 2",
    "%%html\n<b>hello</b>\n",
    "%%writefile helper.py\nprint(1)\n",
    "%env MY_FLAG=1",
    "df?",
])
def test_harmless_magics_pass(source: str) -> None:
    assert problems_of(source) == []


# --------------------------------------------------------------------------------------------------
# Warnings: what cannot be resolved statically
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "code"), [
    ("open(path, 'w')", "BENTO-E107"),
    ("df.to_csv(out_path)", "BENTO-E107"),
    ("df.to_parquet(f'{base}/x.parquet')", "BENTO-E107"),
    ("Path(target).write_text('x')", "BENTO-E107"),
    ("p.mkdir(parents=True)", "BENTO-E107"),
    ("os.remove(name)", "BENTO-E107"),
    ("shutil.rmtree(get_dir())", "BENTO-E107"),
    ("open('/tmp/x', mode)", "BENTO-E107"),
    ("import importlib\nimportlib.import_module(name)", "BENTO-E108"),
    ("__import__(name)", "BENTO-E108"),
    ("import os\ngetattr(os, name)('ls')", "BENTO-E108"),
    ("eval(expression)", "BENTO-E109"),
    ("exec(code)", "BENTO-E109"),
    ("get_ipython().run_cell(code)", "BENTO-E109"),
])
def test_unresolvable_is_a_warning(source: str, code: str) -> None:
    found = problems_of(source)
    assert [(p.code, p.severity) for p in found] == [(code, "warning")], [str(p) for p in found]
    assert "cannot verify" in found[0].message


@pytest.mark.parametrize("source", [
    "exec('x = 1')",
    "eval('1 + 2')",
    "open('/etc/hosts')",
    "open(path)",
    "open(path, 'rb')",
    "df.to_csv()",
    "text = df.to_json(orient='records')",
    "html = df.to_html(buf=None)",
    "with open('out.csv', 'w') as f:\n    df.to_csv(f)",
    "import io\nbuf = io.StringIO()\ndf.to_csv(buf)",
    "shutil.copy('/etc/hosts', 'hosts_copy')",
    "import sys\ndf.to_csv(sys.stdout)",
    "Path('a.csv').rename('b.csv')",
    "'/tmp/a'.replace('/', '_')",
    "out_dir = 'results'\ndf.to_parquet(f'{out_dir}/x.parquet')",
    "df.to_csv(f'out_{ds}.csv')",
    "(Path('out') / name).write_text('x')",
    "Path('out').mkdir(exist_ok=True)",
    "os.makedirs('out/sub', exist_ok=True)",
    "open('a/../b.txt', 'w')",
    "import os\nfd = os.open('/etc/hosts', os.O_RDONLY)",
])
def test_safe_writes_and_reads_pass(source: str) -> None:
    assert problems_of(source) == []


# --------------------------------------------------------------------------------------------------
# Syntax errors
# --------------------------------------------------------------------------------------------------


def test_syntax_error_is_one_problem_with_its_line() -> None:
    found = problems_of("import socket\nx = 1\ny = (1 +\n")
    assert len(found) == 1
    problem = found[0]
    assert (problem.code, problem.cell, problem.severity) == ("BENTO-E100", CELL, "error")
    assert problem.line is not None and problem.line >= 3
    assert "fix the syntax" in problem.message


# --------------------------------------------------------------------------------------------------
# Clean cells
# --------------------------------------------------------------------------------------------------

CLEAN_CELLS = {
    "pandas transform": ("joined = orders.merge(customers, on='customer_key')\n"
                         "summary = (joined.groupby('nation', as_index=False)\n"
                         "           .agg(revenue=('revenue', 'sum')).sort_values('revenue'))\n"
                         "summary['share'] = summary['revenue'] / summary['revenue'].sum()\nsummary"),
    "import pandas": "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})",
    "numpy": "import numpy as np\nx = np.arange(10).reshape(2, 5)",
    "relative parquet": "df.to_parquet('out.parquet')",
    "relative csv in subdir": "df.to_csv('out/summary.csv', index=False)",
    "open notes": "with open('notes.txt', 'w') as f:\n    f.write('done')",
    "open notes plain": "open('notes.txt', 'w').write('x')",
    "print": "print('hello', 42)",
    "matplotlib": ("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2], [3, 4])\n"
                   "plt.title('x')\nplt.savefig('plot.png')\nplt.show()"),
    "%matplotlib inline": "%matplotlib inline\nimport matplotlib.pyplot as plt",
    "%%time": "%%time\ntotal = df['revenue'].sum()\n",
    "display": "display(df)\ndisplay(df.head())",
    "datetime": "from datetime import datetime\nnow = datetime.now()",
    "read local csv": "import pandas as pd\nref = pd.read_csv('reference.csv')",
    "functions and classes": ("class Summary:\n    def __init__(self, df):\n        self.df = df\n\n"
                              "def top(df, n=5):\n    return df.nlargest(n, 'revenue')\n"),
    "urllib.parse": "from urllib.parse import urlencode\nq = urlencode({'a': 1})",
    "os.path and environ": "import os\nname = os.path.basename('a/b.csv')\nflag = os.environ.get('X')",
    "json": "import json\ntext = json.dumps({'a': 1})",
    "empty": "",
    "comment only": "# nothing to see here",
    "re.compile": "import re\npattern = re.compile('a+')",
    "df.eval": "df = df.eval('c = a + b')",
    "str.replace": "name = 'a/b'.replace('/', '_')",
}


@pytest.mark.parametrize("source", list(CLEAN_CELLS.values()), ids=list(CLEAN_CELLS))
def test_clean_cells_pass(source: str) -> None:
    assert problems_of(source) == [], [str(p) for p in problems_of(source)]


def test_clean_notebook_passes() -> None:
    cells = [(1, "import pandas as pd"), (4, CLEAN_CELLS["pandas transform"]), (6, CLEAN_CELLS["matplotlib"])]
    assert check_notebook_cells(cells, notebook=NB) == []


# --------------------------------------------------------------------------------------------------
# Exemptions
# --------------------------------------------------------------------------------------------------

NETWORK_CELLS = [(1, "import pandas as pd"), (3, "import requests"), (5, "import socket")]


def test_exemption_with_reason_drops_the_problems() -> None:
    exemption = Exemption(rule="network", reason="reviewed: posts a Slack summary (ticket DATA-12)")
    assert check_notebook_cells(NETWORK_CELLS, notebook=NB, exemptions=[exemption]) == []


def test_exemption_by_code() -> None:
    exemption = Exemption(rule="BENTO-E101", reason="reviewed")
    assert check_notebook_cells(NETWORK_CELLS, notebook=NB, exemptions=[exemption]) == []


def test_exemption_only_covers_its_rule() -> None:
    cells = [(2, "import requests\nimport subprocess")]
    found = check_notebook_cells(cells, notebook=NB, exemptions=[Exemption("network", "reviewed")])
    assert [(p.code, p.cell, p.line) for p in found] == [("BENTO-E102", 2, 2)]


def test_exemption_restricted_to_cells() -> None:
    exemption = Exemption(rule="network", reason="reviewed", cells=(3,))
    found = check_notebook_cells(NETWORK_CELLS, notebook=NB, exemptions=[exemption])
    assert [(p.code, p.cell) for p in found] == [("BENTO-E101", 5)]


def test_exemption_covers_warnings_of_its_category() -> None:
    cells = [(2, "df.to_csv(path)")]
    assert check_notebook_cells(cells, notebook=NB, exemptions=[Exemption("file_write", "reviewed")]) == []


def test_exemption_without_reason_is_an_error_and_not_applied() -> None:
    found = check_notebook_cells(NETWORK_CELLS, notebook=NB, exemptions=[Exemption("network", "  ")])
    codes = [(p.code, p.cell, p.severity) for p in found]
    assert ("BENTO-E110", None, "error") in codes
    assert [c for c in codes if c[0] == "BENTO-E101"] == [("BENTO-E101", 3, "error"), ("BENTO-E101", 5, "error")]
    assert SPEC in next(p for p in found if p.code == "BENTO-E110").message


def test_unused_exemption_is_a_warning() -> None:
    cells = [(1, "import pandas as pd")]
    found = check_notebook_cells(cells, notebook=NB, exemptions=[Exemption("process", "reviewed", cells=(1,))])
    assert [(p.code, p.severity) for p in found] == [("BENTO-E111", "warning")]
    assert "unused exemption" in found[0].message


def test_exemption_for_other_cells_is_unused() -> None:
    found = check_notebook_cells(NETWORK_CELLS, notebook=NB,
                                 exemptions=[Exemption("network", "reviewed", cells=(1,))])
    assert sorted(p.code for p in found) == ["BENTO-E101", "BENTO-E101", "BENTO-E111"]


def test_syntax_errors_cannot_be_exempted() -> None:
    found = check_notebook_cells([(2, "x = (")], notebook=NB, exemptions=[Exemption("BENTO-E100", "please")])
    assert sorted(p.code for p in found) == ["BENTO-E100", "BENTO-E112"]


def test_problems_are_ordered_by_cell_and_line_with_notebook_problems_last() -> None:
    cells = [(5, "import socket"), (2, "x = 1\nimport subprocess\nimport requests")]
    found = check_notebook_cells(cells, notebook=NB, exemptions=[Exemption("dynamic", "")])
    assert [(p.cell, p.line) for p in found] == [(2, 2), (2, 3), (5, 1), (None, None)]


def test_parse_exemptions_from_spec_yaml() -> None:
    raw = [{"rule": "network", "reason": "posts to Slack", "cells": [3]},
           {"rule": "BENTO-E106", "reason": "writes a shared export", "cells": 4},
           {"rule": "process", "reason": "reviewed"}]
    exemptions, problems = parse_exemptions(raw, notebook=NB)
    assert problems == []
    assert exemptions == [Exemption("network", "posts to Slack", (3,)),
                          Exemption("BENTO-E106", "writes a shared export", (4,)),
                          Exemption("process", "reviewed", None)]


def test_parse_exemptions_keeps_missing_reason_for_the_check_to_report() -> None:
    exemptions, problems = parse_exemptions([{"rule": "network"}], notebook=NB)
    assert problems == [] and exemptions == [Exemption("network", "", None)]
    found = check_notebook_cells(NETWORK_CELLS, notebook=NB, exemptions=exemptions)
    assert "BENTO-E110" in {p.code for p in found}


@pytest.mark.parametrize("raw", [
    "network",
    {"rule": "network"},
    ["network"],
    [{"rule": "bogus", "reason": "x"}],
    [{"reason": "x"}],
    [{"rule": "syntax", "reason": "x"}],
    [{"rule": "network", "reason": "x", "cells": "3"}],
    [{"rule": "network", "reason": "x", "cells": [True]}],
    [{"rule": "network", "reason": "x", "cells": [-1]}],
    [{"rule": "network", "reason": 5}],
    [{"rule": "network", "reason": "x", "why": "y"}],
])
def test_parse_exemptions_rejects_malformed(raw: object) -> None:
    exemptions, problems = parse_exemptions(raw, notebook=NB)
    assert exemptions == []
    assert problems and {(p.code, p.notebook, p.cell) for p in problems} == {("BENTO-E112", NB, None)}
    assert SPEC in problems[0].message


def test_parse_exemptions_of_nothing() -> None:
    assert parse_exemptions(None, notebook=NB) == ([], [])
    assert parse_exemptions([], notebook=NB) == ([], [])


def test_every_code_is_documented() -> None:
    sources = [case[0] for case in SIDE_EFFECTS.values()] + ["x = (", "eval(c)", "open(p, 'w')", "__import__(n)"]
    produced = {p.code for source in sources for p in problems_of(source)}
    assert produced <= set(ELIGIBILITY_CODES)
    assert all(code.startswith("BENTO-E1") for code in ELIGIBILITY_CODES)
