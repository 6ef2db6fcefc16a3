"""Attacks on the kernel sandbox's limits, each through a real kernel in the real sandbox.

Every limit is attacked from a notebook; where a probe could be broken (and so "pass" by not
attacking), the same probe runs without the sandbox first and must succeed there.
"""

import os
import time
from pathlib import Path

import nbformat.v4 as v4
import pytest

from dagster_bento.errors import (
    DagsterBentoCellError,
    DagsterBentoKernelDiedError,
    DagsterBentoRunError,
    DagsterBentoSandboxUnavailableError,
)
from dagster_bento.execution import sandbox
from dagster_bento.execution.sandbox import SandboxConfig, execute_notebook

pytestmark = pytest.mark.kernel
MIB = 1024 * 1024


def _nb(*sources: str):
    return v4.new_notebook(cells=[v4.new_code_cell(s) for s in sources])


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


def _config(**kw) -> SandboxConfig:
    kw.setdefault("timeout_s", 60)
    kw.setdefault("startup_timeout_s", 30)
    return SandboxConfig(backend="bwrap", **kw)


def _modes() -> list[str]:
    """The ways this host can enforce memory and tasks: always rlimits; a cgroup where it offers one."""
    return ["cgroup", "rlimit"] if sandbox.find_cgroup_host() is not None else ["rlimit"]


# A cell that writes `total` MB in 4 MB pieces to `path` (or holds them in shared anonymous memory),
# printing how far it got, so a test can tell "stopped at the limit" from "never started".
_FILL = """
import mmap, os
total, piece = {total}, 4 * 1024 * 1024
done = 0
try:
    if {path!r} == "mmap":
        m = mmap.mmap(-1, total * 1024 * 1024)  # MAP_SHARED | MAP_ANONYMOUS: shared memory
        for off in range(0, len(m), 4096):
            m[off] = 1
            if off % piece == 0:
                done = off // (1024 * 1024)
        done = total
    else:
        with open({path!r}, "wb") as f:
            for _ in range(total // 4):
                f.write(b"x" * piece)
                f.flush()
                done += 4
finally:
    print("WROTE", done, flush=True)
"""


@pytest.mark.parametrize("mode", _modes())
@pytest.mark.parametrize("where", ["/dev/shm/fill", "mmap", "/tmp/fill"])
def test_memory_limit_covers_shared_memory_and_tmpfs(run_dir: Path, mode: str, where: str) -> None:
    """memory_limit_mb 800 while /dev/shm, /tmp or shared memory take 1.5 GB: stopped within the limit.

    Before: /dev/shm was bwrap's unbounded /dev tmpfs and neither it, /tmp (1 GB on its own) nor a
    shared mapping counted against the memory rlimit (a 512 MB limit let 3 GB through).
    Mutations caught: no cgroup memory limit (cgroup mode), /tmp and /dev/shm not carved out of the
    limit or shared anonymous mmap not refused by seccomp (rlimit mode), no --size on /dev/shm."""
    config = _config(memory_limit_mb=800, resource_limits=mode, tmp_size_mb=4096, shm_size_mb=4096)
    nb = _nb("print('start')", _FILL.format(total=1536, path=where))
    try:
        out = execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="fill.ipynb")
    except DagsterBentoRunError as e:
        text = _stdout(e.executed_nb.cells[1])  # type: ignore[attr-defined]
        if isinstance(e, DagsterBentoKernelDiedError):
            assert "memory limit of 800 MB" in str(e)
        else:
            assert isinstance(e, DagsterBentoCellError)
            assert e.ename in ("OSError", "MemoryError") or "No space left" in (e.evalue or ""), str(e)
    else:
        text = _stdout(out.cells[1])
    written = int(text.split()[-1]) if "WROTE" in text else 0
    assert written < 800, f"{where}: {written} MB held under a memory limit of 800 MB ({mode})"


def test_dev_shm_is_private_and_sized(run_dir: Path) -> None:
    """/dev/shm is its own tmpfs of shm_size_mb (not the host's, not bwrap's unbounded /dev)."""
    nb = _nb("import os\nst = os.statvfs('/dev/shm')\nprint(st.f_blocks * st.f_frsize)")
    out = execute_notebook(nb, run_dir=run_dir, config=_config(shm_size_mb=16, resource_limits="cgroup")
                           if sandbox.find_cgroup_host() else _config(shm_size_mb=16), notebook_label="shm.ipynb")
    assert int(_stdout(out.cells[0])) == 16 * MIB


