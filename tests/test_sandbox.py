"""Tests of the sandboxed kernel executor, with real kernels (bwrap) where the machine allows it.

The escape test is the important one: every attempt must be shown to work from the host first
(where that is possible), so a broken probe cannot make the test pass.
"""

import dataclasses
import http.server
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nbformat
import nbformat.v4 as v4
import pytest

from dagster_bento.errors import (
    DagsterBentoCellError,
    DagsterBentoKernelDiedError,
    DagsterBentoRunError,
    DagsterBentoSandboxUnavailableError,
    DagsterBentoTimeoutError,
)
from dagster_bento.execution import sandbox
from dagster_bento.execution.sandbox import (
    SandboxConfig,
    bwrap_args,
    check_sandbox_available,
    docker_container_kwargs,
    execute_notebook,
    kernel_argv,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]
PG_SOCKET = "/var/run/postgresql/.s.PGSQL.5432"
BWRAP = SandboxConfig(backend="bwrap", timeout_s=60, startup_timeout_s=30)


def _nb(*sources: str) -> nbformat.NotebookNode:
    """Code cells from strings; a string starting with '# md' becomes a markdown cell."""
    cells = [v4.new_markdown_cell(s) if s.startswith("# md") else v4.new_code_cell(s) for s in sources]
    return v4.new_notebook(cells=cells)


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


# --------------------------------------------------------------------------------------------------
# Happy path
# --------------------------------------------------------------------------------------------------


@pytest.mark.kernel
def test_trivial_notebook_runs_in_run_dir(run_dir: Path) -> None:
    nb = _nb(
        "import os\nprint(os.getcwd())",
        "# md a markdown cell is skipped",
        "open('out.txt', 'w').write('hi')\n1 + 1",
    )
    out = execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="trivial.ipynb")

    assert _stdout(out.cells[0]).strip() == str(run_dir)
    assert out.cells[2].outputs[0]["output_type"] == "execute_result"
    assert out.cells[2].outputs[0]["data"]["text/plain"] == "2"
    assert (run_dir / "out.txt").read_text() == "hi"
    assert "execution" in out.cells[0].metadata  # nbclient's per-cell timing
    assert nb.cells[0].outputs == []  # the caller's notebook is not modified
    assert not (run_dir / sandbox.STATE_DIR_NAME).exists()  # kernelspec, sockets, log cleaned up


@pytest.mark.kernel
def test_pandas_pyarrow_parquet_round_trip(run_dir: Path) -> None:
    nb = _nb(
        "import pandas as pd, pyarrow.parquet as pq\n"
        "df = pd.DataFrame({'a': range(100_000), 'b': ['x'] * 100_000})\n"
        "df.to_parquet('t.parquet', index=False)\n"
        "back = pd.read_parquet('t.parquet', dtype_backend='pyarrow')\n"
        "print(len(back), back['a'].sum(), pq.read_metadata('t.parquet').num_rows)",
    )
    out = execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="pq.ipynb")
    assert _stdout(out.cells[0]).split() == ["100000", str(sum(range(100_000))), "100000"]
    assert (run_dir / "t.parquet").stat().st_size > 0


# --------------------------------------------------------------------------------------------------
# The escape test
# --------------------------------------------------------------------------------------------------

_PROBE_HELPER = '''
import ctypes, glob, os, socket
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

def setns_net(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)

def http_get(port):
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data.decode(errors="replace")

def probe(name, attempt):
    """attempt() returns normally only if the escape worked; any exception means blocked."""
    try:
        detail = attempt()
    except BaseException as e:
        print(f"BLOCKED {name} {type(e).__name__}: {e}")
    else:
        print(f"ESCAPED {name} {detail!r}")
'''


def _mount_point_stubs(args: list[str]) -> dict[str, set[str]]:
    """For every directory above a mount of the sandbox (bwrap ``args``), the names it may show: the
    next path components toward the mounts. Directories that are themselves mounts are not listed."""
    targets = []
    for i, a in enumerate(args):
        if a in ("--bind", "--ro-bind", "--symlink"):
            targets.append(args[i + 2])
        elif a in ("--tmpfs", "--dev", "--proc"):
            targets.append(args[i + 1])
    stubs: dict[str, set[str]] = {}
    for target in targets:
        parts = Path(target).parts
        for depth in range(1, len(parts)):
            parent = str(Path(*parts[:depth]))
            stubs.setdefault(parent, set()).add(parts[depth])
    for target in targets:  # a mount shows its own content, not stand-ins
        stubs.pop(target, None)
    stubs.pop("/", None)  # the root's entries are the system directories and /etc, /tmp...: all mounts
    return stubs


