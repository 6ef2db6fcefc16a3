"""A pool of pre-started, pre-warmed sandboxed kernels, lent to runs over a Unix socket.

Why: every Dagster run is a fresh process, and a cold sandboxed kernel (bwrap + Python + ipykernel)
plus ``import pandas`` costs about a second per run, more than moving a million rows. A long-lived
``dagster-bento kernel-pool`` process starts kernels ahead of time, each in the same sandbox a run
would start itself (`sandbox.kernel_argv`: same namespaces, mounts, limits, empty environment), and
imports the heavy libraries in it. A run asks for one; if the pool has a ready kernel whose sandbox
settings match the run's exactly, the run uses it, otherwise it starts its own kernel as before.
Both ways are sandboxed; the pool only moves *when* the kernel starts.

Each kernel serves exactly one run and is then killed with its directory: a notebook could leave
anything behind in a kernel, so kernels are never reused. The pool starts a replacement when the
run ends (not while the run is still uploading, which on a small machine would compete with it for
CPU).

The lease is the open connection: the run's process asks the pool over it whether the kernel is
alive, to signal it, for the end of its log, and finally to release it. If the run's process dies,
the connection drops and the pool kills the kernel and deletes its directory all the same.

Trust: the socket lives in a directory that must belong to the current user with mode 0700 (checked
on both sides), so another local user can neither serve kernels to our runs nor lease ours. "Matches
exactly" includes the kernel's command line and the identity (real path, inode, size, modification
time) of every program it runs, resolved in each process with its own ``PATH``: a pool started with
another ``PATH`` (another ``bwrap``, ``env``, ``prlimit`` or shell) lends nothing to the runs, and the run
checks the programs of the kernel it is lent again itself.

Kernel directories are `workdirs` directories: the pool holds each one's owner lock for the kernel's life
and the run that leases it holds it too, so a pool that crashes leaves directories that the next pool
start, run or ``dagster-bento sweep`` deletes, but never one a live run still uses. A first stop waits
only for runs holding a kernel; a run sends nothing after ``release`` (anything it sends ends the
connection).
Protocol: one JSON object per line in each direction.
"""

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from dagster_bento.execution import sandbox, workdirs
from dagster_bento.execution.sandbox import SandboxConfig

_LOG = logging.getLogger(__name__)

# What a pre-started kernel imports before any notebook runs (module objects only: no names are
# bound in the notebook's namespace and the execution count stays at 0).
DEFAULT_PRELOAD: tuple[str, ...] = ("pandas", "pyarrow", "pyarrow.parquet")
# Subdirectories of a kernel's run directory, created before the kernel starts (as a run does).
RUN_SUBDIRS: tuple[str, ...] = ("inputs", "outputs")
# How long a run waits for the pool to answer before starting its own kernel.
CONNECT_TIMEOUT_S = 2.0
# How long a run waits for any later answer (is the kernel alive, kill it...) before giving the kernel up.
REQUEST_TIMEOUT_S = 30.0
_ALLOWED_SIGNALS = {int(signal.SIGINT), int(signal.SIGTERM), int(signal.SIGKILL)}
_HEALTH_INTERVAL_S = 5.0
# How often a running pool sweeps its run root for directories left by runs that were killed hard.
_SWEEP_INTERVAL_S = 300.0
# How long a connection may take to send its first request.
_FIRST_REQUEST_TIMEOUT_S = 10.0


class PoolError(RuntimeError):
    """The pool cannot be used (its socket's directory is not private, it cannot start kernels...)."""


# --------------------------------------------------------------------------------------------------
# Where the pool listens
# --------------------------------------------------------------------------------------------------


