"""Attacks on the kernel pool (issue 10, item 7), with real pool processes (`dagster-bento kernel-pool`)
and real bwrap kernels:

- a pool that crashes leaves its kernels' directories (a leased run's fetched inputs included): the
  next pool start (or run, or `dagster-bento sweep`) deletes them, but never one a live run still uses;
- the programs a kernel's command line finds on ``PATH`` (``env``, ``bwrap``, ``prlimit``) are part of the
  exact-match key: a pool started with another ``PATH`` (a ``bwrap`` that runs the kernel unsandboxed)
  lends no kernel to a run with the normal ``PATH``;
- a first SIGTERM waits only for runs holding a kernel, not for every open connection;
- data a client sends after ``release`` is not buffered.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dagster_bento.execution import pool as pool_mod
from dagster_bento.execution import workdirs
from dagster_bento.execution.pool import KernelPoolServer, lease_kernel, pool_key, wait_until_ready
from dagster_bento.execution.sandbox import SandboxConfig, execute_notebook
from dagster_bento.resources import BentoResource
from tests.test_execution import clean_run_dirs, passthrough_project, query, run, seed_duckdb  # noqa: F401
from tests.test_sandbox import _nb, _stdout

BIN = Path(sys.executable).parent

# A `bwrap` that is no sandbox: it drops every option and runs the command in the host's namespaces.
FAKE_BWRAP = textwrap.dedent("""\
    #!/bin/sh
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
    shift
    exec "$@"