def _escape_probes(p: dict[str, object]) -> dict[str, str]:
    """name -> cell source. Each cell tries one escape and prints BLOCKED/ESCAPED."""

    def body(name: str, code: str) -> str:
        return f"def _attempt():\n{code}\nprobe({name!r}, _attempt)"

    if "stubs" not in p:  # the stand-ins of BWRAP's mounts (callers with other binds pass their own)
        fake_run = Path("/bento-run")
        p = {**p, "stubs": _mount_point_stubs(bwrap_args(BWRAP, fake_run, fake_run / sandbox.STATE_DIR_NAME))}

    return {
        "tcp_host_loopback_http": body(
            "tcp_host_loopback_http",
            f"    r = http_get({p['port']})\n    assert {p['token']!r} in r, 'a different server'\n    return r[:60]",
        ),
        "tcp_host_postgres": body(
            "tcp_host_postgres",
            "    socket.create_connection(('127.0.0.1', 5432), timeout=3).close()\n    return 'connected'",
        ),
        "tcp_outside": body(
            "tcp_outside",
            "    socket.create_connection(('192.0.2.1', 80), timeout=3).close()\n    return 'connected'",
        ),
        "dns": body("dns", "    return socket.getaddrinfo('pypi.org', 443)[:1]"),
        "unix_postgres": body(
            "unix_postgres",
            f"    s = socket.socket(socket.AF_UNIX)\n    s.connect({PG_SOCKET!r})\n    s.close()\n    return 'connected'",
        ),
        "env_secret": body(
            "env_secret",
            f"    hits = [k for k, v in os.environ.items() if k == 'BENTO_TEST_SECRET' or {p['secret']!r} in v]\n"
            "    assert hits, 'not in os.environ'\n    return hits",
        ),
        "proc_environ_secret": body(
            "proc_environ_secret",
            "    hits, n = [], 0\n"
            "    for f in glob.glob('/proc/[0-9]*/environ'):\n"
            "        try:\n            data = open(f, 'rb').read()\n        except OSError:\n            continue\n"
            f"        n += 1\n        if {p['secret']!r}.encode() in data:\n            hits.append(f)\n"
            "    assert hits, f'not in any of {n} readable /proc/*/environ'\n    return hits",
        ),
        "setns_pid1": body(
            "setns_pid1",
            f"    setns_net('/proc/1/ns/net')\n    return http_get({p['port']})[:60]",
        ),
        "setns_host_ancestor": body(
            "setns_host_ancestor",
            f"    setns_net('/proc/{p['host_pid']}/ns/net')\n    return http_get({p['port']})[:60]",
        ),
        "same_netns_as_host": body(
            "same_netns_as_host",
            f"    ino = os.stat('/proc/self/ns/net').st_ino\n    assert ino == {p['host_netns']}, f'own netns {{ino}}'\n    return ino",
        ),
        "write_project_dir": body(
            "write_project_dir",
            # if the checkout lives under /tmp, bwrap makes an empty stand-in for it on the private tmpfs
            # (the .venv mount point): a write there is not a write to the host's project directory
            f"    open({p['project_escape']!r}, 'w').write('escaped')\n"
            f"    assert os.path.exists({p['pyproject']!r}), 'only a private stand-in of the directory'\n"
            "    return 'written'",
        ),
        "write_host_dir_outside_run_dir": body(
            "write_host_dir_outside_run_dir",
            f"    open({p['outside_escape']!r}, 'w').write('escaped')\n    return 'written'",
        ),
        "read_project_file": body("read_project_file", f"    return open({p['pyproject']!r}).read()[:40]"),
        "read_warehouse_file": body("read_warehouse_file", f"    return open({p['warehouse']!r}, 'rb').read(16)"),
        # A directory on the way to a bound path (the checkout holding .venv, the home holding the clone
        # or ~/.pyenv) exists in the sandbox only as an empty stand-in with the next path components
        # toward the mounts; any other name in it is the host's and an escape.
        "list_project_dir": body(
            "list_project_dir",
            f"    names = sorted(n for n in set(os.listdir({p['project']!r})) - {p['stubs'].get(p['project'], set())!r}"
            " if not n.startswith('escape-'))\n"
            "    assert names, 'only the stand-ins of mount points'\n    return names",
        ),
        "read_etc_shadow": body("read_etc_shadow", "    return open('/etc/shadow').read()[:20]"),
        "list_root_home": body(
            "list_root_home",
            f"    names = sorted(set(os.listdir('/root')) - {p['stubs'].get('/root', set())!r})\n"
            "    assert names, 'only the stand-ins of mount points'\n    return names",
        ),
        "host_names_beside_mount_points": body(
            "host_names_beside_mount_points",
            f"    stubs = {p['stubs']!r}\n"
            "    def listing(d):\n"
            "        try:\n            return set(os.listdir(d))\n        except OSError:\n            return set()\n"
            "    extra = {d: sorted(listing(d) - names) for d, names in stubs.items()}\n"
            "    extra = {d: [n for n in names if not n.startswith(('escape-', 'bento-escape-'))] for d, names in extra.items()}\n"
            "    extra = {d: names for d, names in extra.items() if names}\n"
            "    assert extra, 'only the stand-ins of mount points'\n    return extra",
        ),
    }


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    token = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = self.token.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host_http_server() -> Iterator[tuple[int, str]]:
    token = f"bento-host-{uuid.uuid4().hex}"
    handler = type("Handler", (_TokenHandler,), {"token": token})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], token
    finally:
        server.shutdown()
        server.server_close()


