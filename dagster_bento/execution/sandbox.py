"""Run a rewritten notebook in a real Jupyter kernel that lives inside a sandbox.

The orchestrator process (a Dagster op) holds the warehouse credentials; the notebook is user code.
So only the *kernel* is sandboxed: nbclient runs here, in the host process, and talks to the kernel
over ZeroMQ ``ipc`` sockets that sit in the run directory, the one directory both sides can see.
``ipc`` (not ``tcp``) is what makes this work: the kernel has no usable network at all, and Unix
sockets on a shared bind mount cross the namespace (or container) boundary.

Backends:

* ``bwrap`` (default, local and CI): bubblewrap with every namespace unshared, all capabilities
  dropped, a clean environment and a filesystem that contains only the OS libraries, the Python
  installation, the virtualenv (read-only) and the run directory (read-write). See
  the research notes (performance-baselines.md, section E) for why each flag is there.
  /tmp and /dev/shm are size-limited private tmpfs mounts and the kernel cannot write a file bigger
  than ``max_file_mb`` (RLIMIT_FSIZE). Nested user namespaces are refused (``--disable-userns``) and a
  seccomp filter (`seccomp_filter`) refuses the system calls a notebook has no use for (namespaces,
  mounts, ptrace, BPF, keyrings, io_uring, module loading, socket families other than Unix and IP).
  Memory and the number of tasks are limited by a cgroup when the host offers a writable one (the
  memory limit then counts everything the kernel holds: heap, shared memory, /tmp and /dev/shm),
  else by rlimits, with /tmp and /dev/shm carved out of the memory limit (see `limit_plan`).
* ``docker`` (production): the kernel runs in a container with ``network_mode="none"``, a read-only
  root filesystem and the run directory bind-mounted at the same path.
* ``none``: no sandbox, for local development only; it warns on every run.

The sandbox is never skipped silently: if it cannot be set up, the run fails with
`DagsterBentoSandboxUnavailableError`.

Everything under the run directory is controlled by the notebook, so once the kernel has started
the orchestrator never opens, reads or follows a path there: the kernel's stderr goes to an
unnamed temporary file outside the run directory (read back through the orchestrator's own file
descriptor), and the state directory is a separate bind mount inside the sandbox, so the kernel
cannot replace it with a symbolic link that jupyter_client's cleanup (``os.remove`` of the
connection file and ipc socket paths) would follow.
"""

import asyncio
import atexit
import concurrent.futures
import contextlib
import copy
import dataclasses
import errno
import grp
import inspect
import json
import logging
import os
import pwd
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning import LocalProvisioner
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

from dagster_bento.errors import (
    DagsterBentoCellError,
    DagsterBentoKernelDiedError,
    DagsterBentoRunError,
    DagsterBentoSandboxUnavailableError,
    DagsterBentoTimeoutError,
)

Backend = Literal["bwrap", "none", "docker"]
_BACKENDS: tuple[str, ...] = ("bwrap", "none", "docker")

# Executables, looked up on PATH unless they contain a "/". Module-level so that tests (and unusual
# installations) can point them elsewhere, e.g. at a missing path to check the "unavailable" error.
BWRAP_EXECUTABLE = "bwrap"
PRLIMIT_EXECUTABLE = "prlimit"
ENV_EXECUTABLE = "env"
SH_EXECUTABLE = "sh"  # runs the launcher script (cgroup, seccomp descriptor) before bwrap
_FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

KERNEL_NAME = "dagster-bento-sandbox"
# Hidden per-run directory inside run_dir: kernelspec, connection file, ipc sockets, identity files.
# It must be inside run_dir because that is the only host directory the kernel can see.
STATE_DIR_NAME = ".bento-kernel"
# sockaddr_un.sun_path is 108 bytes; zmq appends "-<n>" to the ipc prefix.
_MAX_IPC_PATH = 100

# Which rlimit enforces memory_limit_mb where no cgroup can. RLIMIT_DATA (not RLIMIT_AS) because AS
# also counts reserved-but-unused address space (glibc arenas, thread stacks, jemalloc), which would
# make a 600 MB limit fail on kernel start while barely limiting real use.
_MEMORY_RLIMIT_FLAG = "--data"
# RLIMIT_DATA still counts every thread's 8 MB stack and allocator arenas, and pyarrow waits forever
# for a thread or an allocation that failed: with less than this for the kernel's own data the kernel
# hangs on its first read of a Parquet file instead of failing. Such a limit is refused up front.
MIN_RLIMIT_DATA_MB = 512
# Under rlimits, /tmp and /dev/shm (tmpfs: memory that RLIMIT_DATA does not count) get at most these
# shares of memory_limit_mb, and RLIMIT_DATA the rest, so that all three together stay within it.
_RLIMIT_TMP_SHARE = 4  # /tmp: at most 1/4
_RLIMIT_SHM_SHARE = 16  # /dev/shm: at most 1/16
# Where cgroup v1 hierarchies and the v2 hierarchy are mounted.
_CGROUP_ROOT = "/sys/fs/cgroup"
# A delegated cgroup v2 directory (memory and pids enabled in its cgroup.subtree_control) under which
# each kernel gets its own cgroup; set by the operator, e.g. for a systemd service with Delegate=yes.
CGROUP_PARENT_ENV = "BENTO_CGROUP_PARENT"
_CGROUP_PREFIX = "bento-"
# The seccomp filter reaches bwrap on this descriptor (the launcher opens the filter file on it).
_SECCOMP_FD = 3
_SECCOMP_FILE = "seccomp.bpf"

# Host OS directories the kernel needs read-only. Usr-merged systems have /bin -> usr/bin etc.;
# those are recreated as symlinks rather than bound.
_SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
# Only the /etc entries the Python kernel and common libraries read, each a public configuration
# file (or a directory of them) - the kernel may run as uid 0, so anything root-owned in a bound
# directory would be readable. Not resolv.conf (there is no network), no TLS material at all (no
# network; /etc/ssl also holds private keys), never shadow/ssh/postgresql*/docker/... (secrets).
# passwd, group and hosts are generated per run (no host accounts or host names).
_ETC_ENTRIES: tuple[str, ...] = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "host.conf",
    "gai.conf",
    "mime.types",
    "fonts",
    "alternatives",
    "locale.alias",
    "protocols",
    "services",
    "os-release",
)

# Generated per run in the state dir and bound read-only over /etc/<name>.
_GENERATED_ETC_FILES: tuple[str, ...] = ("passwd", "group", "hosts")
_SANDBOX_HOSTNAME = "bento-sandbox"

# How much of the end of the kernel's stderr is read back for an error message.
_LOG_TAIL_BYTES = 64 * 1024

NONE_BACKEND_WARNING = (
    "sandbox: none — the notebook has network and filesystem access; for local development only"
)

_T = TypeVar("_T")

# nbclient and jupyter_client log every cell's source and the full kernel argv at debug level; that
# goes to this stdlib logger, not to the caller's (Dagster's) log, which gets only what matters.
_INTERNAL_LOG = logging.getLogger(__name__ + ".kernel")

# Probes that succeeded in this process, so the ~70 ms probe is paid once, not per run. Only
# successes are cached: a sandbox that breaks later still fails the run (at kernel start).
_BWRAP_PROBED_OK: set[tuple[Any, ...]] = set()

ResourceLimits = Literal["auto", "cgroup", "rlimit"]


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """How the kernel is isolated and limited. The defaults are the safe choice."""

    backend: Backend = "bwrap"
    timeout_s: float = 600.0  # whole-run wall clock limit, kernel start included
    cell_timeout_s: float | None = None
    memory_limit_mb: int | None = 4096  # enforced on the kernel process
    startup_timeout_s: float = 60.0
    docker_image: str | None = None  # for backend="docker"
    extra_ro_binds: tuple[str, ...] = ()
    # subdirectories of run_dir the kernel may read but not change (bound read-only on themselves, so
    # they are mount points: the kernel can neither write into them nor swap them for a symlink while
    # the orchestrator is still writing into them)
    readonly_subdirs: tuple[str, ...] = ()
    tmp_size_mb: int | None = 1024  # size of the kernel's private /tmp (bwrap, docker)
    max_file_mb: int | None = 51200  # largest file the kernel may write (RLIMIT_FSIZE)
    shm_size_mb: int | None = 64  # size of the kernel's private /dev/shm (bwrap, docker)
    # tasks (processes and threads) the kernel may have at once: cgroup pids.max (bwrap with a cgroup,
    # docker's pids_limit), else RLIMIT_NPROC (which does not bind when the orchestrator runs as root)
    max_processes: int | None = 1024
    # how the bwrap backend enforces memory_limit_mb and max_processes: "cgroup" (a cgroup per kernel;
    # refused where the host offers none), "rlimit" (rlimits only), "auto" (a cgroup where the host
    # offers a writable one, else rlimits)
    resource_limits: ResourceLimits = "auto"

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"SandboxConfig.backend must be one of {_BACKENDS}, got {self.backend!r}")
        for name in (
            "timeout_s", "cell_timeout_s", "startup_timeout_s", "memory_limit_mb", "tmp_size_mb", "max_file_mb",
            "shm_size_mb", "max_processes",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"SandboxConfig.{name} must be positive, got {value!r}")
        if self.resource_limits not in ("auto", "cgroup", "rlimit"):
            raise ValueError(
                f"SandboxConfig.resource_limits must be 'auto', 'cgroup' or 'rlimit', got {self.resource_limits!r}"
            )
        for path in self.extra_ro_binds:
            if not os.path.isabs(path):
                raise ValueError(f"SandboxConfig.extra_ro_binds must be absolute paths, got {path!r}")


