"""The kernel pool: pre-started sandboxed kernels lent to runs, with real kernels and a real pool process
(``dagster-bento kernel-pool``), through `execute_notebook` and through a Dagster materialization."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dagster_bento.errors import DagsterBentoKernelDiedError, DagsterBentoTimeoutError
from dagster_bento.execution.pool import (
    LocalKernel,
    PoolError,
    check_private_dir,
    default_socket_path,
    lease_kernel,
    pool_status,
    wait_until_ready,
)
from dagster_bento.execution.sandbox import execute_notebook
from dagster_bento.project import load_config
from dagster_bento.resources import BentoResource
from tests.test_execution import clean_run_dirs, passthrough_project, query, run, seed_duckdb  # noqa: F401
from tests.test_sandbox import PROJECT_DIR, _escape_probes, _nb, _PROBE_HELPER, _stdout

BIN = Path(sys.executable).parent
SECRET = f"pool-secret-{uuid.uuid4().hex}"

pytestmark = pytest.mark.kernel


@dataclasses.dataclass
class Pool:
    socket: Path
    process: subprocess.Popen
    project: Path

    def config(self, **changes):
        base = BentoResource(project_dir=str(self.project), warehouse_url="").sandbox_config()
        return dataclasses.replace(base, **{"timeout_s": 60.0, **changes})

    def ready(self) -> dict:
        return wait_until_ready(self.socket, timeout_s=60)


def _start_pool(project: Path, sock: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "dagster-bento"), "kernel-pool", str(project), "--socket", str(sock),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    """One pool process (size 1) for the module. It holds a secret in its environment, like a
    deployment's worker holding credentials: its kernels must not see it."""
    project = Path(tempfile.mkdtemp(prefix="bento-pool-project-"))
    sock_dir = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))  # short: AF_UNIX paths are limited
    sock = sock_dir / "pool.sock"
    proc = _start_pool(project, sock, env={**os.environ, "BENTO_TEST_SECRET": SECRET})
    try:
        # the CLI's own readiness check, as a deployment script would use it
        waited = subprocess.run([str(BIN / "dagster-bento"), "kernel-pool", str(project), "--socket", str(sock),
                                 "--wait-ready", "60"], capture_output=True, text=True, timeout=90)
        assert waited.returncode == 0, waited.stderr + (proc.stdout.read() if proc.poll() is not None else "")
        assert json.loads(waited.stdout)["ready"] == 1
        yield Pool(sock, proc, project)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        print(output)
        assert proc.returncode == 0, output
        assert not sock.exists()  # a stopped pool removes its socket
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)


def _wait_gone(path: Path, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.05)
    return False


def test_pooled_kernel_is_warm_runs_once_and_is_replaced(pool: Pool) -> None:
    served = pool.ready()["served"]
    lease, reason = lease_kernel(pool.socket, pool.config(), label="warm.ipynb")
    assert lease is not None, reason
    run_dir = lease.run_dir
    assert (run_dir / "inputs").is_dir() and (run_dir / "outputs").is_dir()
    with lease:
        nb = _nb("import os, sys\nprint('pandas' in sys.modules, os.getcwd())",
                 "import pandas as pd\npd.DataFrame({'a': [1, 2]}).to_parquet('outputs/t.parquet')")
        out = execute_notebook(nb, run_dir=run_dir, config=pool.config(), notebook_label="warm.ipynb", lease=lease)
        assert _stdout(out.cells[0]).split() == ["True", str(run_dir)]  # pandas was imported ahead
        assert [c.execution_count for c in out.cells] == [1, 2]  # the warm-up left no trace in the count
        assert (run_dir / "outputs" / "t.parquet").stat().st_size > 0  # still there for the orchestrator
        assert lease.poll() is not None  # the kernel was killed at the end of the notebook
        lease.release()
        assert not run_dir.parent.exists(), "the pool did not delete the kernel's directory on release"
        status = pool_status(pool.socket)
        # the replacement waits until the run ends (the upload would compete with it for CPU)
        assert status["leased"] == 1 and status["ready"] == 0 and status["starting"] == 0
    status = pool.ready()  # a replacement was started
    assert status["served"] == served + 1 and status["leased"] == 0


def test_only_matching_sandbox_settings_get_a_pooled_kernel(pool: Pool) -> None:
    pool.ready()
    lease, reason = lease_kernel(pool.socket, pool.config(memory_limit_mb=1234))
    assert lease is None and "sandbox settings differ" in reason and "memory_limit_mb=4096" in reason
    lease, reason = lease_kernel(pool.socket, pool.config(backend="none"))
    assert lease is None and "bwrap" in reason
    assert pool_status(pool.socket)["ready"] == 1  # nothing was handed out


def test_kernel_death_in_a_pooled_kernel(pool: Pool) -> None:
    pool.ready()
    lease, reason = lease_kernel(pool.socket, pool.config())
    assert lease is not None, reason
    with lease, pytest.raises(DagsterBentoKernelDiedError) as info:
        execute_notebook(_nb("print('before')", "import os; os._exit(1)", "print('after')"), run_dir=lease.run_dir,
                         config=pool.config(), notebook_label="die.ipynb", lease=lease)
    e = info.value
    assert e.cell == 1 and "die.ipynb" in str(e) and "exit status 1" in str(e)
    assert _stdout(e.executed_nb.cells[0]) == "before\n"  # type: ignore[attr-defined]


