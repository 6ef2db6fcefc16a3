"""Tests of the sandboxed kernel executor, with real kernels (bwrap) where the machine allows it.

The escape test is the important one: every attempt must be shown to work from the host first
(where that is possible), so a broken probe cannot make the test pass.
"""

import http.server
import logging
import os
import re
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


def _escape_probes(p: dict[str, object]) -> dict[str, str]:
    """name -> cell source. Each cell tries one escape and prints BLOCKED/ESCAPED."""

    def body(name: str, code: str) -> str:
        return f"def _attempt():\n{code}\nprobe({name!r}, _attempt)"

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
            f"    open({p['project_escape']!r}, 'w').write('escaped')\n    return 'written'",
        ),
        "write_host_dir_outside_run_dir": body(
            "write_host_dir_outside_run_dir",
            f"    open({p['outside_escape']!r}, 'w').write('escaped')\n    return 'written'",
        ),
        "read_project_file": body("read_project_file", f"    return open({p['pyproject']!r}).read()[:40]"),
        "read_warehouse_file": body("read_warehouse_file", f"    return open({p['warehouse']!r}, 'rb').read(16)"),
        "list_project_dir": body(
            "list_project_dir",
            f"    names = sorted(set(os.listdir({p['project']!r})) - {{'.venv'}})\n    assert names, 'only .venv'\n    return names",
        ),
        "read_etc_shadow": body("read_etc_shadow", "    return open('/etc/shadow').read()[:20]"),
        "list_root_home": body(
            "list_root_home",
            "    names = sorted(set(os.listdir('/root')) - {'.pyenv'})\n    assert names, 'only .pyenv'\n    return names",
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
        out = execute_notebook(nb, run_dir=run_dir, config=BWRAP, notebook_label="escape.ipynb")
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
    with pytest.raises(DagsterBentoKernelDiedError) as info:
        execute_notebook(_nb("print(1)"), run_dir=run_dir, config=config, notebook_label="tiny.ipynb")
    e = info.value
    assert e.cell is None and "during startup" in str(e) and "20 MB" in str(e)
    assert "MemoryError" in str(e)  # the kernel's own stderr is quoted


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
    assert argv[0].endswith("/env") and argv[1] == "-i" and argv[2].endswith("bwrap")
    args = bwrap_args(BWRAP, run_dir, state)
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--clearenv"):
        assert flag in args
    assert args[args.index("--cap-drop") + 1] == "ALL"
    binds = {(args[i], args[i + 1], args[i + 2]) for i, a in enumerate(args) if a in ("--bind", "--ro-bind")}
    sources = {src for _, src, _ in binds}
    assert "/" not in sources and str(PROJECT_DIR) not in sources
    assert ("--ro-bind", sys.prefix, sys.prefix) in binds
    assert ("--bind", str(run_dir), str(run_dir)) in binds
    assert [b for b in binds if b[0] == "--bind"] == [("--bind", str(run_dir), str(run_dir))]
    assert not any(s.startswith("/etc/") and s.endswith(("shadow", "resolv.conf")) for s in sources)
    assert args[args.index("--tmpfs") + 1] == "/tmp"
    assert args.index("--tmpfs") < args.index("--bind")  # run_dir (maybe under /tmp) goes on top
    limit = argv[argv.index("--") + 1 :]
    assert limit[0].endswith("prlimit") and limit[1] == f"--data={4096 * 1024 * 1024}"
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
    with pytest.raises(ValueError, match="extra_ro_binds"):
        SandboxConfig(extra_ro_binds=("relative/path",))


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