def _host_http_get(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data.decode()


@pytest.mark.kernel
@pytest.mark.postgres
def test_sandbox_blocks_escapes(
    run_dir: Path, tmp_path: Path, host_http_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, token = host_http_server
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("BENTO_TEST_SECRET", secret)
    outside = tmp_path / "outside"
    outside.mkdir()
    suffix = uuid.uuid4().hex[:8]
    warehouse = PROJECT_DIR / f".bento-sandbox-test-{suffix}.duckdb"
    params: dict[str, object] = {
        "port": port,
        "token": token,
        "secret": secret,
        "host_pid": os.getpid(),
        "host_netns": os.stat("/proc/self/ns/net").st_ino,
        "project": str(PROJECT_DIR),
        "pyproject": str(PROJECT_DIR / "pyproject.toml"),
        "warehouse": str(warehouse),
        "project_escape": str(PROJECT_DIR / f"escape-{suffix}.txt"),
        "outside_escape": str(outside / "escape.txt"),
    }
    # A read-only bind under the home directory, as when the clone and its .venv live in ~/src: the
    # sandbox then has stand-ins for the directories on the way, which are not an escape.
    home_bound = Path.home() / f".bento-sbx-{suffix}" / "src" / "venv"
    home_bound.mkdir(parents=True)
    config = dataclasses.replace(BWRAP, extra_ro_binds=(str(home_bound),))
    params["stubs"] = _mount_point_stubs(bwrap_args(config, run_dir, run_dir / sandbox.STATE_DIR_NAME))
    assert str(Path.home()) in params["stubs"]  # type: ignore[operator]
    probes = _escape_probes(params)
    # A process started with the secret in its environment, like a Dagster worker holding
    # credentials (a later os.environ change is not visible in /proc/<pid>/environ).
    holder = subprocess.Popen(["sleep", "120"], env={"BENTO_TEST_SECRET": secret})

    # Every attempt must work from the host, so a broken probe cannot pass as "blocked".
    assert token in _host_http_get(port)
    socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
    assert Path(PG_SOCKET).is_socket()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(PG_SOCKET)
    assert (PROJECT_DIR / "pyproject.toml").read_text()
    import duckdb

    try:
        duckdb.connect(str(warehouse)).close()
        assert warehouse.read_bytes()[:16]
        host_ns: dict[str, object] = {}
        exec(_PROBE_HELPER, host_ns)
        if os.geteuid() == 0:  # the setns() probe code works where it is allowed (a no-op here)
            host_ns["setns_net"]("/proc/self/ns/net")  # type: ignore[operator]
        nb = _nb(
            _PROBE_HELPER,
            *probes.values(),
            "open('/tmp/bento-escape-%s', 'w').write('x'); print('WROTE private /tmp')" % suffix,
        )
        out = execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="escape.ipynb")
        text = "".join(_stdout(c) for c in out.cells)
        print(text)
        assert not Path(f"/tmp/bento-escape-{suffix}").exists()
        assert not (PROJECT_DIR / f"escape-{suffix}.txt").exists()
        assert not (outside / "escape.txt").exists()

        # Control: the same probes without a sandbox do escape, so "BLOCKED" above means something.
        # (No outside TCP / DNS here: from the host they would leave the machine or hang.)
        control_probes = {k: v for k, v in probes.items() if k not in ("tcp_outside", "dns")}
        control_dir = tmp_path / "control"
        control_dir.mkdir()
        control = execute_notebook(
            _nb(_PROBE_HELPER, *control_probes.values()),
            run_dir=control_dir,
            config=SandboxConfig(backend="none", timeout_s=60),
            notebook_label="control.ipynb",
        )
        control_text = "".join(_stdout(c) for c in control.cells)
    finally:
        holder.kill()
        holder.wait()
        shutil.rmtree(Path.home() / f".bento-sbx-{suffix}", ignore_errors=True)
        warehouse.unlink(missing_ok=True)
        Path(f"{warehouse}.wal").unlink(missing_ok=True)
        (PROJECT_DIR / f"escape-{suffix}.txt").unlink(missing_ok=True)

    assert "ESCAPED" not in text
    for name in probes:
        assert f"BLOCKED {name} " in text, f"probe {name} printed nothing:\n{text}"
    assert not re.search(r"BLOCKED \S+ (NameError|SyntaxError|TypeError|AttributeError|ImportError)", text)
    assert "WROTE private /tmp" in text

    # env_secret stays blocked unsandboxed (the kernel env is always minimal); /proc/1/ns/net of the
    # real host may be unopenable even for root. Every other probe must be able to report an escape.
    must_escape = set(control_probes) - {"env_secret", "setns_pid1"}
    if os.geteuid() != 0:
        must_escape -= {"setns_host_ancestor", "read_etc_shadow", "list_root_home"}
    for name in sorted(must_escape):
        assert f"ESCAPED {name} " in control_text, f"probe {name} cannot detect an escape:\n{control_text}"
    assert "BLOCKED env_secret " in control_text


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


@pytest.mark.kernel
def test_cell_error_carries_cell_and_executed_notebook(run_dir: Path) -> None:
    nb = _nb("print('first')", "# md notes", "raise ValueError('boom 42')", "print('never')")
    with pytest.raises(DagsterBentoCellError) as info:
        execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="err.ipynb")
    e = info.value
    assert (e.cell, e.ename, e.evalue, e.notebook) == (2, "ValueError", "boom 42", "err.ipynb")
    assert "err.ipynb" in str(e) and "cell 2" in str(e) and "boom 42" in str(e)
    assert any("ValueError" in line for line in e.traceback)
    assert e.executed_notebook is None
    executed = e.executed_nb  # type: ignore[attr-defined]
    assert _stdout(executed.cells[0]) == "first\n"
    assert executed.cells[2].outputs[0]["output_type"] == "error"
    assert executed.cells[3].outputs == []


@pytest.mark.kernel
def test_kernel_death_is_reported_quickly(run_dir: Path) -> None:
    nb = _nb("print('before')", "import os; os._exit(1)", "print('after')")
    start = time.monotonic()
    with pytest.raises(DagsterBentoKernelDiedError) as info:
        execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="die.ipynb")
    assert time.monotonic() - start < 15
    e = info.value
    assert e.cell == 1 and "die.ipynb" in str(e) and "cell 1" in str(e)
    assert "exit status 1" in str(e)
    assert _stdout(e.executed_nb.cells[0]) == "before\n"  # type: ignore[attr-defined]


@pytest.mark.kernel
def test_whole_run_timeout(run_dir: Path) -> None:
    nb = _nb("print('ok')", "import time; time.sleep(30)")
    config = SandboxConfig(backend="bwrap", timeout_s=3)
    start = time.monotonic()
    with pytest.raises(DagsterBentoTimeoutError) as info:
        execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="slow.ipynb")
    assert time.monotonic() - start < 10
    e = info.value
    assert e.cell == 1 and "cell 1" in str(e) and "3 s" in str(e) and "slow.ipynb" in str(e)
    assert _stdout(e.executed_nb.cells[0]) == "ok\n"  # type: ignore[attr-defined]


@pytest.mark.kernel
def test_cell_timeout(run_dir: Path) -> None:
    nb = _nb("import time; time.sleep(30)")
    config = SandboxConfig(backend="bwrap", timeout_s=60, cell_timeout_s=1)
    start = time.monotonic()
    with pytest.raises(DagsterBentoTimeoutError) as info:
        execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="slowcell.ipynb")
    assert time.monotonic() - start < 10
    assert info.value.cell == 0 and "cell_timeout_s" in str(info.value) and "1 s" in str(info.value)


