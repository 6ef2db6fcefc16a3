"""Attacks on run directories: a run killed hard (SIGKILL, the OOM killer) never runs its cleanup, so its
fetched data stays on disk unless a sweep finds it. The sweep must delete exactly the stale directories of
ours: never a live one, never another user's, never through a symbolic link.

The owners here are real processes killed with SIGKILL, as the OOM killer would."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from dagster_bento.execution import workdirs

# the module alone (not the package, which imports Dagster): an owner process starts in ~50 ms
CREATE = textwrap.dedent(f"""
    import importlib.util, os, signal, sys
    spec = importlib.util.spec_from_file_location("workdirs", {workdirs.__file__!r})
    workdirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workdirs)
    work = workdirs.create(sys.argv[1], "bento-run-", subdirs=("nb", "nb/inputs"))
    (work.path / "nb" / "inputs" / "fetched.parquet").write_text("salaries of everyone")
    print(work.path, flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # alive until the test closes stdin
""")


def _owner(root: Path, mode: str = "kill") -> tuple[Path, subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-c", CREATE, str(root), mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    path = Path(proc.stdout.readline().strip())
    assert path.is_dir(), path
    if mode == "kill":
        assert proc.wait(timeout=30) == -signal.SIGKILL
    return path, proc


def test_a_run_killed_hard_leaves_a_directory_the_next_sweep_deletes(tmp_path: Path) -> None:
    killed, _ = _owner(tmp_path)
    assert (killed / "nb" / "inputs" / "fetched.parquet").exists()  # the data a crash leaves behind
    assert stat.S_IMODE(killed.stat().st_mode) == 0o700
    assert workdirs.is_stale(killed)
    assert workdirs.sweep(tmp_path) == [killed.name]
    assert not killed.exists()


def test_a_live_directory_is_never_swept(tmp_path: Path) -> None:
    """Mutation caught: owners not holding the marker's lock (every directory would look stale)."""
    live, proc = _owner(tmp_path, mode="live")
    mine = workdirs.create(tmp_path, "bento-mine-", subdirs=("nb",))  # held by this very process
    try:
        assert not workdirs.is_stale(live) and not workdirs.is_stale(mine.path)
        assert workdirs.sweep(tmp_path) == []
        assert (live / "nb" / "inputs" / "fetched.parquet").exists() and mine.path.is_dir()
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    # its owner is gone (exited without cleaning up): now it is stale, and only it
    assert workdirs.sweep(tmp_path) == [live.name]
    assert mine.path.is_dir()
    mine.remove()
    assert not mine.path.exists()


def test_a_second_holder_keeps_the_directory_after_its_owner_dies(tmp_path: Path) -> None:
    """A run using a pooled kernel's directory holds it: the pool crashing must not let a sweep delete the
    directory under the run (mutation caught: `hold` taking no lock)."""
    path, proc = _owner(tmp_path, mode="live")
    fd = workdirs.hold(path)
    proc.kill()
    proc.wait(timeout=30)
    assert workdirs.sweep(tmp_path) == [] and path.is_dir()
    os.close(fd)
    assert workdirs.sweep(tmp_path) == [path.name]


def test_created_mode_0700_with_a_marker_under_a_recognisable_prefix(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        work = workdirs.create(tmp_path / "root", "bento-x-", subdirs=("nb", "nb/inputs"))
    finally:
        os.umask(old)
    try:
        assert work.path.name.startswith("bento-x-")
        for path in (work.path, work.path / "nb", work.path / "nb" / "inputs"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        marker = work.path / workdirs.MARKER
        assert stat.S_ISREG(marker.lstat().st_mode) and stat.S_IMODE(marker.stat().st_mode) == 0o600
        assert [p.name for p in work.path.iterdir() if p.name.startswith(".bento-owner")] == [workdirs.MARKER]
    finally:
        work.remove()
    with pytest.raises(ValueError):
        workdirs.create(tmp_path, "tmp-")  # a sweep would never find it


def test_the_sweep_never_touches_what_is_not_ours(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")

    # a stale directory of ours whose notebook left links to the outside in it
    stale, _ = _owner(root)
    os.symlink(outside, stale / "nb" / "link")
    os.symlink(outside / "precious", stale / "nb" / "file-link")
    # a stale directory of ours reached only through a symbolic link with our prefix
    elsewhere, _ = _owner(tmp_path)
    os.symlink(elsewhere, root / "bento-link")
    # our prefix, no marker (another tool's directory, or one still being created)
    (root / "bento-no-marker").mkdir()
    (root / "bento-no-marker" / "data").write_text("x")
    # a marker that is a symbolic link (to a file nobody locks)
    (root / "bento-marker-link").mkdir()
    os.symlink(outside / "precious", root / "bento-marker-link" / workdirs.MARKER)
    # another user's stale directory with a marker
    foreign, _ = _owner(root)
    os.chown(foreign, 65534, 65534)
    # a file with our prefix, and a stale directory without it
    (root / "bento-file").write_text("x")
    other, _ = _owner(root)
    renamed = root / "not-bento"
    other.rename(renamed)

    assert workdirs.sweep(root) == [stale.name]
    assert (outside / "precious").read_text() == "keep me"
    assert elsewhere.is_dir() and os.path.islink(root / "bento-link")
    assert (root / "bento-no-marker" / "data").exists()
    assert (root / "bento-marker-link").is_dir()
    assert foreign.is_dir() and (root / "bento-file").exists() and renamed.is_dir()
    assert workdirs.sweep(tmp_path) == [elsewhere.name]  # in its own root it is found
    shutil.rmtree(foreign)


def test_a_half_created_marker_is_not_a_marker(tmp_path: Path) -> None:
    """The marker is locked before it gets its name: a sweep never sees a marker of a directory that is
    being created as stale (mutation caught: creating the marker under its final name before locking)."""
    path = tmp_path / "bento-half"
    path.mkdir(mode=0o700)
    (path / (workdirs._MARKER_TMP + "abc")).write_text("")
    assert workdirs.sweep(tmp_path) == [] and path.is_dir()
    # and the real thing: at every lock and rename during creation, a sweeper looking would see no
    # stale marker
    seen: list[str] = []
    real_flock, real_rename = workdirs.fcntl.flock, os.rename
    looking = []

    def look() -> None:
        if looking:
            return
        looking.append(1)
        try:
            seen.extend(n for n in os.listdir(tmp_path) if n.startswith("bento-t-") and workdirs.is_stale(tmp_path / n))
        finally:
            looking.clear()

    def flock(fd, op):
        look()
        return real_flock(fd, op)

    def rename(src, dst, **kw):
        look()
        real_rename(src, dst, **kw)
        look()

    workdirs.fcntl.flock, os.rename = flock, rename
    try:
        work = workdirs.create(tmp_path, "bento-t-")
    finally:
        workdirs.fcntl.flock, os.rename = real_flock, real_rename
    assert seen == []
    assert not workdirs.is_stale(work.path)
    work.remove()


def test_sweep_in_background_and_a_missing_root(tmp_path: Path) -> None:
    assert workdirs.sweep(tmp_path / "missing") == []
    killed, _ = _owner(tmp_path)
    thread = workdirs.sweep_in_background(tmp_path)
    thread.join(timeout=30)
    assert not killed.exists()


def test_cli_sweep(tmp_path: Path) -> None:
    """`dagster-bento sweep` (a command an operator or a cron job runs) deletes stale directories."""
    killed, _ = _owner(tmp_path)
    out = subprocess.run([str(Path(sys.executable).parent / "dagster-bento"), "sweep", "--run-root", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not killed.exists()


def test_a_finalized_workdir_releases_its_lock(tmp_path: Path) -> None:
    work = workdirs.create(tmp_path, "bento-gc-")
    path = work.path
    assert not workdirs.is_stale(path)
    del work
    time.sleep(0)
    assert workdirs.is_stale(path)
    assert workdirs.sweep(tmp_path) == [path.name]


RUN_UNTIL_KILLED = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tests.nbfactory import add_notebook, code, sql_cell, write_cell, write_policy
    from tests.test_execution import run, seed_duckdb

    base, root = Path(sys.argv[1]), sys.argv[2]
    url = seed_duckdb(base / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.pay AS SELECT range AS id, "
                                          "'salary ' || range AS secret FROM range(1000)")
    write_policy(base, {"raw.pay": ["ANALYTICS"]})
    add_notebook(base, "slow", [sql_cell("df", "SELECT * FROM raw.pay"), code("import time; time.sleep(120)"),
                                write_cell("df", "mart.pay")])
    run(base, url, kernel_pool="off", run_root=root)
""")


@pytest.mark.kernel
def test_a_run_killed_hard_is_swept_by_the_next_run(tmp_path: Path) -> None:
    """A Dagster run process killed with SIGKILL (the OOM killer) while its notebook runs leaves its fetched
    inputs on disk; the next run deletes them (mutation caught: runs not sweeping at start, or their
    directories carrying no owner marker)."""
    from tests.test_execution import passthrough_project, run, seed_duckdb

    root = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    (tmp_path / "killed").mkdir()
    try:
        proc = subprocess.Popen([sys.executable, "-c", RUN_UNTIL_KILLED, str(tmp_path / "killed"), str(root)],
                                cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not list(root.glob("*/nb/inputs/*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        time.sleep(0.5)  # the fetch has written its file; the notebook sleeps
        proc.kill()
        proc.wait(timeout=30)
        left = sorted(p.name for p in root.iterdir())
        assert left and all(n.startswith("bento-") for n in left)
        assert list(root.glob("*/nb/inputs/*"))  # the fetched data a hard kill leaves behind

        url = seed_duckdb(tmp_path / "wh.duckdb", "CREATE SCHEMA raw; CREATE TABLE raw.src AS SELECT 1 AS id")
        (tmp_path / "next").mkdir()
        project = passthrough_project(tmp_path / "next", "raw.src", "mart.copy")
        assert run(project, url, kernel_pool="off", run_root=str(root)).success
        deadline = time.monotonic() + 10
        while list(root.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(root.iterdir()) == [], "the next run left a killed run's directory (and its data)"
    finally:
        shutil.rmtree(root, ignore_errors=True)