_FORK = """
import os, time
pids, error = [], None
try:
    for _ in range({n}):
        pid = os.fork()
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        pids.append(pid)
except OSError as e:
    error = type(e).__name__
print("FORKED", len(pids), error, flush=True)
for pid in pids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("mode", _modes())
def test_number_of_tasks_is_bounded(run_dir: Path, mode: str) -> None:
    """A fork loop stops at max_processes (threads count too: the kernel itself has about a dozen).

    Mutation caught: no pids.max in the kernel's cgroup (cgroup mode), no RLIMIT_NPROC (rlimit mode,
    as a user other than root: RLIMIT_NPROC never binds uid 0, see the README)."""
    config = _config(max_processes=48, resource_limits=mode)
    if mode == "rlimit" and os.geteuid() == 0:
        # RLIMIT_NPROC does not bind uid 0 (README: as root only a cgroup bounds the tasks), so as root
        # this checks the limit is set on the kernel's command line; as another user the fork loop runs.
        assert "--nproc=48" in sandbox._limit_prefix(config)
        return
    out = execute_notebook(_nb(_FORK.format(n=100)), run_dir=run_dir, config=config, notebook_label="fork.ipynb")
    forked, error = _stdout(out.cells[0]).split()[1:3]
    assert int(forked) < 48 and error == "BlockingIOError", _stdout(out.cells[0])


# Probes of what the seccomp filter and --disable-userns refuse: each prints "<name> ok" if the call
# worked, or "<name> <errno>" if it failed. Run once in the sandbox, once without it (the control).
_SYSCALL_PROBES = r"""
import ctypes, errno, mmap, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"io_uring_setup": 425, "clone3": 435, "add_key": 248, "keyctl": 250, "process_vm_readv": 310,
      "personality": 135, "unshare": 272, "memfd_create": 319, "userfaultfd": 323}

def call(name, *args):
    r = libc.syscall(ctypes.c_long(NR[name]), *args)
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]

def report(name, result):
    print(name, result, flush=True)

params = (ctypes.c_ubyte * 120)()
report("io_uring_setup", call("io_uring_setup", ctypes.c_uint(1), params))
report("add_key", call("add_key", b"user", b"bento-probe", b"secret", ctypes.c_size_t(6),
                       ctypes.c_int(-2)))  # KEY_SPEC_PROCESS_KEYRING
buf = ctypes.create_string_buffer(8)
src = ctypes.create_string_buffer(b"12345678")
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
local, remote = iovec(ctypes.addressof(buf), 8), iovec(ctypes.addressof(src), 8)
report("process_vm_readv", call("process_vm_readv", ctypes.c_int(os.getpid()), ctypes.byref(local),
                                ctypes.c_ulong(1), ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0)))
report("personality_no_aslr", call("personality", ctypes.c_ulong(0x0040000)))
libc.syscall(ctypes.c_long(NR["personality"]), ctypes.c_ulong(0))
report("userfaultfd", call("userfaultfd", ctypes.c_int(1)))  # UFFD_USER_MODE_ONLY
def in_child(name, *args):
    # the call in a forked child (unshare(CLONE_NEWUSER) needs a single-threaded process)
    pid = os.fork()
    if pid == 0:
        r = libc.syscall(ctypes.c_long(NR[name]), *args)
        os._exit(0 if r >= 0 else ctypes.get_errno())
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return "ok" if code == 0 else errno.errorcode[code]

report("unshare_user", in_child("unshare", ctypes.c_int(0x10000000)))
# clone3 with a size it refuses (EINVAL), so that no child is ever made: the filter answers ENOSYS
# before the call is looked at (libc then uses clone, whose flags the filter sees)
report("clone3", call("clone3", None, ctypes.c_size_t(0)))
for name, family, kind in (("socket_packet", 17, socket.SOCK_RAW), ("socket_vsock", 40, socket.SOCK_STREAM)):
    try:
        socket.socket(family, kind).close()
        report(name, "ok")
    except OSError as e:
        report(name, errno.errorcode.get(e.errno, str(e.errno)))