""")


def _config(project: Path) -> SandboxConfig:
    import dataclasses

    base = BentoResource(project_dir=str(project), warehouse_url="").sandbox_config()
    return dataclasses.replace(base, timeout_s=60.0)


def _start(project: Path, sock: Path, root: Path, *extra: str, path: str | None = None) -> subprocess.Popen:
    """A pool whose run root is ``root`` (its TMPDIR), started with ``path`` as its PATH."""
    env = {**os.environ, "TMPDIR": str(root)}
    if path is not None:
        env["PATH"] = path
    return subprocess.Popen([str(BIN / "dagster-bento"), "kernel-pool", str(project), "--socket", str(sock),
                             "--preload", "", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate(timeout=30)[0]


@pytest.fixture
def place() -> Iterator[tuple[Path, Path, Path]]:
    """(project, socket, run root): short paths (AF_UNIX paths are limited), all private."""
    base = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    (base / "p").mkdir()
    (base / "s").mkdir(mode=0o700)
    (base / "r").mkdir(mode=0o700)
    try:
        yield base / "p", base / "s" / "pool.sock", base / "r"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# --------------------------------------------------------------------------------------------------
# A crashed pool's directories are swept; a live run's never
# --------------------------------------------------------------------------------------------------


@pytest.mark.kernel
def test_a_crashed_pools_kernel_directories_are_swept_but_not_under_a_live_run(place) -> None:
    project, sock, root = place
    config = _config(project)
    proc = _start(project, sock, root, "--size", "2")
    lease = None
    try:
        wait_until_ready(sock, count=2, timeout_s=90)
        lease, reason = lease_kernel(sock, config, label="crash.ipynb")
        assert lease is not None, reason
        leased = lease.run_dir.parent
        (lease.run_dir / "inputs" / "fetched.parquet").write_text("the HR table, fetched")
        ready = [root / n for n in _entries(root) if root / n != leased]
        assert len(ready) == 1 and ready[0].name.startswith("bento-pool-")

        proc.kill()  # the pool crashes (SIGKILL, the OOM killer): no cleanup runs
        proc.wait(timeout=30)
        assert leased.is_dir() and ready[0].is_dir()  # what it leaves behind

        # the run that leased a kernel still lives and still reads its inputs: a sweep now deletes only
        # the directory nobody holds (mutation caught: a lease that does not hold its directory)
        assert workdirs.sweep(root) == [ready[0].name]
        assert (lease.run_dir / "inputs" / "fetched.parquet").read_text() == "the HR table, fetched"
        lease.close()  # the run ends (the pool is gone: nothing deletes the directory)
        lease = None
        assert leased.is_dir()

        # the next pool start sweeps it (mutation caught: no sweep when the pool starts)
        proc = _start(project, sock, root)
        wait_until_ready(sock, timeout_s=90)
        assert not leased.exists(), "a new kernel pool left a crashed pool's kernel directory (and its data)"
        [live] = _entries(root)  # its own kernel's directory, live
        assert live.startswith("bento-pool-") and workdirs.sweep(root) == []
        assert (root / live).stat().st_mode & 0o777 == 0o700
    finally:
        if lease is not None:
            lease.close()
        print(_stop(proc))
    assert _entries(root) == []  # a stopped pool leaves nothing


# --------------------------------------------------------------------------------------------------
# The programs on PATH are part of the exact-match key
# --------------------------------------------------------------------------------------------------


def _fake_bin(where: Path) -> Path:
    fake = where / "fakebin"
    fake.mkdir()
    (fake / "bwrap").write_text(FAKE_BWRAP)
    (fake / "bwrap").chmod(0o755)
    return fake


@pytest.mark.kernel
def test_a_pool_started_with_another_PATH_lends_no_kernel_to_a_run(place, tmp_path: Path, monkeypatch,
                                                                   clean_run_dirs) -> None:  # noqa: F811
    project, sock, root = place
    fake = _fake_bin(tmp_path)
    bad_path = f"{fake}:{os.environ['PATH']}"
    config = _config(project)
    proc = _start(project, sock, root, path=bad_path)
    try:
        wait_until_ready(sock, timeout_s=90)
        host_netns = os.stat("/proc/self/ns/net").st_ino

        # the attack is real: a kernel of this pool runs in the host's network namespace (shown by a client
        # with the pool's own PATH, which computes the same key)
        with monkeypatch.context() as m:
            m.setenv("PATH", bad_path)
            lease, reason = lease_kernel(sock, config, label="same-path.ipynb")
        assert lease is not None, reason
        with lease:
            out = execute_notebook(_nb("import os; print(os.stat('/proc/self/ns/net').st_ino)"),
                                   run_dir=lease.run_dir, config=config, notebook_label="netns.ipynb", lease=lease)
        assert _stdout(out.cells[0]).strip() == str(host_netns)
        wait_until_ready(sock, timeout_s=90)

        # a run with the normal PATH gets no kernel from it
        lease, reason = lease_kernel(sock, config, label="run.ipynb")
        assert lease is None, "a run was lent a kernel started by another bwrap (unsandboxed)"
        assert str(fake / "bwrap") in reason and "/bwrap" in reason.split("this run would run", 1)[1], reason

        # through a real materialization: the run starts its own (sandboxed) kernel and says why
        url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.src AS SELECT 1 AS id")
        (tmp_path / "proj").mkdir()
        proj = passthrough_project(tmp_path / "proj", "raw.src", "mart.copy")
        with dg.instance_for_test() as instance:
            result = run(proj, url, kernel_pool=str(sock), instance=instance)
            assert result.success
            messages = [e.user_message for e in instance.all_logs(result.run_id)]
        assert not any("using a pre-started kernel" in m for m in messages)
        assert any("other programs" in m and "starting a kernel for this run" in m for m in messages), messages
        assert query(url, "SELECT count(*) FROM mart.copy") == [(1,)]
        assert pool_mod.pool_status(sock)["ready"] == 1  # nothing was handed out
    finally:
        print(_stop(proc))


def test_the_key_names_each_programs_identity(tmp_path: Path, monkeypatch) -> None:
    """Same path, another file (a reinstalled or swapped ``bwrap``): another key. Mutation caught: the
    programs' identities left out of `pool_key` (the command line alone names the same path)."""
    fake = _fake_bin(tmp_path)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    config = SandboxConfig()
    first = pool_key(config)
    assert pool_key(config) == first
    (fake / "bwrap.new").write_text(FAKE_BWRAP + "# another build\n")
    (fake / "bwrap.new").chmod(0o755)
    os.replace(fake / "bwrap.new", fake / "bwrap")
    assert pool_key(config) != first
    monkeypatch.setenv("PATH", os.environ["PATH"].split(":", 1)[1])
    assert pool_key(config) not in (first,)


