"""The Dagster resource that runs notebooks. The asset body is one line:
``yield from bento.run(context=context, job=job).stream()``.

**Only the operator weakens isolation.** Every setting that decides isolation (sandbox, kernel pool,
limits), where data comes from or goes (warehouse, run root, artifacts, lineage) is fixed when the
code location loads, from the project's files (``bento.yaml``, specs) and the operator's environment
(``BENTO_*``), or by the Python code that builds the definitions. None of it is run config: the
launchpad, GraphQL ``launchRun`` and ``--config`` may only *narrow* a run (a shorter timeout, a lower
memory limit, no HTML copy). `BentoResource` is therefore a plain frozen model, not a
``ConfigurableResource``; `BentoResource.as_resource_definition` is what the definitions hold: a
resource whose config schema lists only the narrowing fields and whose operator settings live in a
closure that run config cannot reach. Any other key, or a value that widens, fails at resource
initialisation — before the kernel starts or anything is fetched — naming the field and where the
operator sets it.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic
from pydantic import Field

from dagster_bento.errors import DagsterBentoConfigError
from dagster_bento.spec import BentoJob

# Where an operator sets each field (for the error when run config tries to).
OPERATOR_FIELDS: Mapping[str, str] = {
    "project_dir": "the code location (build_bento_definitions(project_dir=...))",
    "warehouse_url": "bento.yaml `warehouse_url` or the BENTO_WAREHOUSE_URL environment variable",
    "artifacts_dir": "bento.yaml `artifacts_dir` or BENTO_ARTIFACTS_DIR",
    "run_root": "bento.yaml `run_root` or BENTO_RUN_ROOT",
    "sandbox": "bento.yaml `sandbox` or BENTO_SANDBOX (a spec may choose bwrap or docker)",
    "docker_image": "bento.yaml `docker_image`",
    "data_format": "bento.yaml `data_format` or a notebook's spec",
    "lineage_transport": "bento.yaml `lineage.transport` or BENTO_LINEAGE_TRANSPORT",
    "lineage_url": "bento.yaml `lineage.url` or BENTO_LINEAGE_URL",
    "lineage_file": "bento.yaml `lineage.file`",
    "kernel_pool": "bento.yaml `kernel_pool` or BENTO_KERNEL_POOL",
    "max_output_mb": "bento.yaml `max_output_mb`",
    "max_output_decoded_mb": "bento.yaml `max_output_decoded_mb`",
    "timeout_seconds": "bento.yaml `timeout_seconds` or a notebook's spec",
    "memory_limit_mb": "bento.yaml `memory_limit_mb` or a notebook's spec",
}
# What run config may set: each only narrows what the operator and the spec allow.
NARROWING_FIELDS: Mapping[str, str] = {
    "timeout_seconds": "a shorter wall-clock limit for this run (never longer than the operator's or the spec's)",
    "memory_limit_mb": "a lower kernel memory limit for this run (never higher than the operator's or the spec's)",
    "html": "false: keep no HTML rendering of the executed notebook for this run",
}


class BentoResource(pydantic.BaseModel):
    """How notebooks run: warehouse, sandbox, limits, artifacts and lineage (operator settings)."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    project_dir: str = Field(description="Project root holding notebooks/, purpose_zones.yaml and bento.yaml.")
    warehouse_url: str = Field(description="SQLAlchemy-style URL: duckdb:///path.duckdb or postgresql://user@host/db.")
    artifacts_dir: str = Field(default=".bento/artifacts",
                               description="Where executed notebooks (.ipynb + .html) are kept, one per run id; "
                                           "relative to project_dir.")
    run_root: str | None = Field(default=None,
                                 description="Parent of the per-run work directories (default: the system temp "
                                             "dir). Each run's directory is deleted after the run.")
    sandbox: str = Field(default="bwrap", description="bwrap (default), docker, or none (local development only; "
                                                      "logged loudly on every run).")
    docker_image: str | None = Field(default=None, description="Image for sandbox=docker.")
    timeout_seconds: float = Field(default=1800.0, description="Wall-clock limit of the notebook execution.")
    memory_limit_mb: int = Field(default=4096, description="Memory limit of the notebook's kernel.")
    data_format: str = Field(default="parquet", description="parquet (typed, default), arrow (Arrow IPC: typed, "
                                                                   "fastest) or csv (the seed's format).")
    lineage_transport: str = Field(default="file", description="OpenLineage transport: file, http, console or none.")
    lineage_url: str | None = Field(default=None, description="OpenLineage HTTP endpoint (Marquez-compatible).")
    lineage_file: str | None = Field(default=None, description="OpenLineage JSONL file; default "
                                                               "<artifacts_dir>/openlineage.jsonl.")
    html: bool = Field(default=True, description="Also keep an HTML rendering of each executed notebook.")
    kernel_pool: str = Field(default="auto",
                             description="Pre-started kernels (`dagster-bento kernel-pool`): 'auto' uses the "
                                         "project's pool if one is running, a socket path uses that pool, "
                                         "'off' always starts a kernel per run.")
    max_output_mb: int | None = Field(default=None, description="Largest output file on disk, MiB (default 10240); "
                                                                "larger or sparse files are refused before copying.")
    max_output_decoded_mb: int | None = Field(default=None,
                                              description="Largest output once decoded, MiB (default 4096); judged "
                                                          "from the file before decoding.")
    # Caps set by run config (narrowing only): applied after the spec's own limits.
    run_timeout_cap: float | None = Field(default=None, description="Run config: a shorter time limit.")
    run_memory_cap_mb: int | None = Field(default=None, description="Run config: a lower memory limit.")

    def as_resource_definition(self) -> dg.ResourceDefinition:
        """The resource the definitions hold: run config may only narrow (see the module docstring)."""
        operator = self

        def _init(context: dg.InitResourceContext) -> "BentoResource":
            return operator.narrowed(context.resource_config or {})

        schema = dg.Permissive({  # unknown keys reach `narrowed`, which names where the operator sets them
            "timeout_seconds": dg.Field(float, is_required=False, description=NARROWING_FIELDS["timeout_seconds"]),
            "memory_limit_mb": dg.Field(int, is_required=False, description=NARROWING_FIELDS["memory_limit_mb"]),
            "html": dg.Field(bool, is_required=False, description=NARROWING_FIELDS["html"]),
        })
        return dg.ResourceDefinition(
            resource_fn=_init, config_schema=schema,
            description="dagster-bento: runs scheduled notebooks. Operator settings (sandbox, warehouse, "
                        "paths, limits) come from bento.yaml and BENTO_* only; run config may narrow "
                        f"{', '.join(NARROWING_FIELDS)}.")

    def narrowed(self, config: Mapping[str, Any]) -> "BentoResource":
        """This resource with run config applied; refuses any setting that is not a narrowing."""
        problems = []
        for key in sorted(set(config) - set(NARROWING_FIELDS)):
            where = OPERATOR_FIELDS.get(key)
            problems.append(
                f"'{key}' is an operator setting and cannot be set in run config; the operator sets it in "
                f"{where}" if where else
                f"'{key}' is not a setting of the bento resource; run config may set only "
                f"{', '.join(NARROWING_FIELDS)}")
        update: dict[str, Any] = {}
        for field, cap, unit, verb, kind in (("timeout_seconds", "run_timeout_cap", "s", "shorten", float),
                                             ("memory_limit_mb", "run_memory_cap_mb", "MB", "lower", int)):
            value, limit = config.get(field), getattr(self, field)
            if value is None:
                continue
            if not value > 0 or value > limit:
                problems.append(f"'{field}: {value}' would not narrow the operator's limit of {limit:g} {unit}; "
                                f"run config may only {verb} it (the operator sets it in {OPERATOR_FIELDS[field]})")
            update[cap] = kind(value)
        if config.get("html") is not None:
            update["html"] = bool(config["html"]) and self.html
        if problems:
            raise DagsterBentoConfigError(
                "dagster-bento refused the run config of the 'bento' resource (nothing ran):\n"
                + "\n".join(f"  - {p}" for p in problems))
        return self.model_copy(update=update)

    @classmethod
    def for_project(cls, project: Any, *, warehouse_url: str) -> "BentoResource":
        config = project.config
        lineage = dict(config.lineage or {})
        return cls(
            project_dir=str(project.project_dir), warehouse_url=warehouse_url,
            artifacts_dir=os.environ.get("BENTO_ARTIFACTS_DIR", config.artifacts_dir),
            sandbox=os.environ.get("BENTO_SANDBOX", config.sandbox),
            timeout_seconds=config.timeout_seconds, memory_limit_mb=config.memory_limit_mb,
            data_format=config.data_format,
            lineage_transport=os.environ.get("BENTO_LINEAGE_TRANSPORT", lineage.get("transport", "file")),
            lineage_url=os.environ.get("BENTO_LINEAGE_URL", lineage.get("url")),
            lineage_file=lineage.get("file"),
            kernel_pool=os.environ.get("BENTO_KERNEL_POOL", str(config.kernel_pool)),
            run_root=_project_path(project.project_dir, os.environ.get("BENTO_RUN_ROOT") or config.run_root),
            docker_image=getattr(config, "docker_image", None),  # bento.yaml has no docker_image yet (issue 16)
            max_output_mb=config.max_output_mb, max_output_decoded_mb=config.max_output_decoded_mb,
        )

    @property
    def artifacts_path(self) -> Path:
        path = Path(self.artifacts_dir)
        return path if path.is_absolute() else Path(self.project_dir) / path

    @property
    def kernel_pool_socket(self) -> Path | None:
        """Where to ask for a pre-started kernel, or None when the pool is off."""
        value = self.kernel_pool.strip()
        if value.lower() in ("off", "false", "no", "none", "0", ""):
            return None
        if value.lower() in ("auto", "on", "true", "yes", "1"):
            from dagster_bento.execution.pool import default_socket_path

            return default_socket_path(self.project_dir)
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.project_dir) / path

    def sandbox_config(self, spec: Any = None) -> Any:
        """The sandbox of a run; ``spec`` (a notebook's schedule spec) may pick bwrap or docker and set
        its own limits, but only the operator (this resource, ``BENTO_SANDBOX``) can say none."""
        from dagster_bento.execution.sandbox import SandboxConfig

        backend = self.sandbox if self.sandbox == "none" else ((spec and spec.sandbox) or self.sandbox)
        timeout = (spec and spec.timeout_seconds) or self.timeout_seconds
        memory = (spec and spec.memory_limit_mb) or self.memory_limit_mb
        return SandboxConfig(
            backend=backend,  # type: ignore[arg-type]
            timeout_s=min(timeout, self.run_timeout_cap or timeout),
            memory_limit_mb=min(memory, self.run_memory_cap_mb or memory),
            docker_image=self.docker_image,
            readonly_subdirs=("inputs",))  # written by the fetch while the kernel already runs

    def run(self, *, context: dg.AssetExecutionContext, job: BentoJob) -> "Any":
        # The kernel starts first (from the pool, or a bwrap process started here, ~1 s until pandas is
        # imported in it) and the run stack is imported while it does: ~0.8 s in a fresh step process.
        from dagster_bento.execution.pool import acquire_kernel

        kernel = acquire_kernel(self, self.sandbox_config(job.spec), job, context.run_id, context.log)
        try:
            from dagster_bento.execution.runner import BentoInvocation
        except BaseException:
            if kernel is not None:
                kernel.close()
            raise
        return BentoInvocation(resource=self, context=context, job=job, kernel=kernel)


def _project_path(project_dir: Any, value: str | None) -> str | None:
    """A path from bento.yaml: relative to the project directory."""
    if not value:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(project_dir) / path)