"""

# what the sandbox answers (seccomp: EPERM, ENOSYS for clone3, EAFNOSUPPORT for socket families)
_EXPECTED = {
    "io_uring_setup": "EPERM",
    "add_key": "EPERM",
    "process_vm_readv": "EPERM",
    "personality_no_aslr": "EPERM",
    "userfaultfd": "EPERM",
    "unshare_user": "EPERM",  # seccomp answers first; without it, --disable-userns gives ENOSPC
    "clone3": "ENOSYS",  # without the filter: EINVAL
    "socket_packet": "EAFNOSUPPORT",  # without the filter: EPERM (no CAP_NET_RAW)
    "socket_vsock": "EAFNOSUPPORT",
}


def _results(text: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.strip().splitlines())


def test_seccomp_filter_refuses_what_a_notebook_has_no_use_for(run_dir: Path, tmp_path: Path) -> None:
    """The filter refuses each listed call with its errno; the same probes work without the sandbox.

    Mutations caught: no --seccomp or no filter file (every probe then works or fails with another
    errno), a call taken off the list."""
    control_dir = tmp_path / "control"
    control_dir.mkdir()
    control = _results(_stdout(execute_notebook(
        _nb(_SYSCALL_PROBES), run_dir=control_dir, config=SandboxConfig(backend="none", timeout_s=60),
        notebook_label="control.ipynb").cells[0]))
    out = execute_notebook(_nb(_SYSCALL_PROBES), run_dir=run_dir, config=_config(), notebook_label="sc.ipynb")
    results = _results(_stdout(out.cells[0]))
    for name, expected in _EXPECTED.items():
        assert results.get(name) == expected, f"{name}: {results.get(name)} in the sandbox\n{results}"
        # the probe is able to see the call work (or fail for a reason that is not the filter's)
        assert control.get(name) != expected, f"{name}: {control.get(name)} unsandboxed"
    if os.geteuid() == 0:  # these need no privilege except unshare(CLONE_NEWUSER) under some sysctls
        assert control["unshare_user"] == "ok"


def test_nested_user_namespaces_are_refused_without_the_filter_too(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--disable-userns on its own (the seccomp filter replaced by one that allows everything): the
    notebook still cannot create a user namespace. Mutation caught: no --disable-userns (then "ok")."""
    import pyseccomp

    def allow_all(*, count_shared_memory: bool) -> bytes:
        import tempfile

        with tempfile.TemporaryFile() as f:
            pyseccomp.SyscallFilter(pyseccomp.ALLOW).export_bpf(f)
            f.seek(0)
            return f.read()

    monkeypatch.setattr(sandbox, "seccomp_filter", allow_all)
    out = execute_notebook(_nb(_SYSCALL_PROBES), run_dir=run_dir, config=_config(), notebook_label="ns.ipynb")
    results = _results(_stdout(out.cells[0]))
    assert results["io_uring_setup"] != "EPERM" or results["add_key"] != "EPERM"  # the filter is really off
    assert results["unshare_user"] == "ENOSPC", results  # user.max_user_namespaces is 0 in the sandbox


@pytest.mark.parametrize("mode", _modes())
def test_low_memory_limit_fails_at_once_or_works(run_dir: Path, mode: str) -> None:
    """memory_limit_mb 256 made the kernel hang on its first Parquet read until the run's timeout
    (RLIMIT_DATA counts thread stacks and arenas; pyarrow waits for threads that never start).

    With a cgroup the limit counts what is used, and the read works; with rlimits the limit is refused
    before the kernel starts, naming it. Mutation caught: RLIMIT_DATA also set in cgroup mode (the
    read hangs: timeout), or no floor in rlimit mode (the kernel starts and hangs)."""
    import pandas as pd

    pd.DataFrame({"a": list(range(1000))}).to_parquet(run_dir / "x.parquet")
    config = _config(memory_limit_mb=256, resource_limits=mode, timeout_s=25)
    nb = _nb("import pandas as pd", "df = pd.read_parquet('x.parquet', dtype_backend='pyarrow')\nprint(len(df))")
    start = time.monotonic()
    if mode == "rlimit":
        with pytest.raises(DagsterBentoSandboxUnavailableError, match=r"memory limit of 256 MB \(memory_limit_mb\)"):
            execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="low.ipynb")
        assert time.monotonic() - start < 5
        return
    out = execute_notebook(nb, run_dir=run_dir, config=config, notebook_label="low.ipynb")
    assert _stdout(out.cells[1]).strip() == "1000"
    assert time.monotonic() - start < 20


def test_rlimit_floor_message_names_the_limit_and_the_minimum() -> None:
    config = SandboxConfig(backend="bwrap", memory_limit_mb=256, resource_limits="rlimit")
    with pytest.raises(DagsterBentoSandboxUnavailableError) as info:
        sandbox.check_sandbox_available(config)
    floor = sandbox._min_rlimit_memory_mb(config)
    assert "memory limit of 256 MB" in str(info.value) and f"at least {floor}" in str(info.value)
    plan = sandbox.limit_plan(SandboxConfig(backend="bwrap", memory_limit_mb=floor, resource_limits="rlimit"))
    assert plan.data is not None and plan.data >= sandbox.MIN_RLIMIT_DATA_MB * MIB
    # /tmp, /dev/shm and the data rlimit together stay within the memory limit
    assert plan.data + plan.tmp + plan.shm <= floor * MIB  # type: ignore[operator]
    sandbox.check_sandbox_available(SandboxConfig(backend="bwrap", memory_limit_mb=floor, resource_limits="rlimit"))


# --------------------------------------------------------------------------------------------------
# A full disk is reported as what it is
# --------------------------------------------------------------------------------------------------