# --------------------------------------------------------------------------------------------------
# Availability checks
# --------------------------------------------------------------------------------------------------


def check_sandbox_available(config: SandboxConfig) -> None:
    """Raise `DagsterBentoSandboxUnavailableError` (saying how to fix it) if ``config`` cannot run here.

    Called before every run, so a broken sandbox fails the run up front instead of after a long wait
    for a kernel that never starts.
    """
    _require_limit_tool(config)
    _check_limits(config)
    if config.backend == "bwrap":
        _check_bwrap(config)
    elif config.backend == "docker":
        _check_docker(config)


def _which(name: str) -> str | None:
    """Resolve an executable like the shell would, falling back to the standard system dirs."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name) or shutil.which(name, path=_FALLBACK_PATH)


def _require(name: str, what: str, fix: str) -> str:
    path = _which(name)
    if path is None:
        raise DagsterBentoSandboxUnavailableError(f"{what} ({name!r}) was not found. {fix}")
    return os.path.realpath(path)


def _require_limit_tool(config: SandboxConfig) -> None:
    if config.backend == "docker":
        return
    needed = [n for n in ("memory_limit_mb", "max_file_mb", "max_processes") if getattr(config, n) is not None]
    if needed:
        _require(
            PRLIMIT_EXECUTABLE,
            f"prlimit, needed to enforce SandboxConfig.{' and '.join(needed)},",
            "Install util-linux (`apt-get install util-linux`), or set "
            + " and ".join(f"{n}=None" for n in needed)
            + ".",
        )


def _check_bwrap(config: SandboxConfig) -> None:
    """Start a throwaway sandbox with the real argv and a trivial Python command.

    This proves the namespaces can be created *and* that the interpreter resolves inside the
    restricted filesystem, which is the failure people actually hit. It costs ~70 ms, so a
    success is remembered for the rest of the process.
    """
    bwrap = _require(
        BWRAP_EXECUTABLE,
        "bubblewrap",
        "Install it (`apt-get install bubblewrap` on Debian/Ubuntu, `dnf install bubblewrap` on "
        "Fedora), or use SandboxConfig(backend='docker'). dagster-bento does not run notebooks "
        "unsandboxed unless backend='none' is set explicitly.",
    )
    _require(ENV_EXECUTABLE, "env", "Install coreutils.")
    _require(SH_EXECUTABLE, "sh", "Install a POSIX shell (dash or bash).")
    plan = limit_plan(config)
    cache_key = (bwrap, kernel_python(), config.extra_ro_binds, plan)
    if cache_key in _BWRAP_PROBED_OK:
        return
    with tempfile.TemporaryDirectory(prefix="bento-probe-") as tmp:
        probe_dir = Path(tmp).resolve()
        state = probe_dir / STATE_DIR_NAME
        state.mkdir()
        _write_identity_files(state)
        _write_seccomp_filter(config, state)
        for sub in config.readonly_subdirs:
            (probe_dir / sub).mkdir(parents=True, exist_ok=True)
        # the kernel's own command line (launcher, cgroup, seccomp, limits), with a trivial command
        argv = kernel_argv(config, probe_dir, state)
        argv = [*argv[: argv.index("-X", argv.index(kernel_python()))], "-c", "pass"]
        proc = None
        try:
            proc = subprocess.Popen(argv, env={}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stdout, stderr = proc.communicate(timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            if proc is not None:
                proc.kill()
                proc.wait()
            raise DagsterBentoSandboxUnavailableError(
                f"bubblewrap at {bwrap} could not be started: {e}. Fix the installation or use "
                "SandboxConfig(backend='docker')."
            ) from e
        finally:
            if proc is not None:
                _remove_kernel_cgroups(proc.pid)
    if proc.returncode != 0:
        detail = (stderr or stdout).strip() or f"exit status {proc.returncode}"
        if plan.cgroup is not None and "cgroup" in detail:
            detail += (" (the kernel's cgroup could not be set up: set SandboxConfig.resource_limits='rlimit', "
                       "or fix the host's cgroup delegation)")
        hint_list = _namespace_hints(detail)
        if "--size" in detail:
            hint_list.append(
                "This bubblewrap is too old to limit the size of /tmp (--size needs 0.8.0 or later): "
                "upgrade it, or set SandboxConfig.tmp_size_mb=None."
            )
        hints = "".join(f"{h} " for h in hint_list)
        raise DagsterBentoSandboxUnavailableError(
            f"bubblewrap at {bwrap} cannot create the kernel sandbox: {detail}. {hints}"
            "Fix this, or use SandboxConfig(backend='docker'); dagster-bento does not fall back "
            "to running the notebook unsandboxed."
        )
    _BWRAP_PROBED_OK.add(cache_key)


def _read_sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _namespace_hints(detail: str) -> list[str]:
    """Explain the usual reasons bwrap cannot create namespaces, only the ones that apply here."""
    hints = []
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0" and os.geteuid() != 0:
        hints.append(
            "User namespaces are disabled for unprivileged users: run "
            "`sysctl -w kernel.unprivileged_userns_clone=1`."
        )
    if _read_sysctl("/proc/sys/user/max_user_namespaces") == "0":
        hints.append("User namespaces are disabled: run `sysctl -w user.max_user_namespaces=15000`.")
    if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1" and os.geteuid() != 0:
        hints.append(
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+): add an AppArmor "
            "profile for bwrap or run `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`."
        )
    if os.path.exists("/.dockerenv") and ("ermission" in detail or "not permitted" in detail):
        hints.append(
            "Inside a container, the default seccomp/AppArmor profile usually forbids creating "
            "namespaces: run the container with `--security-opt seccomp=unconfined --security-opt "
            "apparmor=unconfined`, or use the docker backend from the host."
        )
    return hints


def _check_docker(config: SandboxConfig) -> None:
    if not config.docker_image:
        raise DagsterBentoSandboxUnavailableError(
            "SandboxConfig(backend='docker') needs docker_image: an image with Python, ipykernel "
            "and the notebook's libraries (e.g. the project's own image)."
        )
    client = _docker_client()
    try:
        import docker.errors

        try:
            client.images.get(config.docker_image)
        except docker.errors.ImageNotFound as e:
            raise DagsterBentoSandboxUnavailableError(
                f"The kernel image {config.docker_image!r} is not present on the Docker engine: "
                f"`docker pull {config.docker_image}` (or build it) before the run."
            ) from e
        except docker.errors.DockerException as e:
            raise DagsterBentoSandboxUnavailableError(
                f"Could not inspect the kernel image {config.docker_image!r}: {e}"
            ) from e
    finally:
        client.close()


def _docker_client() -> Any:
    """A connected docker-py client, or a clear error when the engine is not reachable."""
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        import docker
        import docker.errors
    except ImportError as e:  # pragma: no cover - docker is a dependency of dagster-docker
        raise DagsterBentoSandboxUnavailableError(
            "The docker backend needs the `docker` Python package: `pip install docker`."
        ) from e
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as e:  # DockerException, or requests' ConnectionError from ping()
        raise DagsterBentoSandboxUnavailableError(
            f"The Docker engine at {docker_host} is not reachable ({e}). Start the Docker daemon "
            "or point DOCKER_HOST at a running engine, or use SandboxConfig(backend='bwrap')."
        ) from e
    return client


# --------------------------------------------------------------------------------------------------
# Resource limits: a cgroup per kernel where the host offers one, else rlimits
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CgroupHost:
    """Where this process can create a cgroup per kernel.

    ``version`` 1: the memory and pids hierarchies are mounted under ``/sys/fs/cgroup`` and this
    process's own cgroups in both are writable; each kernel's cgroup is created *inside the launcher*,
    under the launcher's own cgroups (read from ``/proc/self/cgroup`` at launch), so that the kernel
    command line does not depend on which process starts the kernel (a run or the kernel pool).
    ``version`` 2: ``parent`` is a writable cgroup v2 directory with ``memory`` and ``pids`` in its
    ``cgroup.subtree_control`` (``$BENTO_CGROUP_PARENT``, or this process's own cgroup if it qualifies).
    """

    version: int
    parent: str | None = None


@dataclasses.dataclass(frozen=True)
class LimitPlan:
    """How a bwrap (or none) kernel's limits are enforced on this host, in bytes (None: no limit)."""

    cgroup: CgroupHost | None
    memory: int | None  # cgroup memory limit (counts heap, shared memory, /tmp and /dev/shm)
    data: int | None  # RLIMIT_DATA (rlimit mode only)
    tmp: int | None  # size of /tmp
    shm: int | None  # size of /dev/shm
    tasks: int | None  # cgroup pids.max and RLIMIT_NPROC
    fsize: int | None  # RLIMIT_FSIZE


def _own_cgroups() -> dict[str, str]:
    """controller (``memory``, ``pids``; ``""`` for v2) -> this process's cgroup path."""
    own: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                own[controller] = parts[2]
    return own


def _writable_cgroup_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.procs")) and os.access(path, os.W_OK)


def _v2_parent_ok(path: str) -> bool:
    try:
        enabled = Path(path, "cgroup.subtree_control").read_text().split()
    except OSError:
        return False
    return {"memory", "pids"} <= set(enabled) and _writable_cgroup_dir(path)


def find_cgroup_host() -> CgroupHost | None:
    """A cgroup this process may create kernels' cgroups under, or None (then rlimits are used)."""
    explicit = os.environ.get(CGROUP_PARENT_ENV)
    if explicit:
        return CgroupHost(2, os.path.realpath(explicit)) if _v2_parent_ok(explicit) else None
    own = _own_cgroups()
    if "memory" in own and "pids" in own:
        dirs = [f"{_CGROUP_ROOT}/{c}{own[c].rstrip('/')}" for c in ("memory", "pids")]
        if all(_writable_cgroup_dir(d) for d in dirs):
            return CgroupHost(1)
    if "" in own:
        for mount in (_CGROUP_ROOT, f"{_CGROUP_ROOT}/unified"):
            candidate = mount + own[""].rstrip("/")
            if os.path.isfile(f"{mount}/cgroup.controllers") and _v2_parent_ok(candidate):
                return CgroupHost(2, candidate)
    return None


def limit_plan(config: SandboxConfig, cgroup: CgroupHost | None | Literal["detect"] = "detect") -> LimitPlan:
    """What enforces ``config``'s memory, task, /tmp, /dev/shm and file-size limits (bwrap and none).

    With a cgroup, the memory limit is the cgroup's: the kernel is OOM-killed when everything it
    holds (heap, shared memory, files in /tmp and /dev/shm) exceeds it. Without one, RLIMIT_DATA
    bounds the heap, /tmp and /dev/shm get at most 1/4 and 1/16 of the limit, and RLIMIT_DATA the
    rest; shared anonymous memory, SysV shared memory and memfd are then refused by the seccomp filter
    (nothing would count them). The docker backend does not use this (the container is a cgroup).
    """
    mib = 1024 * 1024
    memory_wanted = config.memory_limit_mb is not None or config.max_processes is not None
    if cgroup == "detect":
        cgroup = None
        if config.backend == "bwrap" and config.resource_limits != "rlimit" and memory_wanted:
            cgroup = find_cgroup_host()
    tmp = config.tmp_size_mb * mib if config.tmp_size_mb is not None else None
    shm = config.shm_size_mb * mib if config.shm_size_mb is not None else None
    fsize = config.max_file_mb * mib if config.max_file_mb is not None else None
    tasks = config.max_processes
    if config.memory_limit_mb is None:
        return LimitPlan(cgroup, None, None, tmp, shm, tasks, fsize)
    limit = config.memory_limit_mb * mib
    if cgroup is not None:
        return LimitPlan(cgroup, limit, None, tmp, shm, tasks, fsize)
    if config.backend == "bwrap":
        tmp = min(tmp if tmp is not None else limit, limit // _RLIMIT_TMP_SHARE)
        shm = min(shm if shm is not None else limit, limit // _RLIMIT_SHM_SHARE)
        return LimitPlan(None, None, limit - tmp - shm, tmp, shm, tasks, fsize)
    return LimitPlan(None, None, limit, tmp, shm, tasks, fsize)  # none: no private /tmp or /dev/shm


def _min_rlimit_memory_mb(config: SandboxConfig) -> int:
    """The smallest memory_limit_mb whose RLIMIT_DATA share is at least MIN_RLIMIT_DATA_MB."""
    mb = MIN_RLIMIT_DATA_MB
    while True:
        plan = limit_plan(dataclasses.replace(config, memory_limit_mb=mb), cgroup=None)
        if plan.data is None or plan.data >= MIN_RLIMIT_DATA_MB * 1024 * 1024:
            return mb
        mb += 1


def _check_limits(config: SandboxConfig) -> LimitPlan | None:
    """Refuse limits this host cannot enforce (or that would hang the kernel) before anything starts."""
    if config.backend == "docker":
        return None
    plan = limit_plan(config)
    if config.resource_limits == "cgroup" and plan.cgroup is None:
        raise DagsterBentoSandboxUnavailableError(
            "SandboxConfig.resource_limits='cgroup', but this host offers no writable cgroup for the kernel "
            f"(cgroup v1 memory and pids hierarchies under {_CGROUP_ROOT} that this process may write, or "
            f"a delegated cgroup v2 directory named by ${CGROUP_PARENT_ENV}, with memory and pids in its "
            "cgroup.subtree_control). Delegate one (e.g. systemd `Delegate=yes`), or use resource_limits="
            "'auto' to fall back to rlimits."
        )
    if plan.data is not None and plan.data < MIN_RLIMIT_DATA_MB * 1024 * 1024:
        floor = _min_rlimit_memory_mb(config)
        raise DagsterBentoSandboxUnavailableError(
            f"The memory limit of {config.memory_limit_mb} MB (memory_limit_mb) is too low where it is "
            f"enforced with rlimits (no cgroup for the kernel, SandboxConfig.resource_limits="
            f"{config.resource_limits!r}): after /tmp and /dev/shm, the kernel would have less than "
            f"{MIN_RLIMIT_DATA_MB} MB for its own data, and "
            "pandas/pyarrow then hang instead of failing. "
            f"Set memory_limit_mb to at least {floor}, or run where the kernel can get a cgroup "
            f"(see ${CGROUP_PARENT_ENV})."
        )
    return plan


def _cgroup_script(plan: LimitPlan) -> str:
    """Shell lines that put the launcher (then bwrap and the kernel, which it execs) into a new cgroup
    ``bento-<pid>`` with the plan's memory and task limits. Stops the launch on any failure (set -e)."""
    assert plan.cgroup is not None
    lines: list[str] = []
    writes: list[tuple[str, str, str]] = []  # (dir variable, file, value)
    if plan.cgroup.version == 1:
        lines.append(
            'while IFS=: read -r _ c p; do case ",$c," in *,memory,*) m=$p;; *,pids,*) q=$p;; esac; '
            "done < /proc/self/cgroup"
        )
        dirs = []
        if plan.memory is not None:
            lines.append(f'm={_CGROUP_ROOT}/memory"${{m%/}}"/{_CGROUP_PREFIX}$$')
            dirs.append("m")
            writes += [("m", "memory.limit_in_bytes", str(plan.memory)),
                       ("m", "?memory.memsw.limit_in_bytes", str(plan.memory))]  # no swap on top, if counted
        if plan.tasks is not None:
            lines.append(f'q={_CGROUP_ROOT}/pids"${{q%/}}"/{_CGROUP_PREFIX}$$')
            dirs.append("q")
            writes.append(("q", "pids.max", str(plan.tasks)))
    else:
        assert plan.cgroup.parent is not None
        lines.append(f"d={shlex.quote(plan.cgroup.parent)}/{_CGROUP_PREFIX}$$")
        dirs = ["d"]
        if plan.memory is not None:
            writes += [("d", "memory.max", str(plan.memory)), ("d", "?memory.swap.max", "0"),
                       ("d", "?memory.oom.group", "1")]
        if plan.tasks is not None:
            writes.append(("d", "pids.max", str(plan.tasks)))
    for var in dirs:  # a leftover of an earlier process with this pid is empty: remove it
        lines.append(f'rmdir "${var}" 2>/dev/null || :; mkdir "${var}"')
    for var, name, value in writes:
        if name.startswith("?"):
            name = name[1:]
            lines.append(f'if [ -e "${var}/{name}" ]; then echo {value} > "${var}/{name}"; fi')
        else:
            lines.append(f'echo {value} > "${var}/{name}"')
    for var in dirs:
        lines.append(f'echo $$ > "${var}/cgroup.procs"')
    return "\n".join(lines)


def _launcher_script(plan: LimitPlan | None, seccomp: bool) -> str:
    """The ``sh -c`` script that starts a bwrap kernel: join the kernel's cgroup (if any), then exec
    the command after ``--`` with the seccomp filter file (``$1``) open on the descriptor bwrap reads."""
    lines = ["set -e", 'f=$1; shift; [ "$1" = -- ]; shift']
    if plan is not None and plan.cgroup is not None:
        lines.append(_cgroup_script(plan))
    lines.append(f'exec "$@" {_SECCOMP_FD}<"$f"' if seccomp else 'exec "$@"')
    return "\n".join(lines) + "\n"


def _cgroup_dirs(host: CgroupHost, pid: int | None = None) -> list[str]:
    """This process's parents of kernel cgroups (or the cgroups of the kernel launched as ``pid``)."""
    if host.version == 2:
        assert host.parent is not None
        parents = [host.parent]
    else:
        own = _own_cgroups()
        parents = [f"{_CGROUP_ROOT}/{c}{own.get(c, '/').rstrip('/')}" for c in ("memory", "pids")]
    if pid is None:
        return parents
    return [f"{parent}/{_CGROUP_PREFIX}{pid}" for parent in parents]


def sweep_kernel_cgroups(min_age_s: float = 60.0) -> None:
    """Remove the empty cgroups of kernels that ended (``bento-<pid>`` under this process's cgroups).

    rmdir only ever removes an empty cgroup, so a live kernel's cgroup is never touched; young ones are
    left alone so as not to race a launcher between its mkdir and joining the cgroup."""
    host = find_cgroup_host()
    if host is None:
        return
    now = time.time()
    for parent in _cgroup_dirs(host):
        with contextlib.suppress(OSError), os.scandir(parent) as entries:
            for entry in entries:
                if entry.name.startswith(_CGROUP_PREFIX) and entry.is_dir(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        if now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s:
                            os.rmdir(entry.path)


def _remove_kernel_cgroups(pid: int | None, wait_s: float = 10.0) -> None:
    """Remove the cgroups of the kernel launched as ``pid`` once its last process is gone.

    The kernel's processes die a moment after its launcher (bwrap's --die-with-parent), and rmdir
    refuses a cgroup that still has one, so a daemon thread retries for ``wait_s``; whatever is left
    (the interpreter exited first) is removed by the next `sweep_kernel_cgroups`."""
    host = find_cgroup_host() if pid is not None else None
    if host is None:
        return
    paths = _cgroup_dirs(host, pid)

    def remove() -> None:
        deadline = time.monotonic() + wait_s
        left = list(paths)
        while left:
            for path in list(left):
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    left.remove(path)
                except OSError:  # EBUSY: a process is still in it
                    continue
                else:
                    left.remove(path)
            if not left or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    threading.Thread(target=remove, name="bento-cgroup-cleanup", daemon=True).start()


def _oom_killed(pid: int | None) -> bool:
    """Whether the kernel launched as ``pid`` was killed by its cgroup's memory limit."""
    host = find_cgroup_host() if pid is not None else None
    if host is None:
        return False
    for path in _cgroup_dirs(host, pid):
        for name in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError):
                for line in Path(path, name).read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                        return True
    return False


# --------------------------------------------------------------------------------------------------
# The seccomp filter
# --------------------------------------------------------------------------------------------------

# Refused with EPERM: system calls a notebook has no use for that open kernel attack surface or reach
# past the sandbox (most also need capabilities the kernel does not have: this is the second wall).
_DENIED_SYSCALLS: tuple[str, ...] = (
    # namespaces and mounts (clone with namespace flags is handled below)
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # other processes' memory and file handles
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "open_by_handle_at", "name_to_handle_at",
    # the kernel itself
    "kexec_load", "kexec_file_load", "bpf", "perf_event_open", "init_module", "finit_module",
    "delete_module", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "acct", "quotactl", "swapon", "swapoff", "reboot", "syslog",
    "iopl", "ioperm", "vhangup", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "lookup_dcookie", "uselib", "ustat", "sysfs", "fanotify_init", "nfsservctl", "vm86", "vm86old",
    "create_module", "get_kernel_syms", "query_module", "_sysctl", "afs_syscall",
)
# Refused under rlimits only: memory no rlimit counts (with a cgroup, it is counted like any other).
_UNCOUNTED_MEMORY_SYSCALLS: tuple[str, ...] = ("memfd_create", "memfd_secret", "shmget")
_CLONE_NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
# personality() bits that weaken the process (no ASLR, executable data, address-space quirks).
_PERSONALITY_FLAGS: tuple[int, ...] = (0x0040000, 0x0400000, 0x0200000, 0x0800000, 0x4000000, 0x0080000)
# AF_UNIX (the kernel's ipc sockets), AF_INET and AF_INET6 (only a loopback exists), AF_NETLINK (getifaddrs,
# which ZeroMQ calls; it sees the sandbox's own network namespace)
_ALLOWED_SOCKET_FAMILIES = (1, 2, 10, 16)
_MAP_SHARED_ANONYMOUS = 0x01 | 0x20

_SECCOMP_CACHE: dict[bool, bytes] = {}


def seccomp_filter(*, count_shared_memory: bool) -> bytes:
    """The kernel's seccomp filter as classic BPF for ``bwrap --seccomp``, built with libseccomp.

    Everything not listed is allowed (an allow-list would break with every new library); listed calls
    fail with EPERM (``clone3`` with ENOSYS, so that libc falls back to ``clone``, whose flags the
    filter can see). ``count_shared_memory`` False (rlimit mode): shared anonymous mappings, SysV
    shared memory and memfd are refused as well, since no rlimit would count them.
    """
    cached = _SECCOMP_CACHE.get(count_shared_memory)
    if cached is not None:
        return cached
    try:
        import pyseccomp as sc
    except ImportError as e:  # pragma: no cover - a dependency
        raise DagsterBentoSandboxUnavailableError(
            "The seccomp filter needs the `pyseccomp` package and libseccomp (`apt-get install libseccomp2`)."
        ) from e
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        eperm = sc.ERRNO(errno.EPERM)

        def deny(name: str, *args: Any, action: int = eperm) -> None:
            try:
                f.add_rule(action, name, *args)
            except (OSError, ValueError, RuntimeError):
                if args:  # a call this architecture has, with an argument rule libseccomp refused
                    raise
                # a call this architecture does not have (e.g. vm86 on x86_64): nothing to refuse

        denied = _DENIED_SYSCALLS + (() if count_shared_memory else _UNCOUNTED_MEMORY_SYSCALLS)
        for name in denied:
            deny(name)
        deny("clone3", action=sc.ERRNO(errno.ENOSYS))
        for flag in _CLONE_NAMESPACE_FLAGS:
            deny("clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        for flag in _PERSONALITY_FLAGS:
            deny("personality", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        eafnosupport = sc.ERRNO(errno.EAFNOSUPPORT)
        top = max(_ALLOWED_SOCKET_FAMILIES)
        for family in range(top):
            if family not in _ALLOWED_SOCKET_FAMILIES:
                deny("socket", sc.Arg(0, sc.EQ, family), action=eafnosupport)
        deny("socket", sc.Arg(0, sc.GT, top), action=eafnosupport)
        if not count_shared_memory:
            deny("mmap", sc.Arg(3, sc.MASKED_EQ, _MAP_SHARED_ANONYMOUS, _MAP_SHARED_ANONYMOUS),
                 action=sc.ERRNO(errno.ENOMEM))
        with tempfile.TemporaryFile() as out:
            f.export_bpf(out)
            out.seek(0)
            data = out.read()
    except (OSError, RuntimeError, AttributeError) as e:
        raise DagsterBentoSandboxUnavailableError(
            f"Could not build the kernel's seccomp filter with libseccomp: {e}. Install libseccomp "
            "(`apt-get install libseccomp2`)."
        ) from e
    _SECCOMP_CACHE[count_shared_memory] = data
    return data


def _write_seccomp_filter(config: SandboxConfig, state_dir: Path) -> None:
    if config.backend != "bwrap":
        return
    plan = limit_plan(config)
    data = seccomp_filter(count_shared_memory=plan.cgroup is not None or plan.data is None)
    fd = os.open(state_dir / _SECCOMP_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


# --------------------------------------------------------------------------------------------------
# Kernel command lines (pure functions, unit-tested)
# --------------------------------------------------------------------------------------------------


def _is_under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _python_roots() -> list[str]:
    """The Python installation and the virtualenv, exactly (never a parent such as the project dir)."""
    roots: list[str] = []
    exe_real = os.path.realpath(sys.executable)
    candidates = [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    # A venv's python is a symlink into the base installation; make sure that target is bound too.
    candidates.append(os.path.dirname(os.path.dirname(exe_real)))
    for cand in candidates:
        real = os.path.realpath(cand)
        for p in dict.fromkeys([os.path.abspath(cand), real]):
            if not _is_under(p, ["/usr"]) and p not in roots:
                roots.append(p)
    return sorted(roots, key=len)


def _system_mounts() -> list[str]:
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


def _etc_mounts(state_dir: Path) -> list[str]:
    args: list[str] = []
    for entry in _ETC_ENTRIES:
        path = f"/etc/{entry}"
        if os.path.lexists(path) and os.path.exists(path):
            args += ["--ro-bind", path, path]
    for name in _GENERATED_ETC_FILES:
        args += ["--ro-bind", str(state_dir / name), f"/etc/{name}"]
    return args


def _write_identity_files(state_dir: Path) -> None:
    """Minimal /etc/passwd, /etc/group and /etc/hosts so libraries that look up the current user
    or ``localhost`` still work, without exposing the host's accounts or host names."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = "bento"
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = "bento"
    (state_dir / "passwd").write_text(f"{user}:x:{uid}:{gid}:{user}:/tmp:/bin/sh\n")
    (state_dir / "group").write_text(f"{group}:x:{gid}:\n")
    (state_dir / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{_SANDBOX_HOSTNAME}\n"
    )


def _kernel_env(config: SandboxConfig, run_dir: Path) -> dict[str, str]:
    """The kernel's whole environment. Nothing is inherited from the orchestrator (credentials)."""
    home = "/tmp" if config.backend == "bwrap" else str(run_dir / STATE_DIR_NAME / "home")
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = "bento"
    return {
        "PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp",
        "USER": user,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "agg",
    }


def bwrap_args(config: SandboxConfig, run_dir: Path, state_dir: Path) -> list[str]:
    """bubblewrap options (without the command) for a kernel whose only writable dir is run_dir.

    Order matters: later mounts go on top of earlier ones, and ``--remount-ro /`` comes last so the
    sandbox's root is read-only while run_dir and /tmp stay writable.
    """
    plan = limit_plan(config)
    args = [
        "--unshare-all",  # net, pid, ipc, uts, cgroup, user (bwrap brings up a private lo)
        "--unshare-user",  # also when the orchestrator is root (--unshare-all only tries), so that...
        "--disable-userns",  # ...the kernel cannot create user namespaces of its own
        "--seccomp",
        str(_SECCOMP_FD),  # the filter the launcher opened (kernel_argv); applied right before exec
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into the orchestrator's terminal
        "--cap-drop",
        "ALL",  # no setns() back into the host netns, no mounts
        "--clearenv",
        "--hostname",
        _SANDBOX_HOSTNAME,
        *_system_mounts(),
        *_etc_mounts(state_dir),
    ]
    run, state = str(run_dir), str(state_dir)
    args += ["--dev", "/dev", "--proc", "/proc"]
    # /dev/shm and /tmp: private tmpfs mounts of bounded size (--size applies to the next --tmpfs)
    for size, path in ((plan.shm, "/dev/shm"), (plan.tmp, "/tmp")):
        if size is not None:
            args += ["--size", str(size)]
        args += ["--tmpfs", path]
    # The Python installation and the virtualenv go on top of the private /tmp: a checkout (and its
    # .venv) may itself live under /tmp, which the tmpfs would otherwise hide.
    bound: list[str] = []
    for root in [*_python_roots(), *config.extra_ro_binds]:
        if root not in bound:
            bound.append(root)
            args += ["--ro-bind", root, root]
    args += ["--bind", run, run]
    # The state dir again, on itself: inside the sandbox it is now a mount point, which cannot be
    # renamed or removed (EBUSY), so the kernel cannot swap it for a symlink that the
    # orchestrator's cleanup (jupyter_client removes connection.json and the ipc paths) would follow.
    args += ["--bind", state, state]
    for sub in config.readonly_subdirs:
        args += ["--ro-bind", str(run_dir / sub), str(run_dir / sub)]
    args += ["--remount-ro", "/", "--chdir", run]
    for key, value in _kernel_env(config, run_dir).items():
        args += ["--setenv", key, value]
    return args


def _limit_prefix(config: SandboxConfig) -> list[str]:
    """``prlimit`` with the memory, task and file-size rlimits, or nothing if none is set."""
    plan = limit_plan(config)
    limits = []
    if plan.data is not None:
        limits.append(f"{_MEMORY_RLIMIT_FLAG}={plan.data}")
    if plan.fsize is not None:
        # RLIMIT_FSIZE: a write past the limit fails with EFBIG ("File too large"); Python ignores
        # SIGXFSZ, so the notebook gets an OSError instead of being killed.
        limits.append(f"--fsize={plan.fsize}")
    if plan.tasks is not None and config.backend == "bwrap":
        # RLIMIT_NPROC counts the uid's tasks in the sandbox's user namespace (unsandboxed, all of the
        # user's processes: not for backend none); it does not bind uid 0 (the kernel when the
        # orchestrator is root): there the cgroup's pids.max does.
        limits.append(f"--nproc={plan.tasks}")
    if not limits:
        return []
    return [_program(PRLIMIT_EXECUTABLE), *limits, "--"]


def _program(name: str) -> str:
    """The absolute, resolved path of a program of the kernel command line (bwrap's execvp runs in
    the sandbox, where a relative path or a name looked up on PATH could mean something else)."""
    return os.path.realpath(_which(name) or name)


def kernel_python() -> str:
    """This interpreter as an absolute path without ``..`` that works inside the sandbox.

    Its directory is resolved (``../.venv/bin/python`` started from ``tests/`` names a directory the
    sandbox does not have) but not the file itself: a virtualenv's ``python`` is a symlink to the base
    interpreter, and Python finds its virtualenv from the name it was started by.
    """
    exe = os.path.abspath(sys.executable)
    return os.path.join(os.path.realpath(os.path.dirname(exe)), os.path.basename(exe))


def kernel_argv(config: SandboxConfig, run_dir: Path, state_dir: Path) -> list[str]:
    """The kernelspec argv for the bwrap and none backends (``{connection_file}`` is a template).

    It starts with ``env -i`` so the launched process (bwrap, whose pid-1 helper is visible as
    /proc/1/environ inside the sandbox, or the unsandboxed kernel) has an empty environment, whatever
    environment jupyter_client hands to Popen.
    """
    env = _program(ENV_EXECUTABLE)
    # faulthandler: a crash in native code leaves a Python stack in the kernel log (error message).
    python = [kernel_python(), "-X", "faulthandler", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    limit = _limit_prefix(config)
    if config.backend == "bwrap":
        # sh: the launcher script joins the kernel's cgroup and opens the seccomp filter for bwrap
        launcher = [_program(SH_EXECUTABLE), "-c", _launcher_script(limit_plan(config), seccomp=True),
                    "bento-launch", str(state_dir / _SECCOMP_FILE), "--"]
        bwrap = _program(BWRAP_EXECUTABLE)
        return [env, "-i", *launcher, bwrap, *bwrap_args(config, run_dir, state_dir), "--", *limit, *python]
    if config.backend == "none":
        assignments = [f"{k}={v}" for k, v in _kernel_env(config, run_dir).items()]
        return [env, "-i", *assignments, *limit, *python]
    raise ValueError(f"backend {config.backend!r} does not use a local kernel command")


def docker_container_kwargs(config: SandboxConfig, run_dir: Path, connection_file: Path) -> dict[str, Any]:
    """Keyword arguments for ``docker.containers.run`` that start the kernel container.

    The run dir is mounted at the same path so the connection file and the ipc sockets it names
    mean the same thing on both sides. No network, no capabilities, read-only root, no host env.
    This needs the engine on the same host (a local socket, not a remote DOCKER_HOST or a Docker
    Desktop VM), because nbclient connects to the kernel's Unix sockets in the bind mount.
    The image must provide ``python`` with ipykernel and the notebook's libraries.
    """
    if not config.docker_image:
        raise ValueError("docker_image is required for backend='docker'")
    run = str(run_dir)
    kwargs: dict[str, Any] = {
        "image": config.docker_image,
        "command": [
            "python",
            "-m",
            "ipykernel_launcher",
            "-f",
            str(connection_file),
            "--HistoryManager.hist_file=:memory:",
        ],
        "detach": True,
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev" + (f",size={config.tmp_size_mb}m" if config.tmp_size_mb else "")},
        "volumes": {run: {"bind": run, "mode": "rw"}},
        "working_dir": run,
        "user": f"{os.getuid()}:{os.getgid()}",
        "environment": {"HOME": "/tmp", "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "agg"},
        "init": True,
        "labels": {"dagster-bento.role": "kernel"},
    }
    state = str(connection_file.parent)
    if state != run and _is_under(state, [run]):
        # Pin the state dir (a mount point cannot be renamed or removed), as bwrap_args does.
        kwargs["volumes"][state] = {"bind": state, "mode": "rw"}
    for path in [*config.extra_ro_binds, *(str(run_dir / sub) for sub in config.readonly_subdirs)]:
        kwargs["volumes"][path] = {"bind": path, "mode": "ro"}
    if config.max_file_mb is not None:
        fsize = config.max_file_mb * 1024 * 1024
        kwargs["ulimits"] = [{"Name": "fsize", "Soft": fsize, "Hard": fsize}]
    if config.max_processes is not None:
        kwargs["pids_limit"] = config.max_processes  # the container's pids cgroup
    if config.shm_size_mb is not None:
        kwargs["shm_size"] = f"{config.shm_size_mb}m"  # counted by the container's memory cgroup as well
    if config.memory_limit_mb is not None:
        kwargs["mem_limit"] = f"{config.memory_limit_mb}m"
        kwargs["memswap_limit"] = f"{config.memory_limit_mb}m"  # no swap on top
    return kwargs


class _DockerProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launches the kernel as a container; lifecycle calls map onto the container.

    Reuses LocalProvisioner.pre_launch, which writes the connection file into the run dir.
    ``cleanup`` keeps the stopped container so its logs and OOM flag can go into the error message;
    `execute_notebook` calls `remove` at the very end of every run.
    """

    config_for_run: Any = None
    run_dir: Any = None
    container: Any = None
    _client: Any = None

    @property
    def has_process(self) -> bool:
        return self.container is not None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        self._client = _docker_client()
        kw = docker_container_kwargs(self.config_for_run, self.run_dir, Path(self.parent.connection_file))
        kw["name"] = f"bento-kernel-{self.kernel_id}"
        self.container = await asyncio.to_thread(self._client.containers.run, **kw)
        return self.connection_info

    async def poll(self) -> int | None:
        if self.container is None:
            return 0
        try:
            await asyncio.to_thread(self.container.reload)
        except Exception:  # removed behind our back, or the engine went away: treat as dead
            return 255
        state = self.container.attrs.get("State", {})
        if state.get("Status") in ("created", "running", "restarting"):
            return None
        return int(state.get("ExitCode", 0))

    async def wait(self) -> int | None:
        while (ret := await self.poll()) is None:
            await asyncio.sleep(0.1)
        return ret

    async def send_signal(self, signum: int) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.container.kill, signal=int(signum))

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        pass

    async def remove(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.container.remove, force=True)
            self.container = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def oom_killed(self) -> bool:
        with contextlib.suppress(Exception):
            return bool(self.container.attrs["State"]["OOMKilled"])
        return False

    def log_tail(self) -> str:
        with contextlib.suppress(Exception):
            return self.container.logs(tail=30).decode(errors="replace")
        return ""


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Progress:
    """What nbclient was doing when something went wrong (for error messages)."""

    cell: int | None = None  # index in the executed notebook
    shown: int | None = None  # the same cell as the user numbers it (see execute_notebook's cell_number)
    kernel_ready: bool = False


def _remove_state_dir(state: Path) -> None:
    """Remove the state dir without following anything a notebook may have put there (a symlink a
    previous run's notebook left at the top is unlinked itself): `workdirs.remove_tree`."""
    from dagster_bento.execution.workdirs import remove_tree

    remove_tree(state)


def _prepare_state_dir(config: SandboxConfig, run_dir: Path, label: str) -> Path:
    state = run_dir / STATE_DIR_NAME
    _remove_state_dir(state)
    # Not parents=True and not exist_ok: if anything is left in the way, fail rather than write
    # through it.
    try:
        state.mkdir(mode=0o700)
    except OSError as e:
        raise DagsterBentoRunError(
            f"{label}: could not create the kernel state directory {state}: {e}", notebook=label
        ) from e
    (state / "kernels").mkdir()
    (state / "kernels" / KERNEL_NAME).mkdir()
    (state / "home").mkdir()
    ipc_prefix = state / "ipc"
    if len(str(ipc_prefix)) > _MAX_IPC_PATH:
        raise DagsterBentoSandboxUnavailableError(
            f"{label}: the run directory path is too long for the kernel's ipc sockets "
            f"({len(str(ipc_prefix))} > {_MAX_IPC_PATH} characters: {ipc_prefix}). Use a shorter run "
            "directory.",
            notebook=label,
        )
    _write_identity_files(state)
    _write_seccomp_filter(config, state)
    sweep_kernel_cgroups()  # of kernels that ended, e.g. in a process that was killed
    argv = (
        kernel_argv(config, run_dir, state)
        if config.backend != "docker"
        else ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    )
    spec = {"argv": argv, "display_name": "dagster-bento sandbox", "language": "python", "env": {}}
    (state / "kernels" / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec, indent=1))
    return state


class _ReadyClient(AsyncKernelClient):  # type: ignore[misc]
    """jupyter_client's client with a faster ``wait_for_ready``.

    The stock one ends by draining IOPub until it has been silent for 0.2 s, which is a fixed 0.2 s on
    every run: the whole cost of a pooled kernel's readiness check. Here, IOPub counts as connected as
    soon as one message arrives after a kernel_info reply (as in the stock check), and what is left
    of those status messages is dropped without waiting for silence; nbclient ignores IOPub messages
    of other requests anyway (it matches each to its execute request).
    """

    async def wait_for_ready(self, timeout: float | None = None) -> None:  # type: ignore[override]
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while True:
            self.kernel_info()
            try:
                msg = await self.shell_channel.get_msg(timeout=1)
            except queue.Empty:
                msg = None
            if msg is not None and msg["msg_type"] == "kernel_info_reply":
                try:
                    await self.iopub_channel.get_msg(timeout=0.05)
                except queue.Empty:
                    pass  # IOPub not connected yet: ask again
                else:
                    self._handle_kernel_info_reply(msg)
                    break
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
        while True:
            try:
                await self.iopub_channel.get_msg(timeout=0.005)
            except queue.Empty:
                break


def _make_kernel_manager(
    config: SandboxConfig, run_dir: Path, state: Path
) -> AsyncKernelManager:
    """An async kernel manager (a dead kernel must surface as DeadKernelError, not a hang) that uses
    our own kernelspec and keeps every file it creates inside the run directory."""
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(
            kernel_dirs=[str(state / "kernels")], ensure_native_kernel=False
        ),
        transport="ipc",
        ip=str(state / "ipc"),
        connection_file=str(state / "connection.json"),
        log=_INTERNAL_LOG,
    )
    km.kernel_id = str(uuid.uuid4())
    km.client_factory = _ReadyClient
    if config.backend == "docker":
        prov = _DockerProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
        prov.config_for_run = config
        prov.run_dir = run_dir
        km.provisioner = prov
    return km


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a fresh event loop in a worker thread and wait for it.

    Why a thread: nbclient installs SIGINT/SIGTERM handlers on a main-thread loop, which would
    swallow Dagster's run-termination interrupt and turn it into a "kernel died" failure. On a worker
    thread it cannot, and the interrupt arrives here, in the caller's thread: the run is cancelled
    (which kills the kernel) and the interrupt is re-raised. It also works when the caller already
    has a running loop.
    """
    loop = asyncio.new_event_loop()

    def run() -> _T:
        try:
            return loop.run_until_complete(coro)
        finally:
            with contextlib.suppress(Exception):
                _cancel_all_tasks(loop)
            loop.close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bento-kernel")
    future = pool.submit(run)
    try:
        return future.result()
    except BaseException:
        if not future.done():  # interrupted while waiting: stop the run, kill the kernel, re-raise
            with contextlib.suppress(RuntimeError):  # the loop finished (closed) in the meantime
                loop.call_soon_threadsafe(_cancel_all_tasks_soon, loop)
            concurrent.futures.wait([future])
        raise
    finally:
        pool.shutdown(wait=True)


def _cancel_all_tasks_soon(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does on exit: cancel leftovers (nbclient's kernel-alive poller) and reap them."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def execute_notebook(
    nb: NotebookNode,
    *,
    run_dir: Path,
    config: SandboxConfig,
    notebook_label: str,
    log: logging.Logger | None = None,
    cell_number: Callable[[int], int] | None = None,
    before_cell: Callable[[int], Any] | None = None,
    lease: Any = None,
) -> NotebookNode:
    """Execute every code cell of ``nb`` in a sandboxed kernel whose cwd is ``run_dir``.

    ``cell_number`` maps an index of ``nb`` to the index the user knows (the rewrite inserts cells);
    errors and messages use it. ``before_cell(index)`` runs before each cell; it may return an
    awaitable (e.g. to wait until the orchestrator has fetched that cell's input while the kernel was
    already starting) and whatever it raises ends the run.

    ``lease``: a `pool.KernelLease` whose pre-started kernel (already sandboxed with ``config``'s
    settings, cwd ``run_dir``) runs the notebook instead of a new one; it is killed at the end all the
    same, and its state directory belongs to the pool.

    Returns the executed copy (``nb`` itself is not modified). On failure raises a
    `DagsterBentoRunError` subclass with the partially executed notebook attached as
    ``.executed_nb`` so the caller can save it.
    """
    log = log or logging.getLogger(__name__)
    run_dir = Path(run_dir).resolve()
    executed = copy.deepcopy(nb)
    try:
        _check_before_run(config, run_dir, notebook_label)
        if config.backend == "none":
            log.warning(NONE_BACKEND_WARNING)
        log.info(_describe_run(config, notebook_label))
        if lease is not None:
            if lease.run_dir.resolve() != run_dir:
                raise ValueError(f"run_dir {run_dir} is not the leased kernel's {lease.run_dir}")
            _run_sync(_execute(executed, run_dir, config, notebook_label, cell_number or (lambda i: i),
                               before_cell, lease=lease))
        else:
            state = _prepare_state_dir(config, run_dir, notebook_label)
            try:
                _run_sync(_execute(executed, run_dir, config, notebook_label, cell_number or (lambda i: i),
                                   before_cell, state=state))
            finally:
                _remove_state_dir(state)
    except DagsterBentoRunError as e:
        # Every run error carries the notebook as far as it got (unexecuted if the kernel never ran).
        e.executed_nb = executed  # type: ignore[attr-defined]
        raise
    return executed


def _describe_run(config: SandboxConfig, label: str) -> str:
    memory = f"{config.memory_limit_mb} MB" if config.memory_limit_mb is not None else "none"
    if config.backend == "bwrap" and config.memory_limit_mb is not None:
        memory += " by a cgroup" if limit_plan(config).cgroup is not None else " by rlimits"
    cell = f", {config.cell_timeout_s:g} s per cell" if config.cell_timeout_s is not None else ""
    return (
        f"executing {label} in a {config.backend} sandbox (memory limit {memory}, "
        f"time limit {config.timeout_s:g} s{cell})"
    )


def _check_before_run(config: SandboxConfig, run_dir: Path, label: str) -> None:
    if not run_dir.is_dir():
        raise DagsterBentoSandboxUnavailableError(
            f"{label}: run directory {run_dir} does not exist; create it before the run.", notebook=label
        )
    try:
        check_sandbox_available(config)
    except DagsterBentoSandboxUnavailableError as e:
        raise DagsterBentoSandboxUnavailableError(f"{label}: {e.message}", notebook=label) from e


async def _execute(
    nb: NotebookNode, run_dir: Path, config: SandboxConfig, label: str,
    cell_number: Callable[[int], int], before_cell: Callable[[int], Any] | None = None, *,
    state: Path | None = None, lease: Any = None,
) -> None:
    progress = _Progress()

    async def on_cell_execute(cell: NotebookNode, cell_index: int) -> None:
        progress.cell = cell_index
        progress.shown = cell_number(cell_index)
        if before_cell is not None:
            waiting = before_cell(cell_index)
            if inspect.isawaitable(waiting):
                await waiting

    def on_notebook_start(notebook: NotebookNode) -> None:
        progress.kernel_ready = True

    if lease is not None:
        km = lease.kernel_manager()
    else:
        assert state is not None
        km = _make_kernel_manager(config, run_dir, state)
    docker_provisioner = km.provisioner if isinstance(km.provisioner, _DockerProvisioner) else None
    client = NotebookClient(
        nb,
        km=km,
        timeout=config.cell_timeout_s,
        startup_timeout=int(max(1, config.startup_timeout_s)),
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(run_dir)}},
        shutdown_kernel="immediate",
        record_timing=True,
        allow_errors=False,
        interrupt_on_timeout=False,
        on_cell_execute=on_cell_execute,
        on_notebook_start=on_notebook_start,
        log=_INTERNAL_LOG,
    )
    # The kernel's stderr: an unnamed file in the orchestrator's temp dir, never a path the sandbox
    # can see or replace (a symlink there would make the orchestrator read any file, a FIFO hang it).
    with tempfile.TemporaryFile(prefix="bento-kernel-log-") as kernel_log:

        def read_log() -> str:
            if lease is not None:  # the pool started the kernel and holds its stderr
                return str(lease.log_tail())
            if docker_provisioner is not None:
                return docker_provisioner.log_tail()
            return _log_tail(kernel_log)

        # env={}: belt and braces with the argv's `env -i`. stdout only carries ipykernel's banner.
        run = client.async_execute(env={}, stdout=subprocess.DEVNULL, stderr=kernel_log)
        task = asyncio.ensure_future(run)
        try:
            done, _ = await asyncio.wait({task}, timeout=config.timeout_s)
            if not done:
                await _cancel(task)
                raise _whole_run_timeout(config, label, progress)
            try:
                task.result()
            except CellExecutionError as e:
                raise _cell_error(e, nb, config, label, progress, run_dir) from None
            except CellTimeoutError as e:
                raise _cell_timeout(config, label, progress) from e
            except DeadKernelError as e:
                exit_status = await _exit_status(km)
                raise _kernel_died(km, config, label, progress, exit_status, read_log,
                                   oom=_oom_killed(_kernel_pid(km, lease))) from e
            except RuntimeError as e:
                if progress.kernel_ready:
                    raise
                raise await _startup_error(e, km, config, label, read_log,
                                           oom=_oom_killed(_kernel_pid(km, lease))) from e
            except OSError as e:
                if progress.kernel_ready:
                    raise
                raise DagsterBentoSandboxUnavailableError(
                    f"{label}: the sandboxed kernel could not be launched: {e}", notebook=label
                ) from e
        finally:
            pid = _kernel_pid(km, lease)
            await _shutdown(client, km)
            _remove_kernel_cgroups(pid)
            if docker_provisioner is not None:
                await docker_provisioner.remove()


def _kernel_pid(km: AsyncKernelManager, lease: Any) -> int | None:
    """The pid of the kernel's launcher (the name of its cgroup), if this process started it."""
    process = getattr(lease, "process", None) if lease is not None else getattr(km.provisioner, "process", None)
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


async def _cancel(task: "asyncio.Future[Any]") -> None:
    """Cancel nbclient's run and wait for it; whatever it raises while unwinding is moot."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _shutdown(client: NotebookClient, km: AsyncKernelManager) -> None:
    """Kill the kernel immediately and release sockets; nbclient leaves this to us since we own km."""
    # nbclient registers an atexit hook and only removes it on the happy path.
    atexit.unregister(client._cleanup_kernel)
    kc = client.kc
    if kc is not None:
        with contextlib.suppress(Exception):
            kc.stop_channels()
        client.kc = None
    with contextlib.suppress(Exception):
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    with contextlib.suppress(Exception):
        await km.cleanup_resources()


async def _exit_status(km: AsyncKernelManager) -> int | None:
    with contextlib.suppress(Exception):
        if km.provisioner is not None:
            return await km.provisioner.poll()
    return None


def _describe_exit(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    sig = -status if status < 0 else status - 128 if status > 128 else None
    if sig is not None:
        with contextlib.suppress(ValueError):
            return f"exit status {status}, killed by {signal.Signals(sig).name}"
    return f"exit status {status}"


def _log_tail(log: IO[bytes], lines: int = 15) -> str:
    """The useful part of the kernel's stderr: from a fatal error (faulthandler prints every
    thread's stack after it, which would push the cause out of a plain tail), else the last lines.

    Reads the orchestrator's own descriptor with pread (no reopening by name, and the offset the
    kernel writes at is left alone), and only the last _LOG_TAIL_BYTES."""
    try:
        fd = log.fileno()
        size = os.fstat(fd).st_size
        start = max(0, size - _LOG_TAIL_BYTES)
        data = os.pread(fd, size - start, start)
    except (OSError, ValueError):
        return ""
    text = data.decode(errors="replace")
    all_lines = text.strip().splitlines()
    for i, line in enumerate(all_lines):
        if line.startswith("Fatal Python error"):
            return "\n".join(all_lines[max(0, i - 3) : i + lines])
    return "\n".join(all_lines[-lines:])


def _where(progress: _Progress) -> str:
    return f"cell {progress.shown}" if progress.shown is not None else "kernel startup"


def _memory_hint(config: SandboxConfig) -> str:
    if config.memory_limit_mb is None:
        return ""
    return (
        f" The kernel's memory limit is {config.memory_limit_mb} MB (SandboxConfig.memory_limit_mb): "
        "process the data in smaller pieces or raise the limit."
    )


def _cell_error(
    e: CellExecutionError, nb: NotebookNode, config: SandboxConfig, label: str, progress: _Progress,
    run_dir: Path | None = None,
) -> DagsterBentoCellError:
    index = progress.cell
    traceback = _error_traceback(nb, index) or str(e.traceback).splitlines()
    message = f"{label}: cell {progress.shown} raised {e.ename}" + (f": {e.evalue}" if e.evalue else "")
    if "MemoryError" in e.ename:
        message += "." + _memory_hint(config)
    elif "File too large" in (e.evalue or "") and config.max_file_mb is not None:
        message += (
            f". The kernel cannot write a file larger than {config.max_file_mb} MB "
            "(SandboxConfig.max_file_mb): write smaller files or raise the limit."
        )
    elif "No space left on device" in (e.evalue or ""):
        message += "." + _no_space_hint(e.evalue or "", config, run_dir)
    message += "\nFix the cell and re-run; the executed notebook shows the full traceback."
    return DagsterBentoCellError(
        message, ename=e.ename, evalue=e.evalue, traceback=traceback, notebook=label, cell=progress.shown
    )


def _free_bytes(path: Path) -> int | None:
    """Free space of the file system holding ``path`` (the run directory itself, a mount point inside
    the sandbox that the notebook cannot replace; nothing in it is opened)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _no_space_hint(evalue: str, config: SandboxConfig, run_dir: Path | None) -> str:
    """Which file system was full: the sandbox's /tmp or /dev/shm (a limit of the run), or the disk of
    the run directory (an operator's problem: writing elsewhere in the sandbox cannot help)."""
    named = evalue.rsplit(": ", 1)[-1].strip("'\"") if ": '" in evalue or ': "' in evalue else ""
    mib = 1024 * 1024
    plan = limit_plan(config) if config.backend == "bwrap" else None  # the sizes in force (rlimits shrink them)
    tmp = plan.tmp // mib if plan is not None and plan.tmp is not None else config.tmp_size_mb
    shm = plan.shm // mib if plan is not None and plan.shm is not None else config.shm_size_mb
    tmpfs = {"/tmp": ("tmp_size_mb", tmp), "/dev/shm": ("shm_size_mb", shm)}
    free = _free_bytes(run_dir) if run_dir is not None else None
    in_run_dir = bool(named) and (
        not named.startswith("/") or (run_dir is not None and _is_under(named, [str(run_dir)]))
    )
    if not in_run_dir:  # the run directory may itself be under /tmp on the host (bound over the private /tmp)
        for mount, (field, size) in tmpfs.items():
            if named == mount or named.startswith(mount + "/"):
                limit = f"at most {size} MB (SandboxConfig.{field})" if size is not None else "a bounded size"
                return (f" {mount} in the sandbox holds {limit} and is full: write large files to the working "
                        f"directory, or raise the limit.")
    if in_run_dir or (free is not None and free < 64 * mib):
        return (f" The disk that holds the run directory ({run_dir}) is full ({(free or 0) // mib} MB "
                "free): this is not a limit of the notebook; free space there or move the run directories "
                "(bento.yaml `run_root` or $BENTO_RUN_ROOT) to a larger disk.")
    sizes = ", ".join(f"{m} {s} MB" for m, (_, s) in tmpfs.items() if s is not None)
    return (f" The sandbox's /tmp or /dev/shm is full ({sizes}; SandboxConfig.tmp_size_mb, shm_size_mb): "
            "write large files to the working directory, or raise the limit.")


def _error_traceback(nb: NotebookNode, index: int | None) -> list[str]:
    if index is None:
        return []
    for output in nb.cells[index].get("outputs", []):
        if output.get("output_type") == "error":
            return list(output.get("traceback", []))
    return []


def _cell_timeout(config: SandboxConfig, label: str, progress: _Progress) -> DagsterBentoTimeoutError:
    return DagsterBentoTimeoutError(
        f"{label}: {_where(progress)} did not finish within the cell time limit of "
        f"{config.cell_timeout_s:g} s (SandboxConfig.cell_timeout_s); the kernel was stopped. Make "
        "the cell faster or raise the limit.",
        notebook=label,
        cell=progress.shown,
    )


def _whole_run_timeout(config: SandboxConfig, label: str, progress: _Progress) -> DagsterBentoTimeoutError:
    return DagsterBentoTimeoutError(
        f"{label}: the run exceeded its time limit of {config.timeout_s:g} s "
        f"(SandboxConfig.timeout_s) during {_where(progress)}; the kernel was stopped. Make the "
        "notebook faster or raise the limit.",
        notebook=label,
        cell=progress.shown,
    )


def _kernel_died(
    km: AsyncKernelManager,
    config: SandboxConfig,
    label: str,
    progress: _Progress,
    status: int | None,
    read_log: Callable[[], str],
    oom: bool = False,
) -> DagsterBentoKernelDiedError:
    prov = km.provisioner
    docker_oom = isinstance(prov, _DockerProvisioner) and prov.oom_killed()
    message = f"{label}: the kernel died during {_where(progress)} ({_describe_exit(status)})."
    if docker_oom:
        message += f" The container was killed for exceeding its memory limit of {config.memory_limit_mb} MB."
    elif oom:
        message += (
            f" It was killed for exceeding its memory limit of {config.memory_limit_mb} MB, which counts "
            "everything the kernel holds: its data, shared memory and the files in /tmp and /dev/shm."
        )
    else:
        message += " Likely causes: the cell called os._exit() or crashed in native code"
        if config.memory_limit_mb is not None:
            message += f", or it exceeded the memory limit of {config.memory_limit_mb} MB"
        message += "."
    if config.memory_limit_mb is not None:
        message += " Raise SandboxConfig.memory_limit_mb if the cell needs more memory."
    tail = read_log()
    if tail:
        message += f"\nLast kernel output:\n{tail}"
    return DagsterBentoKernelDiedError(message, notebook=label, cell=progress.shown)


async def _startup_error(
    e: RuntimeError, km: AsyncKernelManager, config: SandboxConfig, label: str, read_log: Callable[[], str],
    oom: bool = False,
) -> DagsterBentoRunError:
    tail = read_log()
    detail = f"\nKernel output:\n{tail}" if tail else ""
    if "didn't respond" in str(e):
        return DagsterBentoTimeoutError(
            f"{label}: the {config.backend} kernel did not become ready within "
            f"{config.startup_timeout_s:g} s (SandboxConfig.startup_timeout_s).{detail}",
            notebook=label,
        )
    status = await _exit_status(km)
    if oom:
        return DagsterBentoKernelDiedError(
            f"{label}: the {config.backend} kernel was killed during startup ({_describe_exit(status)}) for "
            f"exceeding its memory limit of {config.memory_limit_mb} MB (SandboxConfig.memory_limit_mb): "
            f"too small to start the kernel; raise it.{detail}",
            notebook=label,
        )
    causes = [
        "ipykernel is missing from the kernel's Python environment",
        "the sandbox hides a file the kernel needs (SandboxConfig.extra_ro_binds)",
    ]
    if config.memory_limit_mb is not None:
        memory = (
            f"the memory limit of {config.memory_limit_mb} MB is too small to start Python "
            "(SandboxConfig.memory_limit_mb)"
        )
        looks_like_memory = any(w in tail for w in ("MemoryError", "Cannot allocate", "Resource temporarily"))
        causes.insert(0 if looks_like_memory else len(causes), memory)
    return DagsterBentoKernelDiedError(
        f"{label}: the {config.backend} kernel exited during startup ({_describe_exit(status)}): {e}. "
        f"Likely causes: {'; or '.join(causes)}.{detail}",
        notebook=label,
    )