def test_every_program_of_the_command_line_is_found(tmp_path: Path) -> None:
    argv = ["/usr/bin/env", "-i", "A=b", "/usr/bin/bwrap", "--unshare-all", "--bind", "/x", "/x", "--",
            "/usr/bin/prlimit", "--as=1", "--", "/py/python", "-m", "ipykernel_launcher"]
    assert pool_mod.kernel_programs(argv) == ["/usr/bin/env", "/usr/bin/bwrap", "/usr/bin/prlimit", "/py/python"]
    assert pool_mod._argv_problem(argv) == ""
    relative = ["/usr/bin/env", "-i", "bwrap", "--", "python"]
    assert "'bwrap'" in pool_mod._argv_problem(relative)
    # a bare name is resolved through the caller's PATH, as the kernel's launcher would
    assert pool_mod.program_identity("env")[0] == os.path.realpath(shutil.which("env"))
    assert "not found" in pool_mod.program_identity("no-such-program-bento")[0]
    # what this version's command line runs, each an absolute path
    programs = pool_mod.kernel_programs(pool_mod._argv_template(SandboxConfig()))
    assert {"env", "bwrap", "prlimit"} <= {os.path.basename(p) for p in programs}
    assert programs[-1] == "{python}" and all(os.path.isabs(p) for p in programs[:-1])
    # a launcher script run by a shell: what it runs after `--` is followed
    launcher = ["/usr/bin/env", "-i", "/bin/sh", "-c", "exec \"$@\"", "launch", "/x/f", "--", "/usr/bin/bwrap",
                "--", "/py/python"]
    assert pool_mod.kernel_programs(launcher) == ["/usr/bin/env", "/bin/sh", "/usr/bin/bwrap", "/py/python"]


def test_the_pool_refuses_a_run_whose_programs_differ(tmp_path: Path) -> None:
    """Mutation caught: the pool not comparing the programs a run sends with its own."""
    server = KernelPoolServer(SandboxConfig(), socket_path=tmp_path / "pool.sock")
    other = [["/tmp/fakebin/bwrap", 1, 2, 3, 4], *server.programs[1:]]
    kernel, reason = asyncio.run(server._take(server.key, other))
    assert kernel is None and "other programs" in reason and "/tmp/fakebin/bwrap" in reason


def test_a_run_refuses_a_kernel_started_by_other_programs(tmp_path: Path) -> None:
    """Whatever the key says, the run checks what the lent kernel was started with, resolved in its own
    process. Mutation caught: `lease_kernel` not comparing the lent kernel's programs with its own."""
    sock_dir = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    sock_path = sock_dir / "pool.sock"
    work = workdirs.create(tmp_path, "bento-pool-", subdirs=("nb",))
    config = SandboxConfig()
    evil = [["/tmp/fakebin/bwrap", 1, 2, 3, 4], *pool_mod.expected_programs(config)[1:]]
    released: list[str] = []

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as f:
            json.loads(f.readline())
            conn.sendall(json.dumps({"ok": True, "run_dir": str(work.path / "nb"), "state_dir": str(work.path),
                                     "kernel_id": "k", "connection": {}, "programs": evil}).encode() + b"\n")
            for line in f:
                released.append(json.loads(line)["op"])
                conn.sendall(b'{"ok": true}\n')

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(sock_path))
            listener.listen()
            thread = threading.Thread(target=serve, args=(listener,), daemon=True)
            thread.start()
            lease, reason = lease_kernel(sock_path, config)
            thread.join(timeout=10)
        assert lease is None and "other programs" in reason and "/tmp/fakebin/bwrap" in reason
        assert released == ["release"]  # and the kernel was given back to be killed
    finally:
        work.remove()
        shutil.rmtree(sock_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Stopping and buffering
# --------------------------------------------------------------------------------------------------


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.kernel
def test_connections_without_a_kernel_neither_pile_up_data_nor_hold_a_stop(place) -> None:
    project, sock, root = place
    config = _config(project)
    proc = _start(project, sock, root)
    try:
        wait_until_ready(sock, timeout_s=90)

        # data sent after release is not buffered (mutation caught: reading until EOF into memory)
        lease, reason = lease_kernel(sock, config)
        assert lease is not None, reason
        lease.release()
        before = _peak_rss_kb(proc.pid)
        chunk = b"x" * (1 << 20)
        sent = 0
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 256 * len(chunk):
                lease._sock.sendall(chunk)
                sent += len(chunk)
        grown_mb = (_peak_rss_kb(proc.pid) - before) / 1024
        assert grown_mb < 32, f"the pool's memory grew by {grown_mb:.0f} MB for data sent after release"
        lease.close()

        # a first stop does not wait for connections that hold no kernel: one that never says anything,
        # one whose run released its kernel but has not closed yet (mutation caught: waiting for all)
        wait_until_ready(sock, timeout_s=90)
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(str(sock))
        lease, reason = lease_kernel(sock, config)
        assert lease is not None, reason
        lease.release()
        try:
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=8) == 0, "a first SIGTERM waited for connections that hold no kernel"
            assert time.monotonic() - start < 8
            assert idle.recv(1) == b""  # closed by the pool
        finally:
            idle.close()
            lease.close()
    finally:
        print(_stop(proc))
    assert _entries(root) == []