@pytest.mark.kernel
def test_memory_limit(run_dir: Path) -> None:
    nb = _nb("print('start')", "x = bytearray(2 * 1024**3)\nx[::4096] = b'1' * len(x[::4096])")
    config = SandboxConfig(backend="bwrap", timeout_s=60, memory_limit_mb=600)
    with pytest.raises(DagsterBentoRunError) as info:
        execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="mem.ipynb")
    e = info.value
    assert isinstance(e, (DagsterBentoCellError, DagsterBentoKernelDiedError))
    assert e.cell == 1
    assert "memory" in str(e).lower() and "600 MB" in str(e)


@pytest.mark.kernel
def test_kernel_that_cannot_start_fails_with_its_output(run_dir: Path) -> None:
    config = SandboxConfig(backend="bwrap", timeout_s=60, memory_limit_mb=20)
    if sandbox.limit_plan(config).cgroup is None:  # rlimits: refused before anything starts
        with pytest.raises(DagsterBentoSandboxUnavailableError, match=r"memory limit of 20 MB \(memory_limit_mb\)"):
            execute_notebook(_nb("print(1)"), run_dir=run_dir, config=config, notebook_label="tiny.ipynb")
    else:
        with pytest.raises(DagsterBentoKernelDiedError) as info:
            execute_notebook(_nb("print(1)"), run_dir=run_dir, config=config, notebook_label="tiny.ipynb")
        e = info.value
        assert e.cell is None and "during startup" in str(e) and "memory limit of 20 MB" in str(e)
    # a kernel that fails for a reason of its own: its stderr is quoted (4 tasks: no room for its threads)
    tasks = SandboxConfig(backend="bwrap", timeout_s=60, max_processes=4)
    if sandbox.limit_plan(tasks).cgroup is None and os.geteuid() == 0:
        return  # RLIMIT_NPROC does not bind uid 0: nothing limits the tasks here (README)
    with pytest.raises(DagsterBentoKernelDiedError) as info:
        execute_notebook(_nb("print(1)"), run_dir=run_dir, config=tasks, notebook_label="tasks.ipynb")
    assert info.value.cell is None and "during startup" in str(info.value)
    assert "Resource temporarily unavailable" in str(info.value)


@pytest.mark.kernel
def test_works_when_called_from_a_running_event_loop(run_dir: Path) -> None:
    import asyncio

    async def caller() -> nbformat.NotebookNode:
        return execute_notebook(_nb("print('in loop')"), run_dir=run_dir, config=BWRAP, notebook_label="l")

    out = asyncio.run(caller())
    assert _stdout(out.cells[0]) == "in loop\n"


@pytest.mark.kernel
def test_interrupt_kills_the_kernel_and_propagates(run_dir: Path) -> None:
    """Dagster stops a run with SIGINT -> an exception in the op's thread. That exception must come
    out of execute_notebook (not be turned into a "kernel died" failure by nbclient's own signal
    handlers) and the kernel must be gone."""
    import psutil

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            execute_notebook(_nb("import time; time.sleep(30)"), run_dir=run_dir, config=BWRAP, notebook_label="i")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 10
    assert not [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]


# --------------------------------------------------------------------------------------------------
# backend="none"
# --------------------------------------------------------------------------------------------------