def test_timeout_kills_a_pooled_kernel(pool: Pool) -> None:
    pool.ready()
    lease, reason = lease_kernel(pool.socket, pool.config())
    assert lease is not None, reason
    start = time.monotonic()
    with lease:
        with pytest.raises(DagsterBentoTimeoutError) as info:
            execute_notebook(_nb("import time; time.sleep(60)"), run_dir=lease.run_dir,
                             config=pool.config(timeout_s=2), notebook_label="slow.ipynb", lease=lease)
        assert lease.poll() is not None  # killed, not left sleeping
    assert time.monotonic() - start < 15
    assert "2 s" in str(info.value) and info.value.cell == 0


def test_a_run_process_that_dies_gives_its_kernel_back(pool: Pool) -> None:
    """The lease is the connection: if the run's process dies, the pool kills the kernel and deletes
    its directory."""
    pool.ready()
    code = ("import sys, os\nfrom dagster_bento.execution.pool import lease_kernel\n"
            "from dagster_bento.resources import BentoResource\n"
            f"cfg = BentoResource(project_dir={str(pool.project)!r}, warehouse_url='').sandbox_config()\n"
            f"lease, why = lease_kernel({str(pool.socket)!r}, cfg)\nprint(lease.run_dir, flush=True)\nos._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    run_dir = Path(out.stdout.strip())
    assert _wait_gone(run_dir.parent)
    assert pool.ready()["leased"] == 0


@pytest.mark.postgres
def test_pooled_kernel_blocks_every_escape(pool: Pool, tmp_path: Path) -> None:
    """The escape probes of test_sandbox (each shown there to detect an escape when unsandboxed), run
    in a kernel the pool started: its parent holds a secret in its environment."""
    pool.ready()
    suffix = uuid.uuid4().hex[:8]
    outside = tmp_path / "outside"
    outside.mkdir()
    warehouse = PROJECT_DIR / f".bento-pool-test-{suffix}.duckdb"
    import duckdb

    duckdb.connect(str(warehouse)).close()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probes = _escape_probes({
            "port": port, "token": "t", "secret": SECRET, "host_pid": pool.process.pid,
            "host_netns": os.stat("/proc/self/ns/net").st_ino, "project": str(PROJECT_DIR),
            "pyproject": str(PROJECT_DIR / "pyproject.toml"), "warehouse": str(warehouse),
            "project_escape": str(PROJECT_DIR / f"escape-{suffix}.txt"),
            "outside_escape": str(outside / "escape.txt"),
        })
        lease, reason = lease_kernel(pool.socket, pool.config())
        assert lease is not None, reason
        try:
            with lease:
                out = execute_notebook(_nb(_PROBE_HELPER, *probes.values()), run_dir=lease.run_dir,
                                       config=pool.config(), notebook_label="escape.ipynb", lease=lease)
        finally:
            warehouse.unlink(missing_ok=True)
            (PROJECT_DIR / f"escape-{suffix}.txt").unlink(missing_ok=True)
    text = "".join(_stdout(c) for c in out.cells)
    assert "ESCAPED" not in text, text
    for name in probes:
        assert f"BLOCKED {name} " in text, f"probe {name} printed nothing:\n{text}"
    assert not (outside / "escape.txt").exists()


def test_materialize_uses_the_pool(pool: Pool, tmp_path: Path, clean_run_dirs) -> None:  # noqa: F811
    pool.ready()
    served = pool_status(pool.socket)["served"]
    url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.src AS SELECT range AS id, "
                                             "'n' || range AS name FROM range(1000)")
    (tmp_path / "proj").mkdir()
    project = passthrough_project(tmp_path / "proj", "raw.src", "mart.copy")
    with dg.instance_for_test() as instance:
        result = run(project, url, kernel_pool=str(pool.socket), instance=instance)
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("using a pre-started kernel from the kernel pool" in m for m in messages)
    assert query(url, "SELECT count(*), sum(id) FROM mart.copy") == [(1000, sum(range(1000)))]
    assert pool_status(pool.socket)["served"] == served + 1


def test_materialize_without_a_matching_kernel_starts_its_own(pool: Pool, tmp_path: Path,
                                                              clean_run_dirs) -> None:  # noqa: F811
    pool.ready()
    url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.src AS SELECT 1 AS id")
    (tmp_path / "proj").mkdir()
    project = passthrough_project(tmp_path / "proj", "raw.src", "mart.copy", memory_limit_mb=2048)
    with dg.instance_for_test() as instance:
        result = run(project, url, kernel_pool=str(pool.socket), instance=instance)
        assert result.success
        messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("sandbox settings differ" in m and "starting a kernel for this run" in m for m in messages)
    assert pool_status(pool.socket)["ready"] == 1