def test_no_space_hint_names_the_file_system_that_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SandboxConfig(backend="bwrap", tmp_size_mb=64, shm_size_mb=8)
    hint = sandbox._no_space_hint
    assert "/tmp in the sandbox holds at most 64 MB" in hint("[Errno 28] No space left on device: '/tmp/x'",
                                                              config, tmp_path)
    assert "/dev/shm in the sandbox holds at most 8 MB" in hint(
        "[Errno 28] No space left on device: '/dev/shm/x'", config, tmp_path)
    named_run_file = hint(f"[Errno 28] No space left on device: '{tmp_path}/out.parquet'", config, tmp_path)
    assert "disk that holds the run directory" in named_run_file and "/tmp in the sandbox" not in named_run_file
    # a write() without a file name: the run directory's file system decides
    monkeypatch.setattr(sandbox, "_free_bytes", lambda path: 1024)
    full = hint("[Errno 28] No space left on device", config, tmp_path)
    assert "disk that holds the run directory" in full and str(tmp_path) in full and "run_root" in full
    monkeypatch.setattr(sandbox, "_free_bytes", lambda path: 10 * 1024**3)
    tmpfs = hint("[Errno 28] No space left on device", config, tmp_path)
    assert "/tmp or /dev/shm is full" in tmpfs and "/tmp 64 MB" in tmpfs


def test_full_run_disk_is_reported_as_the_run_disk(tmp_path: Path) -> None:
    """A notebook fills the (tiny) file system of its run directory: the error says that disk is
    full, not that the sandbox's /tmp is (the old message sent the user to write to the full disk).
    Mutation caught: the old /tmp-only message for every ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the run directory (test_no_space_hint covers the rest)")
    run = tmp_path / "small"
    run.mkdir()
    import subprocess

    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(run)], check=True)
    try:
        nb = _nb("with open('big.bin', 'wb') as f:\n    for _ in range(16):\n        f.write(b'x' * 4 * 1024 * 1024)")
        with pytest.raises(DagsterBentoCellError) as info:
            execute_notebook(nb, run_dir=run, config=_config(), notebook_label="full.ipynb")
        message = str(info.value)
        assert "No space left on device" in message
        assert f"disk that holds the run directory ({run})" in message
        assert "/tmp in the sandbox" not in message
    finally:
        subprocess.run(["umount", "-l", str(run)], check=False)


# --------------------------------------------------------------------------------------------------
# Through a real run: a spec's low memory limit, and no cgroup left behind
# --------------------------------------------------------------------------------------------------


def test_spec_with_a_low_memory_limit_runs_or_is_refused_at_once(tmp_path: Path) -> None:
    """The reported case: a spec with memory_limit_mb 256 hung reading its first input until the
    run's timeout. Now it either runs (a cgroup counts what the kernel uses) or fails at once naming
    the limit (rlimits)."""
    import shutil
    import tempfile

    from tests import test_execution as te

    root = tempfile.mkdtemp(prefix="bt-", dir="/tmp")
    te._RUN_ROOT.append(root)
    try:
        url = te.seed_duckdb(tmp_path / "w.duckdb")
        project = te.passthrough_project(tmp_path, "raw.types", "analytics.out", memory_limit_mb=256,
                                         timeout_seconds=40)
        start = time.monotonic()
        result = te.run(project, url, raise_on_error=False)
        elapsed = time.monotonic() - start
        if sandbox.find_cgroup_host() is not None:
            assert result.success
            assert te.query(url, "SELECT count(*) FROM analytics.out") == [(3,)]
        else:
            assert not result.success
            failure = next(e for e in result.all_events if e.is_failure)
            assert "memory limit of 256 MB (memory_limit_mb)" in str(failure.event_specific_data.error.message)
        assert elapsed < 30
    finally:
        te._RUN_ROOT.remove(root)
        shutil.rmtree(root, ignore_errors=True)


def test_kernel_cgroups_are_removed_after_the_run(run_dir: Path) -> None:
    host = sandbox.find_cgroup_host()
    if host is None:
        pytest.skip("no cgroup on this host: the kernel's limits are rlimits")
    parents = sandbox._cgroup_dirs(host)
    before = {p: {n for n in os.listdir(p) if n.startswith("bento-")} for p in parents}
    nb = _nb("import os; print(os.getpid())")
    execute_notebook(nb, run_dir=run_dir, config=_config(memory_limit_mb=512), notebook_label="cg.ipynb")
    deadline = time.monotonic() + 10  # removed once the kernel's last process is gone
    while True:
        after = {p: {n for n in os.listdir(p) if n.startswith("bento-")} for p in parents}
        if all(after[p] <= before[p] for p in parents) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for p in parents:
        assert after[p] <= before[p], f"left behind in {p}: {after[p] - before[p]}"
