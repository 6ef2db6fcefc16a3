"""The Dagster resource that runs notebooks. The asset body is one line:
``yield from bento.run(context=context, job=job).stream()``."""

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from dagster_bento.spec import BentoJob


class BentoResource(dg.ConfigurableResource):
    """How notebooks run: warehouse, sandbox, limits, artifacts and lineage."""

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
        return SandboxConfig(
            backend=backend,  # type: ignore[arg-type]
            timeout_s=(spec and spec.timeout_seconds) or self.timeout_seconds,
            memory_limit_mb=(spec and spec.memory_limit_mb) or self.memory_limit_mb,
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
