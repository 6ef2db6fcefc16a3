"""Private run directories that a crash cannot leave behind for good.

A run (and the kernel pool, for each kernel it starts) keeps fetched data in a directory under the run
root. A process killed hard (SIGKILL, the OOM killer, a crashed pool) never runs its cleanup, so the
data would stay on disk. Each such directory therefore carries an owner marker, ``.bento-owner``: a file
its owner holds a shared ``flock`` on for the directory's whole life. The kernel frees a ``flock`` when
the last descriptor of the holder closes, whatever way the process ends, so a directory is stale exactly
when its marker's lock can be taken exclusively. `sweep` deletes those, and only those:

- only direct children of the run root whose name starts with ``bento-``, that are real directories
  (never a symbolic link) owned by this user and hold a marker that is a regular file of this user;
- never a live one: the exclusive lock is taken without waiting (a live owner's shared lock refuses it),
  and the directory is deleted while it is held;
- without following anything inside (`shutil.rmtree` on a directory descriptor, which never follows
  symbolic links), so what a notebook left in ``nb/`` cannot redirect the deletion.

A second process that uses a directory it does not own (a run leasing a kernel of the pool) takes a shared
lock on the same marker (`hold`): the directory then stays until both are gone.

Directories are created mode 0700 (`create`); the marker is created under a temporary name, locked, then
renamed into place, so a sweeper never sees a marker that is not yet held.
"""

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

PREFIX = "bento-"
MARKER = ".bento-owner"
_MARKER_TMP = ".bento-owner.tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class WorkDirError(RuntimeError):
    """A run directory cannot be created or held."""


def run_root(configured: str | os.PathLike[str] | None) -> Path:
    """The parent of run directories: the configured one (created 0700 if missing) or the temp dir."""
    if not configured:
        return Path(tempfile.gettempdir())
    root = Path(configured)
    if not root.is_dir():
        old = os.umask(0o077)
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
    return root


class WorkDir:
    """A directory under the run root that this process owns until `remove` (or until it dies)."""

    def __init__(self, path: Path, lock_fd: int):
        self.path = path
        self._lock_fd: int | None = lock_fd
        # a WorkDir dropped without `remove` keeps no lock open forever (and its directory is then
        # swept by the next sweep); normally `remove` runs first
        self._finalizer = weakref.finalize(self, _close_fd, lock_fd)

    @property
    def live(self) -> bool:
        return self._lock_fd is not None

    def remove(self) -> None:
        """Delete the directory (never following what is inside), then give up the lock."""
        if self._lock_fd is None:
            return
        try:
            remove_tree(self.path)
        finally:
            self._lock_fd = None
            self._finalizer()

    def release(self) -> None:
        """Give up the lock without deleting (the directory becomes stale: the next sweep deletes it)."""
        self._lock_fd = None
        self._finalizer()

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"WorkDir({str(self.path)!r}, live={self.live})"


def create(root: str | os.PathLike[str], prefix: str = PREFIX, *, subdirs: Sequence[str] = ()) -> WorkDir:
    """A new mode-0700 directory ``<root>/<prefix>XXXXXXXX`` with its owner marker held, and ``subdirs``."""
    if not prefix.startswith(PREFIX) or "/" in prefix:
        raise ValueError(f"a run directory's prefix must start with {PREFIX!r} and name no directory: {prefix!r}")
    root = Path(root)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root)).resolve()  # mkdtemp: 0700, O_EXCL
    try:
        os.chmod(path, 0o700)
        lock_fd = _create_marker(path)
    except BaseException:
        remove_tree(path)
        raise
    work = WorkDir(path, lock_fd)
    try:
        for sub in subdirs:
            (path / sub).mkdir(mode=0o700)
    except BaseException:
        work.remove()
        raise
    return work


def _create_marker(path: Path) -> int:
    dir_fd = os.open(path, _DIR_FLAGS)
    try:
        tmp = _MARKER_TMP + secrets.token_hex(8)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.write(fd, f"{os.getpid()}\n".encode())  # for a person looking; the lock is what counts
            os.rename(tmp, MARKER, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dir_fd)


def hold(path: str | os.PathLike[str]) -> int:
    """Take a shared lock on the marker of the existing run directory ``path`` (one another process of this
    user created and still holds): it is then not swept while this process lives. Returns the descriptor to
    close when done; raises `WorkDirError` if ``path`` is not such a directory."""
    try:
        dir_fd = os.open(path, _DIR_FLAGS)
    except OSError as err:
        raise WorkDirError(f"{path} is not a directory ({err.strerror})") from err
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise WorkDirError(f"{path} must belong to uid {os.getuid()} with mode 0700")
        try:
            fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as err:
            raise WorkDirError(f"{path} has no owner marker {MARKER} ({err.strerror})") from err
        try:
            mst = os.fstat(fd)
            if not stat.S_ISREG(mst.st_mode) or mst.st_uid != os.getuid():
                raise WorkDirError(f"{path}/{MARKER} is not a regular file of this user")
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as err:
                raise WorkDirError(f"{path} is being swept") from err
            if not _still_there(dir_fd, fd):
                raise WorkDirError(f"{path} was swept")
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(dir_fd)


def is_stale(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run directory of ours whose owners are all gone (a test and `status` helper)."""
    parent, name = os.path.split(os.path.abspath(path))
    root_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _sweep_one(root_fd, name, delete=False)
    finally:
        os.close(root_fd)


def sweep(root: str | os.PathLike[str] | None) -> list[str]:
    """Delete the stale run directories directly under ``root`` (see the module docstring); returns their
    names. Never raises for what it finds: a directory it cannot judge or delete is left alone."""
    root = run_root(root) if root is None else Path(root)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    removed: list[str] = []
    try:
        with os.scandir(root_fd) as entries:
            names = [e.name for e in entries if e.name.startswith(PREFIX)]
        for name in names:
            with contextlib.suppress(OSError):
                if _sweep_one(root_fd, name, delete=True):
                    removed.append(name)
    finally:
        os.close(root_fd)
    return removed


def sweep_in_background(root: str | os.PathLike[str] | None) -> threading.Thread:
    """`sweep` on a daemon thread: deleting a big stale directory must not delay the run that found it."""
    thread = threading.Thread(target=sweep, args=(root,), name="bento-sweep", daemon=True)
    thread.start()
    return thread


def _sweep_one(root_fd: int, name: str, *, delete: bool) -> bool:
    try:
        st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False  # a symbolic link, a file, another user's directory: not ours
    try:
        dir_fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    except OSError:
        return False
    try:
        if _ident(os.fstat(dir_fd)) != _ident(st):
            return False
        try:
            fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return False  # no marker: not a run directory of ours (or one still being created)
        try:
            mst = os.fstat(fd)
            if not stat.S_ISREG(mst.st_mode) or mst.st_uid != os.getuid():
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # an owner is alive
            # the lock is ours: the marker must still be this directory's, and the directory still at name
            if not _still_there(dir_fd, fd):
                return False
            if _ident(os.stat(name, dir_fd=root_fd, follow_symlinks=False)) != _ident(st):
                return False
            if delete:
                # fd-based and never following symbolic links (shutil.rmtree.avoids_symlink_attacks)
                shutil.rmtree(name, dir_fd=root_fd, ignore_errors=True)
            return True
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def _still_there(dir_fd: int, marker_fd: int) -> bool:
    try:
        return _ident(os.stat(MARKER, dir_fd=dir_fd, follow_symlinks=False)) == _ident(os.fstat(marker_fd))
    except OSError:
        return False


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete ``path`` without following symbolic links in it; a symbolic link at ``path`` is unlinked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