def default_socket_path(project_dir: str | os.PathLike[str]) -> Path:
    """One pool per project and user: ``$TMPDIR/dagster-bento-<uid>/pool-<hash of the project dir>.sock``."""
    digest = hashlib.sha256(str(Path(project_dir).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dagster-bento-{os.getuid()}" / f"pool-{digest}.sock"


def check_socket_path(path: Path, config: SandboxConfig) -> None:
    """Refuse a socket inside a directory the sandbox binds (the Python installation, the virtualenv,
    extra binds): a notebook could connect to it (a read-only bind does not stop connect()) and hold the
    pool's kernels."""
    visible = [*sandbox._python_roots(), *config.extra_ro_binds]
    real = os.path.realpath(path.parent)
    if sandbox._is_under(real, visible):
        raise PoolError(f"the kernel pool socket {path} would be visible inside the sandbox (under one of "
                        f"{', '.join(visible)}); put it elsewhere (--socket)")


def check_private_dir(path: Path, *, create: bool = False) -> None:
    """Raise `PoolError` unless ``path`` is a real directory of ours that nobody else can write to."""
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=False)
    try:
        st = os.lstat(path)
    except FileNotFoundError as err:
        raise PoolError(f"{path} does not exist") from err
    if not stat.S_ISDIR(st.st_mode):
        raise PoolError(f"{path} is not a directory (a symbolic link?); remove it")
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PoolError(f"{path} must belong to uid {os.getuid()} with mode 0700 (it has uid {st.st_uid}, "
                        f"mode {stat.S_IMODE(st.st_mode):o}); remove it and restart the pool")


def pool_key(config: SandboxConfig) -> str:
    """Everything fixed when a kernel starts; a run may use a pooled kernel only if its key is equal.

    The sandbox settings, the Python installation and this sandbox's code; the kernel's whole command
    line (with the run directory left out) and the identity of every program in it (`kernel_programs`:
    real path, device, inode, size and modification time), as this process resolves them — ``env``,
    ``bwrap`` and ``prlimit`` come from ``PATH``, so a pool started with another ``PATH`` (a wrapper named
    ``bwrap`` that runs the kernel unsandboxed) has another key; plus the modification times of the
    site-packages directories, so that installing or removing a package (which the pool's kernels may
    already have imported) makes the pool's kernels stale instead of silently old.
    """
    site = []
    for entry in sys.path:
        if entry.endswith("site-packages"):
            with contextlib.suppress(OSError):
                site.append((entry, os.stat(entry).st_mtime_ns))
    argv = _argv_template(config)
    data = {
        "backend": config.backend,
        "memory_limit_mb": config.memory_limit_mb,
        "tmp_size_mb": config.tmp_size_mb,
        "max_file_mb": config.max_file_mb,
        "extra_ro_binds": list(config.extra_ro_binds),
        "readonly_subdirs": list(config.readonly_subdirs),
        "executable": os.path.realpath(sys.executable),
        "prefix": sys.prefix,
        "site": site,
        "sandbox_code": _sandbox_code_digest(),
        "argv": argv,
        "programs": expected_programs(config, argv),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# A placeholder for the run directory in the key's copy of the kernel command line (each kernel has its own).
_RUN_DIR_PLACEHOLDER = "/{bento-run-dir}"
# Wrappers in a kernel command line that run the command after their options and a ``--`` (a shell runs
# a launcher script, ``sh -c SCRIPT NAME ARGS -- CMD``, that ends with ``exec "$@"``).
_WRAPPERS = ("bwrap", "prlimit", "setpriv", "unshare", "systemd-run", "nsenter", "taskset", "nice", "ionice",
             "timeout", "chroot", "sh", "dash", "bash")


def _argv_template(config: SandboxConfig) -> list[str]:
    """The kernel command line for ``config`` without what differs between two equivalent kernels: the run
    directory, and the name the interpreter was started by (``.venv/bin/python`` or ``python3``, the same
    installation: the key has its real path and prefix, and `expected_programs` its identity)."""
    run_dir = Path(_RUN_DIR_PLACEHOLDER)
    try:
        argv = sandbox.kernel_argv(config, run_dir, run_dir / sandbox.STATE_DIR_NAME)
    except Exception as err:  # noqa: BLE001 - a key that matches no pool: the run starts its own kernel
        return [f"<no command line: {err!r}>"]
    return _template(argv, None)


def _python_names() -> set[str]:
    names = {sys.executable}
    with contextlib.suppress(Exception):
        names.add(sandbox.kernel_python())  # type: ignore[attr-defined]
    return names


def _template(argv: Sequence[str], run_dir: Path | None) -> list[str]:
    """``argv`` with the run directory and the interpreter's name replaced by placeholders."""
    python = _python_names()
    out = []
    for arg in argv:
        if arg in python:
            arg = "{python}"
        elif run_dir is not None:
            arg = arg.replace(str(run_dir), _RUN_DIR_PLACEHOLDER)
        out.append(arg)
    return out


def kernel_programs(argv: Sequence[str]) -> list[str]:
    """The programs a kernel command line runs, in order: ``argv[0]``, then the command each wrapper
    runs (``env [-i] [NAME=VALUE...] CMD``; ``bwrap``, ``prlimit``... ``-- CMD``), down to the first program
    that is not a wrapper (the kernel's Python)."""
    programs: list[str] = []
    i = 0
    while i < len(argv):
        program = argv[i]
        programs.append(program)
        name = os.path.basename(program)
        if name == "env":
            i += 1
            while i < len(argv) and (argv[i].startswith("-") or "=" in argv[i]):
                i += 1
            continue
        if name in _WRAPPERS and "--" in argv[i + 1:]:
            i = argv.index("--", i + 1) + 1
            continue
        break
    return programs


def program_identity(program: str) -> list[Any]:
    """What a program of a kernel command line is in this process: the real path it resolves to (a bare
    name through this process's ``PATH``) and that file's device, inode, size and modification time. Two
    processes agree on a program only if all of these are equal."""
    if program == "{python}":
        program = sys.executable
    resolved = program if os.sep in program else shutil.which(program)
    if resolved is None:
        return [f"{program} (not found)"]
    real = os.path.realpath(resolved)
    try:
        st = os.stat(real)
    except OSError:
        return [f"{real} (missing)"]
    return [real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def expected_programs(config: SandboxConfig, argv: Sequence[str] | None = None) -> list[list[Any]]:
    """The identities of the programs a kernel for ``config`` would run if this process started it: those of
    its command line, and ``env``, ``bwrap`` and ``prlimit`` as the sandbox finds them on ``PATH`` (whether
    or not this version's command line names them)."""
    argv = _argv_template(config) if argv is None else argv
    chain = kernel_programs(argv)
    programs = [program_identity(p) for p in chain]
    # and any other executable file the command line names (a program of a wrapper this module does not
    # know how to read)
    for arg in argv:
        if os.path.isabs(arg) and arg not in chain and _is_executable_file(arg):
            programs.append(["file:", *program_identity(arg)])
    for tool in ("ENV_EXECUTABLE", "SH_EXECUTABLE", "BWRAP_EXECUTABLE", "PRLIMIT_EXECUTABLE"):
        name = getattr(sandbox, tool, None)
        if name:
            found = sandbox._which(name)
            programs.append([f"{name}:", *(program_identity(found) if found else [None])])
    return programs


def _is_executable_file(path: str) -> bool:
    """A regular file with execute permission that is a program (ELF or ``#!``), not a data file that
    merely has the bit set (a bind-mounted ``/etc/hosts`` in some containers)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
            return False
        with open(path, "rb") as f:
            head = f.read(4)
        return head == b"\x7fELF" or head[:2] == b"#!"
    except OSError:
        return False


def _argv_problem(argv: Sequence[str]) -> str:
    """Why a kernel command line must not run (a program that is not an absolute path), or ""."""
    relative = [p for p in kernel_programs(argv) if not os.path.isabs(p) and p != "{python}"]
    if relative:
        return (f"the kernel command line runs {', '.join(map(repr, relative))} by a name looked up on PATH; "
                "every program it runs must be an absolute path")
    return ""


_CODE_DIGEST: list[str] = []


def _sandbox_code_digest() -> str:
    if not _CODE_DIGEST:
        h = hashlib.sha256()
        for module in (sandbox, sys.modules[__name__]):
            h.update(Path(module.__file__ or "").read_bytes())
        _CODE_DIGEST.append(h.hexdigest())
    return _CODE_DIGEST[0]


# --------------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Kernel:
    work: workdirs.WorkDir  # held (flock) for the kernel's life: a sweep after a crash deletes it
    run_dir: Path
    state: Path
    km: AsyncKernelManager
    log: IO[bytes]
    started: float  # time.monotonic() when it became ready
    programs: list[list[Any]]  # `expected_programs` of the command line it was started with
    discarded: bool = False

    @property
    def work_dir(self) -> Path:
        return self.work.path


class KernelPoolServer:
    """Keeps ``size`` kernels ready for runs whose sandbox settings equal ``config``."""

    def __init__(self, config: SandboxConfig, *, socket_path: str | os.PathLike[str], size: int = 1,
                 run_root: str | os.PathLike[str] | None = None, preload: Sequence[str] = DEFAULT_PRELOAD,
                 idle_exit_s: float | None = None, log: logging.Logger | None = None):
        if config.backend != "bwrap":
            raise PoolError(f"the kernel pool serves bwrap-sandboxed kernels only, not {config.backend!r}")
        if size < 1:
            raise PoolError(f"size must be at least 1, got {size}")
        self.config = config
        self.key = pool_key(config)
        self.argv = _argv_template(config)
        self.programs = expected_programs(config, self.argv)
        problem = _argv_problem(self.argv)
        if problem:
            raise PoolError(problem)
        self.socket_path = Path(socket_path)
        self.size = size
        self.run_root = Path(run_root) if run_root else Path(tempfile.gettempdir())
        self.preload = tuple(preload)
        self.idle_exit_s = idle_exit_s
        self.log = log or _LOG
        self.ready: list[_Kernel] = []
        self.leased = 0
        self.served = 0
        self.failures = 0
        self._starting = 0
        self._last_activity = time.monotonic()
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._kill: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # the connections holding a kernel that is not yet discarded: the only ones a first stop waits for
        self._holding: dict[asyncio.Task[Any], _Kernel] = {}

    # -- lifecycle --------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (or the idle timeout). The first signal stops lending, closes every
        connection that holds no kernel and waits for the runs holding one to release it; a second one kills
        their kernels too."""
        asyncio.run(self.serve())

    async def serve(self, ready: "asyncio.Event | None" = None) -> None:
        sandbox.check_sandbox_available(self.config)
        check_socket_path(self.socket_path, self.config)
        check_private_dir(self.socket_path.parent, create=True)
        # One pool per socket for the pool's whole life: the lock is released when the process dies.
        lock = open(self.socket_path.with_name(self.socket_path.name + ".lock"), "a")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise PoolError(f"another kernel pool already serves {self.socket_path}") from None
        try:
            # every kernel directory this pool had when it was killed, and every run's left by a run
            # killed hard: stale exactly when no process holds its lock any more (workdirs)
            swept = await asyncio.to_thread(workdirs.sweep, self.run_root)
            if swept:
                self.log.info(f"kernel pool: deleted {len(swept)} stale run director(ies) in {self.run_root}")
            await self._serve_locked(ready)
        finally:
            lock.close()

    async def _serve_locked(self, ready: "asyncio.Event | None") -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # left over from a pool that was killed (we hold the lock)
        self._wake, self._stop, self._kill = asyncio.Event(), asyncio.Event(), asyncio.Event()
        old_umask = os.umask(0o177)  # the socket is created 0600
        try:
            server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path))
        finally:
            os.umask(old_umask)
        inode = os.stat(self.socket_path).st_ino
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread
                loop.add_signal_handler(signum, self.stop)
        self.log.info(f"kernel pool listening on {self.socket_path} (size {self.size}, preload "
                      f"{', '.join(self.preload) or 'nothing'})")
        filler = asyncio.ensure_future(self._fill())
        health = asyncio.ensure_future(self._health())
        if ready is not None:
            ready.set()
        try:
            await self._stop.wait()
            server.close()  # no new runs; the ones holding a kernel finish (unless stopped again)
            filler.cancel()
            health.cancel()
            for kernel in self.ready:
                await self._discard(kernel)
            self.ready.clear()
            # only runs holding a kernel are waited for; connections that hold none (a status request, a
            # refused or idle client, a run that already released its kernel) are closed below
            if self._holding:
                self.log.info(f"kernel pool stopping: waiting for {len(self._holding)} run(s) holding a kernel "
                              "(stop again to kill their kernels)")
                while self._holding and not self._kill.is_set():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._kill.wait(), timeout=0.05)
        finally:
            server.close()
            filler.cancel()
            health.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(filler, health, *self._tasks, return_exceptions=True)
            for kernel in self.ready:
                await self._discard(kernel)
            self.ready.clear()
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == inode:  # never another pool's socket
                    os.unlink(self.socket_path)
            self.log.info("kernel pool stopped")

    def stop(self) -> None:
        """Stop lending kernels and wait for the runs holding one; called again, kill those kernels too."""
        if self._stop is None or self._kill is None:
            return
        if self._stop.is_set():
            self._kill.set()
        self._stop.set()

    # -- keeping kernels ready --------------------------------------------------------------------

    async def _fill(self) -> None:
        assert self._wake is not None
        backoff = 1.0
        while True:
            while len(self.ready) + self._starting < self.size:
                self._starting += 1
                try:
                    kernel = await self._start_kernel()
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # noqa: BLE001 - logged; retried with backoff
                    self.failures += 1
                    self.log.error(f"kernel pool: could not start a kernel: {err}")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
                    continue
                finally:
                    self._starting -= 1
                backoff = 1.0
                self.ready.append(kernel)
            self._wake.clear()
            await self._wake.wait()

    async def _start_kernel(self) -> _Kernel:
        work = workdirs.create(self.run_root, "bento-pool-", subdirs=("nb", *(f"nb/{s}" for s in RUN_SUBDIRS)))
        work_dir = work.path
        run_dir = work_dir / "nb"
        log = tempfile.TemporaryFile(prefix="bento-kernel-log-")
        km: AsyncKernelManager | None = None
        try:
            state = sandbox._prepare_state_dir(self.config, run_dir, "kernel pool")
            km = sandbox._make_kernel_manager(self.config, run_dir, state)
            argv = _template(km.kernel_spec.argv, run_dir)
            problem = _argv_problem(argv)
            if problem:
                raise PoolError(problem)
            if argv != self.argv:
                raise PoolError("the kernel's command line is not the one this pool's key describes (did PATH or "
                                "an installed program change?); restart the pool")
            programs = expected_programs(self.config, argv)
            if programs != self.programs:
                raise PoolError(f"the kernel would run {programs}, not the programs this pool's key names "
                                f"{self.programs} (did PATH or an installed program change?); restart the pool")
            # as nbclient starts kernels: IPython's history in memory, not in a file in the sandbox's /tmp
            await km.start_kernel(env={}, stdout=subprocess.DEVNULL, stderr=log,
                                  extra_arguments=["--HistoryManager.hist_file=:memory:"])
            await self._warm(km)
        except BaseException:
            if km is not None:
                with contextlib.suppress(Exception):
                    await km.shutdown_kernel(now=True)
            work.remove()
            tail = sandbox._log_tail(log)
            log.close()
            if tail:
                self.log.error(f"kernel pool: kernel output:\n{tail}")
            raise
        return _Kernel(work=work, run_dir=run_dir, state=state, km=km, log=log, started=time.monotonic(),
                       programs=programs)

    async def _warm(self, km: AsyncKernelManager) -> None:
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=self.config.startup_timeout_s)
            if not self.preload:
                return
            msg_id = kc.execute(_preload_code(self.preload), silent=True, store_history=False)
            deadline = time.monotonic() + self.config.startup_timeout_s
            while True:
                reply = await kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
                if reply["parent_header"].get("msg_id") == msg_id:
                    break
            if reply["content"].get("status") != "ok":
                raise PoolError(f"preloading {self.preload} failed: {reply['content'].get('evalue')}")
        finally:
            kc.stop_channels()

    async def _health(self) -> None:
        """Replace ready kernels that died while waiting; stop when idle for ``idle_exit_s``."""
        assert self._stop is not None and self._wake is not None
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(_HEALTH_INTERVAL_S)
            if time.monotonic() - last_sweep > _SWEEP_INTERVAL_S:
                last_sweep = time.monotonic()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(workdirs.sweep, self.run_root)
            try:
                for kernel in list(self.ready):
                    if not await kernel.km.is_alive() and kernel in self.ready:  # (not lent meanwhile)
                        self.log.warning(f"kernel pool: a ready kernel died:\n{sandbox._log_tail(kernel.log)}")
                        self.ready.remove(kernel)
                        await self._discard(kernel)
                        self._wake.set()
            except Exception as err:  # noqa: BLE001 - keep checking
                self.log.error(f"kernel pool: health check failed: {err}")
            idle = time.monotonic() - self._last_activity
            if self.idle_exit_s is not None and self.leased == 0 and idle > self.idle_exit_s:
                self.log.info(f"kernel pool: idle for {idle:.0f} s, stopping")
                self._stop.set()

    async def _discard(self, kernel: _Kernel) -> None:
        if kernel.discarded:
            return
        kernel.discarded = True
        with contextlib.suppress(Exception):
            await kernel.km.shutdown_kernel(now=True)
        with contextlib.suppress(Exception):
            await kernel.km.cleanup_resources()
        # a big run directory takes a while to delete: not on the loop that answers every run
        await asyncio.to_thread(kernel.work.remove)
        kernel.log.close()
        for task, held in list(self._holding.items()):
            if held is kernel:
                del self._holding[task]

    # -- serving runs -----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        kernel: _Kernel | None = None
        try:
            if not _peer_is_us(writer):
                return
            try:
                request = await asyncio.wait_for(_read_message(reader), timeout=_FIRST_REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                return
            if request is None:
                return
            op = request.get("op")
            if op == "status":
                await _send(writer, self.status())
                return
            if op != "lease":
                await _send(writer, {"ok": False, "reason": f"unknown request {op!r}"})
                return
            self._last_activity = time.monotonic()
            self.leased += 1  # before any await: the idle check must not stop the pool under this run
            try:
                kernel, reason = await self._take(request.get("key"), request.get("programs"))
                if kernel is not None and task is not None:
                    self._holding[task] = kernel
            finally:
                if kernel is None:
                    self.leased -= 1
            if kernel is None:
                await _send(writer, {"ok": False, "reason": reason})
                return
            self.served += 1
            label = str(request.get("label", ""))[:200]
            self.log.info(f"kernel pool: lent a kernel to {label or 'a run'} "
                          f"(ready for {time.monotonic() - kernel.started:.1f} s)")
            info = dict(kernel.km.get_connection_info())
            info["key"] = info["key"].decode() if isinstance(info["key"], bytes) else info["key"]
            await _send(writer, {"ok": True, "run_dir": str(kernel.run_dir), "state_dir": str(kernel.state),
                                 "kernel_id": kernel.km.kernel_id, "connection": info,
                                 "ready_s": round(time.monotonic() - kernel.started, 3),
                                 "programs": kernel.programs})
            await self._serve_lease(kernel, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as err:  # noqa: BLE001 - a bad request ends its connection, not the pool
            self.log.warning(f"kernel pool: dropped a connection: {err!r}")
        finally:
            if kernel is not None:
                self.leased -= 1
                self._last_activity = time.monotonic()
                await self._discard(kernel)
                assert self._wake is not None
                self._wake.set()  # start the replacement now that the run is over
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _take(self, key: Any, programs: Any = None) -> tuple[_Kernel | None, str]:
        if self._stop is not None and self._stop.is_set():
            return None, "the kernel pool is stopping"
        if programs is not None and programs != self.programs:
            return None, _describe_program_difference(self.programs, programs)
        if key != self.key:
            return None, ("the pool's sandbox settings differ from this run's: "
                          f"{_describe_key_difference_remote(self.config)}")
        while self.ready:
            kernel = self.ready.pop(0)
            try:
                alive = await kernel.km.is_alive()
            except BaseException:
                await asyncio.shield(self._discard(kernel))  # never lose a kernel that left the list
                raise
            if alive:
                return kernel, ""
            await self._discard(kernel)
            assert self._wake is not None
            self._wake.set()
        return None, f"no kernel is ready yet ({self._starting} starting)"

    async def _serve_lease(self, kernel: _Kernel, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        while (request := await _read_message(reader)) is not None:
            op = request.get("op")
            if op == "poll":
                status = await kernel.km.provisioner.poll() if kernel.km.provisioner is not None else 0
                await _send(writer, {"status": status})
            elif op == "signal":
                signum = int(request.get("signum", 0) or 0)
                if signum in _ALLOWED_SIGNALS and kernel.km.has_kernel:
                    with contextlib.suppress(Exception):
                        await kernel.km.signal_kernel(signum)
                await _send(writer, {"ok": True})
            elif op == "log":
                await _send(writer, {"tail": sandbox._log_tail(kernel.log, lines=int(request.get("lines", 15)))})
            elif op == "release":
                await self._discard(kernel)  # before answering: the run may rely on the kernel being gone
                await _send(writer, {"ok": True})
                # The run holds the connection until it ends (see KernelLease.release) and sends nothing
                # more: anything it does send ends the connection at once instead of piling up in memory.
                await reader.read(1)
                return
            else:
                await _send(writer, {"ok": False, "reason": f"unknown request {op!r}"})

    def status(self) -> dict[str, Any]:
        return {"ok": True, "ready": len(self.ready), "starting": self._starting, "leased": self.leased,
                "size": self.size, "served": self.served, "failures": self.failures, "pid": os.getpid(),
                "settings": _settings(self.config)}


def _settings(config: SandboxConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in ("backend", "memory_limit_mb", "tmp_size_mb", "max_file_mb")}


def _describe_program_difference(ours: list[list[Any]], theirs: Any) -> str:
    def show(programs: Any) -> str:
        try:
            return ", ".join(str(p[0]) for p in programs if not str(p[0]).endswith(":"))
        except (TypeError, IndexError):
            return repr(programs)[:300]

    return (f"the pool's kernels run other programs than this run's would: the pool runs {show(ours)}, this "
            f"run would run {show(theirs)} (another PATH, or a program reinstalled since the pool started; "
            "restart the pool with the runs' PATH)")


def _describe_key_difference_remote(config: SandboxConfig) -> str:
    s = _settings(config)
    return (f"the pool runs memory_limit_mb={s['memory_limit_mb']}, tmp_size_mb={s['tmp_size_mb']}, "
            f"max_file_mb={s['max_file_mb']} with {sys.executable}; a spec that overrides a limit, another "
            "virtualenv, a changed package set or another dagster-bento version needs its own kernel "
            "(restart the pool after upgrading)")


def _peer_is_us(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(Exception):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(creds[4:8], sys.byteorder)
        return uid == os.getuid()
    return False


async def _read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


# --------------------------------------------------------------------------------------------------
# Client (the run's process)
# --------------------------------------------------------------------------------------------------


class KernelLease:
    """A pooled kernel lent to one run; `release` (or closing the process) gives it back to be killed."""

    def __init__(self, sock: socket.socket, reply: dict[str, Any], socket_path: Path):
        self._sock = sock
        self._file = sock.makefile("rb")
        self._lock = threading.Lock()
        self.socket_path = socket_path
        self.run_dir = Path(reply["run_dir"])
        self.state_dir = Path(reply["state_dir"])
        self.kernel_id = str(reply["kernel_id"])
        self.connection = dict(reply["connection"])
        self.ready_s = float(reply.get("ready_s", 0.0))
        self.programs = reply.get("programs")
        self.released = False
        self._hold_fd: int | None = None  # a shared lock on the kernel directory's owner marker (workdirs)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.released:
                raise PoolError("the kernel was already released")
            try:
                self._sock.sendall(json.dumps(message).encode() + b"\n")
                line = self._file.readline()
            except TimeoutError as err:  # a stuck pool: give up on the lease (the pool kills the kernel)
                self.released = True
                with contextlib.suppress(OSError):
                    self._sock.close()
                raise PoolError(f"the kernel pool did not answer within {REQUEST_TIMEOUT_S:g} s") from err
        if not line:
            raise PoolError("the kernel pool closed the connection")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise PoolError(f"unexpected reply from the kernel pool: {line!r}")
        return reply

    def poll(self) -> int | None:
        """None while the kernel runs, else its exit status (255 if the pool cannot be asked)."""
        try:
            status = self.request({"op": "poll"}).get("status")
        except (OSError, ValueError, PoolError):
            return 255
        return None if status is None else int(status)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(OSError, ValueError, PoolError):
            self.request({"op": "signal", "signum": int(signum)})

    def log_tail(self, lines: int = 15) -> str:
        try:
            return str(self.request({"op": "log", "lines": lines}).get("tail", ""))
        except (OSError, ValueError, PoolError):
            return ""

    def release(self, *, wait: bool = True) -> None:
        """Have the pool kill the kernel (if still alive) and delete its directory; with ``wait``, return
        once that is done. Call it only when nothing reads the run directory any more.

        The connection stays open until `close`: the pool starts the replacement kernel only then, so
        that on a small machine it does not compete with the rest of the run (the upload)."""
        if self.released:
            return
        with contextlib.suppress(OSError, ValueError, PoolError):
            if wait:
                self.request({"op": "release"})
            else:
                with self._lock:
                    if not self.released:
                        self._sock.sendall(b'{"op": "release"}\n')
        with self._lock:
            self.released = True

    def close(self) -> None:
        """End the lease (releasing the kernel first if that has not happened)."""
        self.release()
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()
        if self._hold_fd is not None:
            fd, self._hold_fd = self._hold_fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def kernel_manager(self) -> AsyncKernelManager:
        """A kernel manager that talks to this kernel and kills it through the pool."""
        return _attached_kernel_manager(self, self.connection, self.kernel_id)

    def __enter__(self) -> "KernelLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _attached_kernel_manager(handle: Any, connection: dict[str, Any], kernel_id: str) -> AsyncKernelManager:
    """A kernel manager for a kernel that is already running (a pool lease or a `LocalKernel`): nbclient
    attaches to it instead of starting one, and every lifecycle call goes to ``handle``."""
    km = _LeasedKernelManager(
        kernel_name=sandbox.KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(handle.state_dir / "kernels")],
                                              ensure_native_kernel=False),
        log=sandbox._INTERNAL_LOG,
    )
    km.load_connection_info(connection)
    km.kernel_id = kernel_id
    km.client_factory = sandbox._ReadyClient
    km.provisioner = _LeasedProvisioner(kernel_id=kernel_id, kernel_spec=None, parent=km)
    km.provisioner.lease = handle
    return km


class LocalKernel:
    """A sandboxed kernel this process starts itself, as early as possible in a run, used like a lease.

    A run's other work before the first cell (importing the run stack in a fresh Dagster step process,
    checks, the fetch) then overlaps with the kernel's start-up instead of preceding it. The kernel runs
    exactly what `execute_notebook` would start itself (`sandbox.kernel_argv`: same sandbox, limits and
    empty environment), plus a silent import of ``preload`` during start-up (IPython's ``exec_lines``:
    no names are bound and the execution count stays at 0), because every rewritten notebook imports
    pandas first. `close` kills it and deletes its private directory.
    """

    def __init__(self, config: SandboxConfig, *, run_root: str | os.PathLike[str] | None = None, label: str = "",
                 preload: Sequence[str] = DEFAULT_PRELOAD):
        if config.backend != "bwrap":
            raise PoolError(f"a local kernel is started for the bwrap sandbox only, not {config.backend!r}")
        sandbox.check_sandbox_available(config)
        self.work = workdirs.create(workdirs.run_root(run_root), "bento-k-",
                                    subdirs=("nb", *(f"nb/{s}" for s in RUN_SUBDIRS)))
        self.work_dir = self.work.path
        self.run_dir = self.work_dir / "nb"
        self.released = False
        self.log = tempfile.TemporaryFile(prefix="bento-kernel-log-")
        self.process: subprocess.Popen[bytes] | None = None
        try:
            self.state_dir = sandbox._prepare_state_dir(config, self.run_dir, label or "kernel")
            from jupyter_client.connect import write_connection_file

            fname, info = write_connection_file(str(self.state_dir / "connection.json"), transport="ipc",
                                                ip=str(self.state_dir / "ipc"), key=secrets.token_hex(32).encode())
            self.connection = dict(info)
            self.kernel_id = str(uuid.uuid4())
            argv = [a.replace("{connection_file}", fname) for a in sandbox.kernel_argv(config, self.run_dir,
                                                                                       self.state_dir)]
            argv.append("--HistoryManager.hist_file=:memory:")  # as nbclient starts kernels
            if preload:
                argv.append("--IPKernelApp.exec_lines=" + json.dumps([_preload_code(preload)]))
            # like jupyter_client's launcher: its own session (signals go to the whole group), no inherited fds
            self.process = subprocess.Popen(argv, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=self.log, start_new_session=True, close_fds=True,
                                            cwd=str(self.run_dir))
            # if the run never gets to close it (an invocation that is never waited on), garbage collection
            # or the interpreter's exit still kills the kernel and deletes its directory
            self._finalizer = weakref.finalize(self, _remove_local_kernel, self.process, self.work)
        except BaseException:
            self.close()
            raise

    def poll(self) -> int | None:
        return self.process.poll() if self.process is not None else 0

    def signal(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)  # its own process group (start_new_session)

    def log_tail(self, lines: int = 15) -> str:
        return sandbox._log_tail(self.log, lines=lines)

    def kernel_manager(self) -> AsyncKernelManager:
        return _attached_kernel_manager(self, self.connection, self.kernel_id)

    def release(self, *, wait: bool = True) -> None:
        """Kill the kernel (if still alive); with ``wait``, also delete its directory now (else at `close`)."""
        if not self.released:
            self.released = True
            if self.process is not None:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10)
        if wait:
            self.work.remove()  # fd-based: never follows the notebook's links

    def close(self) -> None:
        self.release()
        self.log.close()
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()

    def __enter__(self) -> "LocalKernel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _remove_local_kernel(process: "subprocess.Popen[bytes]", work: workdirs.WorkDir) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    work.remove()


def _preload_code(modules: Sequence[str]) -> str:
    return ("import importlib as _bento_il\n"
            f"for _bento_m in {list(modules)!r}:\n"
            "    try:\n        _bento_il.import_module(_bento_m)\n    except ImportError:\n        pass\n"
            "del _bento_il, _bento_m\n")


def lease_kernel(socket_path: str | os.PathLike[str], config: SandboxConfig, *, label: str = "",
                 timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[KernelLease | None, str]:
    """Ask the pool at ``socket_path`` for a kernel matching ``config``: (lease, "") or (None, why not)."""
    path = Path(socket_path)
    if config.backend != "bwrap":
        return None, f"the pool serves bwrap kernels only (this run uses {config.backend})"
    if not os.path.lexists(path):
        return None, f"no kernel pool is running ({path} does not exist)"
    try:
        check_private_dir(path.parent)
    except PoolError as err:
        return None, f"not using the kernel pool socket {path}: {err}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    programs = expected_programs(config)
    try:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps({"op": "lease", "key": pool_key(config), "programs": programs,
                                 "label": label}).encode() + b"\n")
        reply = json.loads(sock.makefile("rb").readline() or b"null")
    except (OSError, ValueError) as err:
        sock.close()
        return None, f"the kernel pool at {path} did not answer ({err})"
    if not isinstance(reply, dict) or not reply.get("ok"):
        sock.close()
        reason = reply.get("reason") if isinstance(reply, dict) else "no answer"
        return None, f"the kernel pool at {path} has no kernel for this run: {reason}"
    sock.settimeout(REQUEST_TIMEOUT_S)
    try:
        lease = KernelLease(sock, reply, path)
    except (KeyError, TypeError, ValueError) as err:
        sock.close()
        return None, f"the kernel pool at {path} sent a malformed answer ({err!r})"
    # The key names the programs too, but check what the kernel was really started with, resolved here: a
    # pool with another PATH must never lend a kernel that another `bwrap` (or `env`, `prlimit`) started.
    if lease.programs != programs:
        lease.close()
        return None, f"the kernel pool at {path} cannot lend this run a kernel: " + _describe_program_difference(
            lease.programs, programs)
    problem = _not_ours(lease.run_dir)
    if problem:  # e.g. the pool runs in another container or with another TMPDIR or PrivateTmp
        lease.close()
        return None, (f"the kernel pool at {path} lent a kernel whose directory {lease.run_dir} this process "
                      f"cannot use ({problem}); run the pool as the same user, in the same file system view")
    try:
        # the fetched inputs go into the pool's directory: while this run lives, no sweep may delete it
        # (should the pool die first), and after both are gone the next sweep does
        lease._hold_fd = workdirs.hold(lease.run_dir.parent)
    except workdirs.WorkDirError as err:
        lease.close()
        return None, f"the kernel pool at {path} lent a kernel whose directory this run cannot hold: {err}"
    return lease, ""


def _not_ours(run_dir: Path) -> str:
    """Why ``run_dir`` (from the pool) is not a directory of ours in a private parent, or ""."""
    try:
        st, parent = os.lstat(run_dir), os.lstat(run_dir.parent)
    except OSError as err:
        return err.strerror or str(err)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return "not a directory of this user"
    if parent.st_uid != os.getuid() or parent.st_mode & 0o077:
        return "its parent is not private to this user"
    return ""


def pool_status(socket_path: str | os.PathLike[str], timeout_s: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    path = Path(socket_path)
    check_private_dir(path.parent)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(b'{"op": "status"}\n')
        return dict(json.loads(sock.makefile("rb").readline()))


def wait_until_ready(socket_path: str | os.PathLike[str], *, count: int = 1, timeout_s: float = 60.0) -> dict[str, Any]:
    """Block until the pool at ``socket_path`` has ``count`` ready kernels (for scripts and benchmarks)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | Exception = {}
    while time.monotonic() < deadline:
        try:
            last = pool_status(socket_path)
            if last.get("ready", 0) >= count:
                return last
        except (OSError, ValueError, PoolError) as err:
            last = err
        time.sleep(0.05)
    raise PoolError(f"the kernel pool at {socket_path} has no {count} ready kernel(s) after {timeout_s:g} s: {last}")


class _LeasedProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Lifecycle calls on a kernel another process (the pool) started; each is one request to it."""

    lease: KernelLease | None = None

    @property
    def has_process(self) -> bool:
        return self.lease is not None and not self.lease.released

    async def poll(self) -> int | None:
        assert self.lease is not None
        return await asyncio.to_thread(self.lease.poll)

    async def wait(self) -> int | None:
        while (status := await self.poll()) is None:
            await asyncio.sleep(0.05)
        return status

    async def send_signal(self, signum: int) -> None:
        assert self.lease is not None
        await asyncio.to_thread(self.lease.signal, signum)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        raise PoolError("a leased kernel is already running")

    async def cleanup(self, restart: bool = False) -> None:
        pass


class _LeasedKernelManager(AsyncKernelManager):  # type: ignore[misc]
    """Shutting down means killing through the pool; the files belong to the pool, which deletes them."""

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:  # type: ignore[override]
        if self.has_kernel:
            await self.provisioner.kill()
            await self.provisioner.wait()

    async def cleanup_resources(self, restart: bool = False) -> None:  # type: ignore[override]
        """The kernel's files belong to whoever started it; only this manager's zmq context is ours."""
        if self._created_context and not restart:
            self.context.destroy(linger=100)


def acquire_kernel(resource: Any, config: SandboxConfig, job: Any, run_id: str, log: Any) -> Any:
    """A kernel for this run that is already starting or running: one lent by the project's kernel pool
    if one is running and matches ``config``, else one this process starts now (`pool.LocalKernel`).
    None for the docker and none backends, or when starting one fails: `execute_notebook` then starts
    its own kernel and reports what is wrong."""
    if config.backend != "bwrap":
        return None
    socket_path = resource.kernel_pool_socket
    if socket_path is not None:
        lease, reason = lease_kernel(socket_path, config, label=f"{job.name} (run {run_id[:8]})")
        if lease is not None:
            log.info(f"using a pre-started kernel from the kernel pool at {socket_path} "
                     f"(ready for {lease.ready_s:.0f} s)")
            return lease
        if resource.kernel_pool.strip().lower() not in ("auto", "on", "true", "yes", "1") or os.path.lexists(socket_path):
            log.info(f"{reason}; starting a kernel for this run")
    try:
        return LocalKernel(config, run_root=resource.run_root, label=job.notebook_path)
    except Exception as err:  # noqa: BLE001 - execute_notebook starts the kernel itself and reports the problem
        log.debug(f"could not start the kernel ahead of the run: {err}")
        return None