@pytest.mark.kernel
def test_none_backend_warns_and_keeps_env_clean(
    run_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENTO_TEST_SECRET", "hunter2-none")
    nb = _nb("import os; print(os.getcwd()); print('BENTO_TEST_SECRET' in os.environ)")
    log = logging.getLogger("test_sandbox.none")
    with caplog.at_level(logging.WARNING, logger="test_sandbox.none"):
        out = execute_notebook(
            nb, run_dir=run_dir, config=SandboxConfig(backend="none"), notebook_label="n.ipynb", log=log
        )
    assert _stdout(out.cells[0]).split() == [str(run_dir), "False"]
    assert any(r.levelno == logging.WARNING and "sandbox: none" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------
# Unavailable sandbox, argv and docker kwargs (no kernel)
# --------------------------------------------------------------------------------------------------


def test_missing_bwrap_is_unavailable_never_a_fallback(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "BWRAP_EXECUTABLE", "/nonexistent/bwrap")
    with pytest.raises(DagsterBentoSandboxUnavailableError, match="apt-get install bubblewrap"):
        check_sandbox_available(BWRAP)
    with pytest.raises(DagsterBentoSandboxUnavailableError) as info:
        execute_notebook(_nb("print(1)"), run_dir=run_dir, config=BWRAP, notebook_label="x.ipynb")
    assert "x.ipynb" in str(info.value)
    assert list(run_dir.iterdir()) == []  # nothing was started


def test_missing_prlimit_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "PRLIMIT_EXECUTABLE", "/nonexistent/prlimit")
    with pytest.raises(DagsterBentoSandboxUnavailableError, match="memory_limit_mb=None"):
        check_sandbox_available(BWRAP)


def test_bwrap_argv_binds_only_what_the_kernel_needs(run_dir: Path) -> None:
    state = run_dir / sandbox.STATE_DIR_NAME
    argv = kernel_argv(BWRAP, run_dir, state)
    assert argv[0].endswith("/env") and argv[1] == "-i" and argv[3] == "-c"  # env -i sh -c <launcher> ...
    bwrap_at = argv.index("--", 4) + 1
    assert argv[bwrap_at].endswith("bwrap") and argv[bwrap_at - 2] == str(state / "seccomp.bpf")
    args = bwrap_args(BWRAP, run_dir, state)
    assert argv[bwrap_at + 1 : bwrap_at + 1 + len(args)] == args
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--clearenv"):
        assert flag in args
    assert args[args.index("--seccomp") + 1] == "3"
    assert args[args.index("--cap-drop") + 1] == "ALL"
    binds = {(args[i], args[i + 1], args[i + 2]) for i, a in enumerate(args) if a in ("--bind", "--ro-bind")}
    sources = {src for _, src, _ in binds}
    assert "/" not in sources and str(PROJECT_DIR) not in sources
    assert ("--ro-bind", sys.prefix, sys.prefix) in binds
    assert ("--bind", str(run_dir), str(run_dir)) in binds
    # The only writable binds: run_dir, and the state dir in it pinned as its own mount point.
    assert {b for b in binds if b[0] == "--bind"} == {
        ("--bind", str(run_dir), str(run_dir)),
        ("--bind", str(state), str(state)),
    }
    assert args.index(str(state)) > args.index(str(run_dir))  # the state bind goes on top
    assert not any(s.startswith("/etc/") and s.endswith(("shadow", "resolv.conf")) for s in sources)
    tmpfs = [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]
    assert tmpfs == ["/dev/shm", "/tmp"]
    assert args.index("/tmp", args.index("--tmpfs")) < args.index("--bind")  # run_dir (maybe under /tmp) on top
    limit = argv[argv.index("--", bwrap_at) + 1 :]
    plan = sandbox.limit_plan(BWRAP)
    data = [f"--data={plan.data}"] if plan.data is not None else []  # rlimit mode only
    assert limit[0].endswith("prlimit")
    assert limit[1 : 5 + len(data)] == [*data, f"--fsize={51200 * 1024 * 1024}", "--nproc=1024", "--", sys.executable]
    assert argv[-2:] == ["-f", "{connection_file}"]


def test_docker_container_kwargs(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTO_TEST_SECRET", "hunter2-docker")
    config = SandboxConfig(backend="docker", docker_image="bento-kernel:1", memory_limit_mb=2048)
    conn = run_dir / "kernel.json"
    kw = docker_container_kwargs(config, run_dir, conn)
    assert kw["image"] == "bento-kernel:1"
    assert kw["network_mode"] == "none"
    assert kw["cap_drop"] == ["ALL"]
    assert kw["read_only"] is True
    assert kw["mem_limit"] == "2048m" and kw["memswap_limit"] == "2048m"
    assert kw["volumes"] == {str(run_dir): {"bind": str(run_dir), "mode": "rw"}}
    assert kw["working_dir"] == str(run_dir)
    assert str(conn) in kw["command"] and "ipykernel_launcher" in kw["command"]
    assert "BENTO_TEST_SECRET" not in kw["environment"]
    assert set(kw["environment"]) <= {"HOME", "TMPDIR", "PYTHONUNBUFFERED", "MPLBACKEND"}
    assert "privileged" not in kw and "pid_mode" not in kw


def test_docker_unreachable_engine_is_unavailable(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{run_dir}/no-docker.sock")
    config = SandboxConfig(backend="docker", docker_image="x")
    with pytest.raises(DagsterBentoSandboxUnavailableError, match="Docker engine .* not reachable"):
        check_sandbox_available(config)
    with pytest.raises(DagsterBentoSandboxUnavailableError, match="needs docker_image"):
        check_sandbox_available(SandboxConfig(backend="docker"))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="backend"):
        SandboxConfig(backend="chroot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="tmp_size_mb"):
        SandboxConfig(tmp_size_mb=0)
    with pytest.raises(ValueError, match="max_file_mb"):
        SandboxConfig(max_file_mb=-1)
    with pytest.raises(ValueError, match="extra_ro_binds"):
        SandboxConfig(extra_ro_binds=("relative/path",))
    with pytest.raises(ValueError, match="shm_size_mb"):
        SandboxConfig(shm_size_mb=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxConfig(max_processes=0)
    with pytest.raises(ValueError, match="resource_limits"):
        SandboxConfig(resource_limits="ulimit")  # type: ignore[arg-type]


def test_limit_plan_per_mode() -> None:
    """With a cgroup the memory limit is the cgroup's and /tmp, /dev/shm keep their sizes (counted in
    it); with rlimits /tmp and /dev/shm are carved out of the limit and RLIMIT_DATA gets the rest."""
    mib = 1024 * 1024
    config = SandboxConfig(backend="bwrap", memory_limit_mb=4096, tmp_size_mb=1024, shm_size_mb=64)
    cg = sandbox.limit_plan(config, cgroup=sandbox.CgroupHost(1))
    assert (cg.memory, cg.data, cg.tmp, cg.shm, cg.tasks) == (4096 * mib, None, 1024 * mib, 64 * mib, 1024)
    rl = sandbox.limit_plan(config, cgroup=None)
    assert (rl.memory, rl.tmp, rl.shm) == (None, 1024 * mib, 64 * mib) and rl.data == (4096 - 1024 - 64) * mib
    small = sandbox.limit_plan(dataclasses.replace(config, memory_limit_mb=800, tmp_size_mb=None), cgroup=None)
    assert small.tmp == 200 * mib and small.shm == 50 * mib and small.data == 550 * mib
    # rlimit mode refuses shared anonymous memory, SysV shm and memfd (nothing would count them)
    assert sandbox.seccomp_filter(count_shared_memory=False) != sandbox.seccomp_filter(count_shared_memory=True)


def test_launcher_script_creates_and_joins_the_kernels_cgroup() -> None:
    mib = 1024 * 1024
    v1 = sandbox.limit_plan(SandboxConfig(memory_limit_mb=512, max_processes=64), cgroup=sandbox.CgroupHost(1))
    script = sandbox._launcher_script(v1, seccomp=True)
    assert "set -e" in script and f"echo {512 * mib} > \"$m/memory.limit_in_bytes\"" in script
    assert 'echo 64 > "$q/pids.max"' in script and 'echo $$ > "$m/cgroup.procs"' in script
    assert script.rstrip().endswith('exec "$@" 3<"$f"')
    v2 = sandbox.limit_plan(SandboxConfig(memory_limit_mb=512, max_processes=64),
                            cgroup=sandbox.CgroupHost(2, "/sys/fs/cgroup/bento parent"))
    script = sandbox._launcher_script(v2, seccomp=True)
    assert "d='/sys/fs/cgroup/bento parent'/bento-$$" in script
    for line in (f'echo {512 * mib} > "$d/memory.max"', 'echo 64 > "$d/pids.max"', 'echo $$ > "$d/cgroup.procs"'):
        assert line in script
    assert "cgroup" not in sandbox._launcher_script(sandbox.limit_plan(SandboxConfig(), cgroup=None), seccomp=True)
    for plan in (v1, v2):  # the shell accepts both scripts
        check = subprocess.run([sandbox._program("sh"), "-n", "-c", sandbox._launcher_script(plan, seccomp=True)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_missing_extra_bind_is_unavailable() -> None:
    config = SandboxConfig(backend="bwrap", extra_ro_binds=("/nonexistent-bento-bind",))
    with pytest.raises(DagsterBentoSandboxUnavailableError, match="nonexistent-bento-bind"):
        check_sandbox_available(config)


def test_docker_kernel_manager_uses_container_provisioner(run_dir: Path) -> None:
    config = SandboxConfig(backend="docker", docker_image="bento-kernel:1")
    state = sandbox._prepare_state_dir(config, run_dir, "d.ipynb")
    km = sandbox._make_kernel_manager(config, run_dir, state)
    assert isinstance(km.provisioner, sandbox._DockerProvisioner)
    assert km.transport == "ipc" and km.ip.startswith(str(run_dir))
    assert Path(km.connection_file).parent == state
    assert not km.has_kernel



# --------------------------------------------------------------------------------------------------
# The orchestrator never follows what the notebook puts in the run directory
# --------------------------------------------------------------------------------------------------


def _start_environ_entries() -> list[str]:
    """This process's start environment (what /proc/self/environ shows), the distinctive entries."""
    raw = Path("/proc/self/environ").read_bytes().decode(errors="replace")
    entries = [e for e in raw.split("\0") if "=" in e and len(e.split("=", 1)[1]) >= 8]
    assert any(e.startswith("PATH=") for e in entries)
    return entries


@pytest.mark.kernel
def test_kernel_log_symlink_does_not_leak_the_orchestrators_files(run_dir: Path) -> None:
    """The notebook replaces whatever the kernel log was with a symlink to /proc/self/environ and
    dies: the error message must quote the kernel's own stderr, never a file the link points at."""
    nb = _nb(
        "import os, sys\n"
        "# the kernel process's real stderr (ipykernel points fd 2 at a pipe to the frontend)\n"
        "os.write(getattr(sys.stderr, '_original_stdstream_copy', 2), b'KERNEL-STDERR-MARKER\\n')\n"
        "try:\n    os.remove('.bento-kernel/kernel.log')\nexcept FileNotFoundError:\n    pass\n"
        "os.symlink('/proc/self/environ', '.bento-kernel/kernel.log')\n"
        "os._exit(1)",
    )
    start = time.monotonic()
    with pytest.raises(DagsterBentoKernelDiedError) as info:
        execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="leak.ipynb")
    assert time.monotonic() - start < 15
    message = str(info.value)
    leaked = [e.split("=", 1)[0] for e in _start_environ_entries() if e in message]
    assert not leaked, f"the orchestrator's environment is in the error message: {leaked}"
    assert "KERNEL-STDERR-MARKER" in message  # the real kernel stderr is still quoted
    assert not (run_dir / sandbox.STATE_DIR_NAME).exists()


@pytest.mark.kernel
def test_kernel_log_fifo_does_not_hang_the_orchestrator(run_dir: Path) -> None:
    nb = _nb(
        "import os\n"
        "try:\n    os.remove('.bento-kernel/kernel.log')\nexcept FileNotFoundError:\n    pass\n"
        "os.mkfifo('.bento-kernel/kernel.log')\n"
        "os._exit(1)",
    )
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="fifo.ipynb")
        except BaseException as e:
            result.append(e)
        else:
            result.append(None)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        # Unblock the orchestrator (stuck opening the FIFO for reading) so the test process can exit.
        fifo = run_dir / sandbox.STATE_DIR_NAME / "kernel.log"
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(30)
        pytest.fail("the orchestrator hung reading a FIFO the notebook put in the run directory")
    assert time.monotonic() - start < 15
    assert len(result) == 1 and isinstance(result[0], DagsterBentoKernelDiedError), result


@pytest.mark.kernel
def test_state_dir_cannot_be_swapped_for_a_symlink(run_dir: Path, tmp_path: Path) -> None:
    """jupyter_client's cleanup removes <state>/connection.json and <state>/ipc-N by name; if the
    notebook could replace the state dir with a symlink, the orchestrator would delete those names
    in any directory. Symlinks *inside* the state dir must not be followed by the cleanup either."""
    victim = tmp_path / "victim"
    victim.mkdir()
    names = ["connection.json", *(f"ipc-{i}" for i in range(1, 8)), "keep.txt"]
    for name in names:
        (victim / name).write_text("precious")
    inside = (
        "import os\n"
        f"os.symlink({str(victim)!r}, '.bento-kernel/dir-link')\n"
        f"os.symlink({str(victim / 'keep.txt')!r}, '.bento-kernel/file-link')\n"
        "os.remove('.bento-kernel/connection.json')\n"
        f"os.symlink({str(victim / 'connection.json')!r}, '.bento-kernel/connection.json')\n"
        "print('LINKED')"
    )
    swap = (
        "import os\n"
        "try:\n"
        "    os.rename('.bento-kernel', 'moved-state')\n"
        f"    os.symlink({str(victim)!r}, '.bento-kernel')\n"
        "    print('SWAPPED')\n"
        "except OSError as e:\n"
        "    print('BLOCKED', e)"
    )
    out = execute_notebook(_nb(inside, swap), run_dir=run_dir, config=BWRAP, notebook_label="swap.ipynb")
    assert _stdout(out.cells[0]) == "LINKED\n"
    assert sorted(p.name for p in victim.iterdir()) == sorted(names)
    assert all((victim / n).read_text() == "precious" for n in names)
    assert _stdout(out.cells[1]).startswith("BLOCKED"), _stdout(out.cells[1])  # EBUSY: a mount point
    assert not os.path.lexists(run_dir / sandbox.STATE_DIR_NAME)


@pytest.mark.kernel
def test_leftover_state_dir_symlink_is_not_written_through(run_dir: Path, tmp_path: Path) -> None:
    """A run dir reused after a notebook left `.bento-kernel -> elsewhere`: the next run must not
    create its kernelspec and identity files (or anything else) in `elsewhere`."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (run_dir / sandbox.STATE_DIR_NAME).symlink_to(victim)
    out = execute_notebook(_nb("print('ran')"), run_dir=run_dir, config=BWRAP, notebook_label="left.ipynb")
    assert _stdout(out.cells[0]) == "ran\n"
    assert [p.name for p in victim.iterdir()] == ["keep.txt"]
    assert not os.path.lexists(run_dir / sandbox.STATE_DIR_NAME)


def test_rmtree_does_not_follow_symlinks() -> None:
    """The state dir cleanup relies on this (fd-based rmtree on Linux)."""
    import shutil

    assert shutil.rmtree.avoids_symlink_attacks


# --------------------------------------------------------------------------------------------------
# No secrets from /etc; resource limits
# --------------------------------------------------------------------------------------------------

_SECRET_ETC = ("/etc/ssl", "/etc/ca-certificates", "/etc/ssh", "/etc/shadow", "/etc/gshadow", "/etc/docker",
               "/etc/sudoers", "/etc/sudoers.d", "/etc/security", "/etc/hosts", "/etc/resolv.conf")


def test_bwrap_argv_binds_no_tls_material_or_secrets_from_etc(run_dir: Path) -> None:
    state = run_dir / sandbox.STATE_DIR_NAME
    args = bwrap_args(BWRAP, run_dir, state)
    binds = [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a in ("--bind", "--ro-bind")]
    etc_sources = [src for src, _ in binds if src == "/etc" or src.startswith("/etc/")]
    assert etc_sources, "expected some /etc entries"
    for src in etc_sources:
        assert not sandbox._is_under(src, _SECRET_ETC), src
        assert not src.startswith("/etc/postgresql"), src
        assert src != "/etc"
    # passwd, group and hosts are generated, never the host's
    generated = {dest: src for src, dest in binds if dest in ("/etc/passwd", "/etc/group", "/etc/hosts")}
    assert generated == {f"/etc/{n}": str(state / n) for n in ("passwd", "group", "hosts")}


@pytest.mark.kernel
def test_etc_ssl_private_is_not_readable_in_the_sandbox(run_dir: Path) -> None:
    if not Path("/etc/ssl/private").is_dir():
        pytest.skip("no /etc/ssl/private on this machine")
    probe = (
        "import os, socket, ssl\n"
        "for p in ('/etc/ssl/private', '/etc/ssl/openssl.cnf', '/etc/ssl'):\n"
        "    try:\n"
        "        os.listdir(p) if os.path.isdir(p) else open(p).read()\n"
        "        print('READ', p)\n"
        "    except OSError as e:\n"
        "        print('BLOCKED', p, type(e).__name__)\n"
        "print('HOSTS', repr(open('/etc/hosts').read()))\n"
        "print('LOCALHOST', socket.gethostbyname('localhost'))\n"
        "ssl.create_default_context(); print('SSL-IMPORT-OK')"
    )
    out = execute_notebook(_nb(probe), run_dir=run_dir, config=BWRAP, notebook_label="etc.ipynb")
    text = _stdout(out.cells[0])
    assert "READ" not in text, text
    assert "BLOCKED /etc/ssl/private FileNotFoundError" in text
    assert "LOCALHOST 127.0.0.1" in text and "SSL-IMPORT-OK" in text
    hosts = re.search(r"HOSTS (.*)", text).group(1)  # type: ignore[union-attr]
    assert "bento-sandbox" in hosts
    for line in Path("/etc/hosts").read_text().splitlines():  # no host names from the host
        for name in line.split("#")[0].split()[1:]:
            if name not in ("localhost", "ip6-localhost", "ip6-loopback"):
                assert name not in hosts, name
    if os.geteuid() == 0:  # control: root (as the kernel is, without capabilities) can list it
        os.listdir("/etc/ssl/private")


def test_resource_limits_in_argv_and_docker_kwargs(run_dir: Path) -> None:
    state = run_dir / sandbox.STATE_DIR_NAME
    config = SandboxConfig(backend="bwrap", tmp_size_mb=64, max_file_mb=10, memory_limit_mb=None)
    args = bwrap_args(config, run_dir, state)
    i = args.index("/tmp", args.index("--tmpfs"))
    assert args[i - 3 : i + 1] == ["--size", str(64 * 1024 * 1024), "--tmpfs", "/tmp"]
    i = args.index("/dev/shm", args.index("--tmpfs"))
    assert args[i - 3 : i + 1] == ["--size", str(64 * 1024 * 1024), "--tmpfs", "/dev/shm"]
    argv = kernel_argv(config, run_dir, state)
    limit = argv[argv.index(sandbox._program("prlimit")) :]
    assert limit[1:4] == [f"--fsize={10 * 1024 * 1024}", "--nproc=1024", "--"]

    unlimited = SandboxConfig(backend="bwrap", tmp_size_mb=None, max_file_mb=None, memory_limit_mb=None,
                              shm_size_mb=None, max_processes=None)
    assert "--size" not in bwrap_args(unlimited, run_dir, state)
    argv = kernel_argv(unlimited, run_dir, state)
    assert not any(a.endswith("prlimit") for a in argv)
    assert argv[argv.index("--", argv.index(sandbox._program("bwrap"))) + 1] == sandbox.kernel_python()

    docker = SandboxConfig(backend="docker", docker_image="img", tmp_size_mb=64, max_file_mb=10)
    kw = docker_container_kwargs(docker, run_dir, state / "connection.json")
    assert kw["tmpfs"]["/tmp"].endswith(",size=64m")
    assert kw["ulimits"] == [{"Name": "fsize", "Soft": 10 * 1024 * 1024, "Hard": 10 * 1024 * 1024}]
    assert kw["volumes"][str(state)] == {"bind": str(state), "mode": "rw"}  # pinned, as with bwrap
    assert kw["pids_limit"] == 1024 and kw["shm_size"] == "64m"  # the container's cgroups count both
    bounded = docker_container_kwargs(SandboxConfig(backend="docker", docker_image="img", max_processes=64,
                                                    shm_size_mb=8), run_dir, state / "connection.json")
    assert bounded["pids_limit"] == 64 and bounded["shm_size"] == "8m"


def test_every_program_of_the_kernel_command_line_is_an_absolute_resolved_path(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The kernel pool matches kernels by their command line, and bwrap runs its command inside the
    sandbox: no program may be a bare name or a relative path there."""
    (tmp_path / "bin").mkdir()
    for name in ("env", "sh", "bwrap", "prlimit"):  # symlinks on PATH, as a packager may install them
        (tmp_path / "bin" / name).symlink_to(shutil.which(name))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sandbox, "PRLIMIT_EXECUTABLE", "bin/prlimit")  # relative to the cwd
    state = run_dir / sandbox.STATE_DIR_NAME
    argv = kernel_argv(BWRAP, run_dir, state)
    programs = [argv[0], argv[2]]  # env, sh
    bwrap_at = argv.index("--", 4) + 1
    programs.append(argv[bwrap_at])
    after_bwrap = argv.index("--", bwrap_at) + 1
    programs += [argv[after_bwrap], argv[argv.index("--", after_bwrap) + 1]]  # prlimit, python
    assert [os.path.basename(p) for p in programs[:4]] == ["env", "dash" if "dash" in programs[1] else
                                                           os.path.basename(programs[1]), "bwrap", "prlimit"]
    for program in programs:
        assert os.path.isabs(program) and os.path.normpath(program) == program, program
        assert os.path.realpath(os.path.dirname(program)) == os.path.dirname(program), program
    for program in programs[:4]:
        assert os.path.realpath(program) == program  # not the symlinks in tmp_path/bin


@pytest.mark.kernel
def test_interpreter_started_by_a_relative_path_runs_the_sandbox(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`../.venv/bin/python -m pytest` from tests/: sys.executable has a `..` through a directory the
    sandbox does not have, and bwrap failed with `execvp ...: No such file or directory`."""
    relative = os.path.join(PROJECT_DIR, "tests", "..", os.path.relpath(sys.executable, PROJECT_DIR))
    assert os.path.samefile(relative, sys.executable)
    monkeypatch.setattr(sys, "executable", relative)
    assert sandbox.kernel_python() == os.path.join(os.path.realpath(os.path.dirname(relative)),
                                                   os.path.basename(relative))
    out = execute_notebook(_nb("import sys; print(sys.prefix)"), run_dir=run_dir, config=BWRAP,
                           notebook_label="rel.ipynb")
    assert _stdout(out.cells[0]).strip() == sys.prefix


def test_missing_prlimit_is_unavailable_for_the_file_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "PRLIMIT_EXECUTABLE", "/nonexistent/prlimit")
    with pytest.raises(DagsterBentoSandboxUnavailableError, match="max_file_mb=None"):
        check_sandbox_available(SandboxConfig(backend="bwrap", memory_limit_mb=None))


@pytest.mark.kernel
def test_file_size_limit(run_dir: Path) -> None:
    nb = _nb(
        "open('small.bin', 'wb').write(b'x' * (512 * 1024)); print('small ok')",
        "with open('big.bin', 'wb') as f:\n    f.write(b'x' * (3 * 1024 * 1024))",
    )
    config = SandboxConfig(backend="bwrap", timeout_s=60, max_file_mb=1)
    with pytest.raises(DagsterBentoCellError) as info:
        execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="big.ipynb")
    e = info.value
    assert e.cell == 1 and e.ename == "OSError" and "File too large" in (e.evalue or "")
    assert "1 MB" in str(e) and "max_file_mb" in str(e)
    assert _stdout(e.executed_nb.cells[0]) == "small ok\n"  # type: ignore[attr-defined]
    assert (run_dir / "big.bin").stat().st_size <= 1024 * 1024


@pytest.mark.kernel
def test_tmp_size_limit(run_dir: Path) -> None:
    nb = _nb(
        "import os\nst = os.statvfs('/tmp')\nprint(st.f_blocks * st.f_frsize)",
        "with open('/tmp/big.bin', 'wb') as f:\n    f.write(b'x' * (16 * 1024 * 1024))",
    )
    config = SandboxConfig(backend="bwrap", timeout_s=60, tmp_size_mb=8)
    with pytest.raises(DagsterBentoCellError) as info:
        execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="tmp.ipynb")
    e = info.value
    assert int(_stdout(e.executed_nb.cells[0])) == 8 * 1024 * 1024  # type: ignore[attr-defined]
    assert e.cell == 1 and "No space left on device" in (e.evalue or "")
    assert "8 MB" in str(e) and "tmp_size_mb" in str(e)


def test_python_roots_are_bound_over_the_private_tmp(tmp_path):
    """A checkout (with its .venv) under /tmp must stay visible: binds after --tmpfs /tmp win."""
    import sys as _sys

    from dagster_bento.execution import sandbox as sb

    args = sb.bwrap_args(sb.SandboxConfig(), tmp_path, tmp_path / ".bento-kernel")
    tmpfs = args.index("/tmp", args.index("--tmpfs"))
    venv = [i for i, a in enumerate(args) if a == "--ro-bind" and args[i + 1] == _sys.prefix]
    assert venv and venv[0] > tmpfs