def test_pool_socket_directory_must_be_private(tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    try:
        os.chmod(shared, 0o755)
        with pytest.raises(PoolError, match="mode 0700"):
            check_private_dir(shared)
        (shared / "pool.sock").touch()
        lease, reason = lease_kernel(shared / "pool.sock", Pool(shared / "pool.sock", None, tmp_path).config())
        assert lease is None and "mode 0700" in reason
        out = subprocess.run([str(BIN / "dagster-bento"), "kernel-pool", str(tmp_path), "--socket",
                              str(shared / "pool.sock")], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "mode 0700" in out.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_second_pool_on_the_same_socket_is_refused(pool: Pool) -> None:
    out = subprocess.run([str(BIN / "dagster-bento"), "kernel-pool", str(pool.project), "--socket",
                          str(pool.socket)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "already serves" in out.stderr
    assert pool_status(pool.socket)["ok"]  # the first one still serves


def test_local_kernel_is_started_ahead_warm_and_removed(tmp_path: Path) -> None:
    """What a run without a pool uses: a kernel it starts itself before importing the run stack."""
    config = Pool(tmp_path / "x", None, tmp_path).config()
    kernel = LocalKernel(config, run_root=tmp_path, label="early.ipynb")
    work_dir = kernel.work_dir
    assert stat.S_IMODE(work_dir.stat().st_mode) == 0o700 and (kernel.run_dir / "inputs").is_dir()
    with kernel:
        nb = _nb("import sys\nprint('pandas' in sys.modules, sorted(k for k in dir() if not k.startswith('_')))",
                 "x = 1")
        out = execute_notebook(nb, run_dir=kernel.run_dir, config=config, notebook_label="early.ipynb",
                               lease=kernel)
        # pandas imported during start-up, without binding a name or using an execution count
        assert _stdout(out.cells[0]).split(" ", 1)[0] == "True"
        assert "pandas" not in _stdout(out.cells[0]) and "importlib" not in _stdout(out.cells[0])
        assert [c.execution_count for c in out.cells] == [1, 2]
        assert kernel.poll() is not None  # killed at the end of the notebook
    assert not work_dir.exists()


def test_kernel_pool_setting(tmp_path: Path) -> None:
    assert BentoResource(project_dir=str(tmp_path), warehouse_url="").kernel_pool_socket == \
        default_socket_path(tmp_path)
    assert BentoResource(project_dir=str(tmp_path), warehouse_url="", kernel_pool="off").kernel_pool_socket is None
    (tmp_path / "bento.yaml").write_text("kernel_pool: off\n")  # YAML reads `off` as false
    config, problems = load_config(tmp_path)
    assert config.kernel_pool == "off" and not problems
    (tmp_path / "bento.yaml").write_text("kernel_pool: 3\n")
    config, problems = load_config(tmp_path)
    assert config.kernel_pool == "auto" and "kernel_pool must be" in str(problems[0])


def test_no_pool_running_is_quiet_and_falls_back(tmp_path: Path) -> None:
    lease, reason = lease_kernel(tmp_path / "nothing.sock", Pool(tmp_path / "x", None, tmp_path).config())
    assert lease is None and "no kernel pool is running" in reason


def test_stopping_waits_for_runs_holding_a_kernel_then_a_second_stop_kills(tmp_path: Path) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    sock = sock_dir / "pool.sock"
    proc = _start_pool(tmp_path, sock)
    try:
        wait_until_ready(sock, timeout_s=60)
        config = Pool(sock, proc, tmp_path).config()
        lease, reason = lease_kernel(sock, config)
        assert lease is not None, reason
        proc.send_signal(signal.SIGTERM)  # first stop: no new runs, the running one keeps its kernel
        time.sleep(1.0)
        assert proc.poll() is None and lease.poll() is None
        assert lease_kernel(sock, config)[0] is None  # nothing more is lent
        with lease:
            out = execute_notebook(_nb("print(6 * 7)"), run_dir=lease.run_dir, config=config,
                                   notebook_label="late.ipynb", lease=lease)
        assert _stdout(out.cells[0]) == "42\n"
        assert proc.wait(timeout=30) == 0 and not sock.exists()

        proc = _start_pool(tmp_path, sock)
        wait_until_ready(sock, timeout_s=60)
        lease, reason = lease_kernel(sock, config)
        assert lease is not None, reason
        with lease:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)  # second stop: the kernel goes too
            assert proc.wait(timeout=30) == 0
            assert lease.poll() is not None and not lease.run_dir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_socket_visible_in_the_sandbox_or_foreign_run_dir_is_refused(tmp_path: Path) -> None:
    from dagster_bento.execution.pool import _not_ours, check_socket_path

    config = Pool(tmp_path / "x", None, tmp_path).config()
    with pytest.raises(PoolError, match="visible inside the sandbox"):
        check_socket_path(Path(sys.prefix) / "pool.sock", config)
    check_socket_path(tmp_path / "pool.sock", config)  # outside every bound directory: fine
    shared = tmp_path / "shared"
    (shared / "nb").mkdir(parents=True)
    os.chmod(shared, 0o755)
    assert "not private" in _not_ours(shared / "nb")
    assert _not_ours(tmp_path / "missing")
    os.chmod(shared, 0o700)
    assert _not_ours(shared / "nb") == ""
