"""Step 5: one notebook run, end to end, in the order data moves.

check reads → fetch (orchestrator, with credentials) → rewrite → execute in the sandbox (no network,
no credentials) → keep the executed notebook → check writes → upload (one transaction) → report.
The run directory holding the data files is deleted whatever happens.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import stat
import os
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import nbformat

from dagster_bento import zones
from dagster_bento.errors import (
    DagsterBentoError,
    DagsterBentoOutputError,
    DagsterBentoRunError,
)
from dagster_bento.execution import artifacts, workdirs
from dagster_bento.execution.pool import acquire_kernel
from dagster_bento.execution.rewrite import input_path, original_index, output_path, rewrite_notebook
from dagster_bento.lineage import LineageConfig, LineageDataset, LineageEmitter
from dagster_bento.notebook import parse_notebook_node
from dagster_bento.project import POLICY_FILE, resolve_job
from dagster_bento.redact import redact_url
from dagster_bento.spec import BentoJob
from dagster_bento.translator import META, DagsterBentoTranslator, column_lineage_for
from dagster_bento.warehouse import (
    DEFAULT_MAX_DECODED_BYTES,
    UploadRequest,
    Warehouse,
    describe_output,
    warehouse_from_url,
)


@dataclasses.dataclass
class RunTimings:
    fetch_s: float = 0.0
    execute_s: float = 0.0
    upload_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in dataclasses.asdict(self).items()}


class BentoInvocation:
    """Handle on one notebook run, like dagster-dbt's ``DbtCliInvocation``."""

    def __init__(self, *, resource: Any, context: Any, job: BentoJob, dry_run: bool = False,
                 kernel: Any = None):
        """``dry_run``: fetch, execute and check everything but upload nothing (the review's trial run);
        the outputs' row counts and schemas are in ``trial_outputs``. ``kernel``: a kernel already
        starting for this run (`BentoResource.run` starts it before importing this module); the
        invocation owns it from now on."""
        self.resource = resource
        self.kernel = kernel
        self.dry_run = dry_run
        self.trial_outputs: list[dict[str, Any]] = []
        self.context = context
        self.job = job
        self.project_dir = Path(resource.project_dir)
        self.translator = DagsterBentoTranslator()
        self._results: list[dg.MaterializeResult] | None = None
        self._error: BaseException | None = None
        self.executed_notebook: Path | None = None
        self._executed_nb: Any = None  # the executed (or partly executed) notebook, kept once by _keep
        self._fetch_future: "concurrent.futures.Future[Any] | None" = None
        self._files: Mapping[str, Path] = {}  # the outputs copied out of the sandbox
        self._sizes: dict[str, int | None] = {}  # their sizes in bytes (see _output_size)
        self._logged: list[dict[str, Any]] = []  # log-mode zone violations, recorded on the outputs
        self._source_nb: Any = None  # the notebook as read (once) for this run
        # (policy, read labels) of the pre-fetch read check: the fetch zone-checks the base tables a query scans
        self._read_check: tuple[Any, dict[str, frozenset[str]]] | None = None

    # -- public handle --------------------------------------------------------------------------

    def stream(self) -> Iterator[dg.MaterializeResult]:
        yield from self.wait()

    def wait(self) -> list[dg.MaterializeResult]:
        if self._results is None:
            try:
                self._results = self._run()
            except BaseException as err:
                self._error = err
                raise
            finally:
                if self.kernel is not None:  # the run ended before it got to use it
                    kernel, self.kernel = self.kernel, None
                    kernel.close()
        return self._results

    def get_error(self) -> BaseException | None:
        return self._error

    # -- the run --------------------------------------------------------------------------------

    @property
    def log(self) -> Any:
        return self.context.log

    def _ds(self) -> str:
        if self.job.spec.partitioned and self.context.has_partition_key:
            key = self.context.partition_key
            try:  # the partition key is rendered into SQL as {{ ds }}: only a real date passes
                if dt.date.fromisoformat(key).isoformat() == key:
                    return key
            except (TypeError, ValueError):
                pass
            raise DagsterBentoRunError(f"partition key {key!r} is not a date (YYYY-MM-DD); a daily-partitioned "
                                       "notebook runs only for real partitions", notebook=self.job.notebook_path)
        return dt.datetime.now(dt.timezone.utc).date().isoformat()

    def _run(self) -> list[dg.MaterializeResult]:
        run_id = self.context.run_id
        ds = self._ds()
        job = self._job_for_run(ds)
        fmt = job.spec.data_format or self.resource.data_format
        inputs = [LineageDataset(t) for t in job.tables_read]
        read_labels: dict[str, frozenset[str]] = {}
        timings = RunTimings()
        warehouse: Warehouse | None = None
        emitter: LineageEmitter | None = None
        work_dir: Path | None = None
        lease: Any = None
        try:
            warehouse = warehouse_from_url(self.resource.warehouse_url)
            emitter = self._emitter(warehouse)
            emitter.start(run_id=run_id, job_name=job.name, notebook_path=job.notebook_path,
                          notebook_zone=job.zone, inputs=inputs, sql=[c.sql for c in job.sql_cells],
                          parameters={**job.display_parameters, "ds": ds}, nominal_time=_nominal(ds),
                          owners=job.owners)
            work_dir = self._make_work_dir(run_id)
            policy = self._policy()
            read_labels = self._check_reads(policy, job, warehouse)
            config = self.resource.sandbox_config(job.spec)
            lease, self.kernel = self.kernel or acquire_kernel(self.resource, config, job, self.context.run_id,
                                                               self.log), None
            # the only directory the sandbox sees: the pooled kernel's, or one in this run's work dir
            run_dir = lease.run_dir if lease is not None else work_dir / "nb"
            try:
                # The kernel is already starting (BentoResource.run started it) or running (from the
                # pool); it runs the cells before the first SQL cell while the orchestrator fetches, and
                # a SQL cell's read line waits for the fetch. The run's time limit covers the fetch: its
                # queries are cancelled at the deadline, and as soon as the notebook ends or fails (e.g. timed
                # out waiting for them), releasing their locks.
                stop_fetch = threading.Event()
                deadline = time.monotonic() + config.timeout_s
                with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bento-fetch") as pool:
                    fetch = pool.submit(self._fetch, job, warehouse, run_dir, fmt, timings, deadline, stop_fetch)
                    try:
                        self._execute(job, run_dir, fmt, ds, timings, fetch, config, lease)
                    finally:
                        stop_fetch.set()  # after a successful execution every SQL cell has waited for it
                        concurrent.futures.wait([fetch])  # it writes into the run dir: never delete under it
                    fetched = fetch.result()
                self._files = files = collect_outputs(job, run_dir, work_dir / "collected", fmt,
                                        max_bytes=_limit(self.resource, "max_output_mb", DEFAULT_MAX_OUTPUT_BYTES))
            finally:
                if lease is not None:
                    # the kernel is dead (execute_notebook kills it) and its outputs are copied out: the
                    # pool deletes the directory while this run uploads
                    lease.release(wait=False)
            if self.dry_run:
                labels = self._check_writes(policy, job, warehouse, read_labels)
                self.trial_outputs = [_describe_file(request, labels.get(request.table), warehouse)
                                      for request in self._requests(job, files, ds, fmt)]
                self._keep(job, {t["table"]: t["rows"] for t in self.trial_outputs})
                return []
            labels = {}

            def check_writes(stored: Mapping[str, frozenset[str]], existing: Any) -> dict[str, frozenset[str]]:
                labels.update(self._write_labels(policy, job, read_labels, stored, existing))
                return labels

            uploaded = self._upload(job, warehouse, files, check_writes if policy is not None else None, ds, fmt,
                                    timings)
            self._keep(job, {u.table: u.rows_written for u in uploaded})
        except BaseException as err:
            if isinstance(err, DagsterBentoRunError):
                self._describe_failure(job, err)
            if emitter is not None:
                violation = err.metadata.get("violation") if isinstance(err, DagsterBentoError) else None
                emitter.fail(run_id=run_id, job_name=job.name, inputs=inputs, error_message=str(err),
                             violation=getattr(violation, "data", violation), violations=self._logged,
                             stack_trace="".join(traceback.format_exception(err))[-4000:])
            raise
        finally:
            if lease is not None:
                with contextlib.suppress(Exception):
                    lease.close()  # the pool starts the next kernel once this run no longer needs the CPU
            if work_dir is not None:
                self._work.remove()
            if warehouse is not None:
                with contextlib.suppress(Exception):
                    warehouse.close()
            if self.executed_notebook is not None and self.resource.html:
                try:
                    artifacts.render_html_in_background(self.executed_notebook)
                except OSError as err:  # the run's outcome stands; only its HTML copy is missing
                    self.log.warning(f"could not start rendering {self.executed_notebook} to HTML: {err}")
        outputs = [LineageDataset(u.table, columns=tuple((c.name, c.type) for c in u.columns),
                                  zones=labels.get(u.table), row_count=u.rows_written,
                                  column_lineage=_ol_column_lineage(job, u))
                   for u in uploaded]
        emitter.complete(run_id=run_id, job_name=job.name,
                         inputs=[LineageDataset(t, zones=read_labels.get(t)) for t in job.tables_read],
                         outputs=outputs, violations=self._logged)  # log-mode violations, in the zone facet
        kept = self.executed_notebook or Path("")  # kept by _keep right after the upload
        return [self._result(job, u, labels, fetched, kept, timings, ds) for u in uploaded]

    def _job_for_run(self, ds: str) -> BentoJob:
        """Re-render the schedule with the run's ``ds`` from one read of the notebook; refuse if the
        notebook changed since load (the code version shown in the UI would be a lie)."""
        job = self.job
        raw = (self.project_dir / job.notebook_path).read_bytes()
        if hashlib.sha256(raw).hexdigest() != job.notebook_sha256:
            raise DagsterBentoRunError(
                f"{job.notebook_path} changed since the definitions were loaded; reload the code location "
                "(its code version changes with the notebook) and run again", notebook=job.notebook_path)
        self._source_nb = nbformat.reads(raw.decode("utf-8"), as_version=4)
        parsed = parse_notebook_node(self._source_nb, job.notebook_path, job.notebook_sha256)
        resolved, problems = resolve_job(parsed, job.spec, job.entry, default_schema=job.default_schema,
                                         dialect=job.dialect, ds=ds)
        if resolved is None:
            raise DagsterBentoRunError("cannot render the notebook for this run:\n" + "\n".join(
                f"  - {p}" for p in problems), notebook=job.notebook_path)
        if resolved.tables_written != job.tables_written:
            raise DagsterBentoRunError(
                f"{job.notebook_path}: the tables written at run time {list(resolved.tables_written)} differ from "
                f"the assets {list(job.tables_written)}; reload the code location", notebook=job.notebook_path)
        return resolved

    # -- steps ----------------------------------------------------------------------------------

    def _make_work_dir(self, run_id: str) -> Path:
        """A private (0700) work dir: ``nb/`` is bound into the sandbox, ``collected/`` is not."""
        root = workdirs.run_root(self.resource.run_root)
        workdirs.sweep_in_background(root)  # directories of runs killed hard (SIGKILL, OOM) before this one
        # The WorkDir holds the owner lock for the whole run: a sweep never deletes a live run's data.
        self._work = workdirs.create(root, f"bento-{run_id[:8]}-",
                                     subdirs=("nb", "nb/inputs", "nb/outputs", "collected"))
        return self._work.path

    def _policy(self) -> Any:
        path = self.project_dir / POLICY_FILE
        # table names follow the warehouse's identifier rules, as at load (project.project_settings)
        return zones.load_policy(path, dialect=self.job.dialect) if path.exists() else None

    def _check_reads(self, policy: Any, job: BentoJob, warehouse: Warehouse) -> dict[str, frozenset[str]]:
        """Labels are re-read right before the fetch: they may have changed since load."""
        if policy is None:
            self.log.warning(f"{POLICY_FILE} is missing: purpose zones are not enforced for {job.name}")
            return {}
        stored = warehouse.read_labels(job.tables_read)
        labels: dict[str, frozenset[str]] = {}
        for cell in job.sql_cells:
            for table in cell.tables:
                label = zones.resolve_label(policy, table, stored)
                violation = zones.check_read(policy, notebook=job.name, notebook_path=job.notebook_path,
                                             notebook_zone=job.zone, cell=cell.index, table=table, label=label,
                                             phase="pre_fetch")
                self._handle(violation)
                if isinstance(label, frozenset):
                    labels[table] = label
        self._read_check = (policy, labels)  # the fetch adds the labels of base tables read through views
        return labels

    def _check_base_tables(self, job: BentoJob, warehouse: Warehouse, cell: Any, _sql: str,
                           base: frozenset[str]) -> None:
        """Views are judged by what they read: the base tables the warehouse's planner scans for ``cell``'s
        query (views expanded) get the same read check as the tables the analysis listed, before any row is
        read. Their labels join the run's read labels (so they reach the outputs' labels)."""
        if self._read_check is None:
            return
        policy, labels = self._read_check
        listed = set(cell.tables)
        new = sorted(t for t in base if t not in listed)
        if not new:
            return  # every scanned table was listed by the analysis and checked before the fetch
        through = sorted(listed - set(base)) or sorted(listed)
        stored = warehouse.read_labels(new)
        for table in new:
            label = zones.resolve_label(policy, table, stored)
            violation = zones.check_read(policy, notebook=job.name, notebook_path=job.notebook_path,
                                         notebook_zone=job.zone, cell=cell.index, table=table, label=label,
                                         phase="pre_fetch")
            if violation is not None:
                via = ", ".join(through) or "the query"
                violation = dataclasses.replace(violation, hint=(
                    f"cell {cell.index} reads {table} through {via} (a view is judged by the base tables it "
                    f"reads, whatever the view's own label); " + violation.hint))
            self._handle(violation)
            if isinstance(label, frozenset):
                labels[table] = label

    def _handle(self, violation: Any) -> None:
        if violation is None:
            return
        if violation.enforced:
            raise zones.violation_error(violation)
        self.log.warning(f"purpose zone violation (log mode, run continues): {violation.message()}")
        self._logged.append(violation.to_dict())

    def _fetch(self, job: BentoJob, warehouse: Warehouse, run_dir: Path, fmt: str, timings: RunTimings,
               deadline: float | None = None, cancel: threading.Event | None = None) -> dict[int, Any]:
        start = time.perf_counter()
        fetched = {}
        for cell in job.sql_cells:
            check = None if self._read_check is None else functools.partial(self._check_base_tables, job,
                                                                              warehouse, cell)
            result = warehouse.fetch(cell.sql, run_dir / input_path(cell.output, fmt), fmt=fmt,
                                     notebook=job.notebook_path, cell=cell.index, deadline=deadline, cancel=cancel,
                                     default_schema=job.default_schema, check_tables=check)
            fetched[cell.index] = result
            self.log.info(f"cell {cell.index}: fetched {result.rows} rows into {cell.output} "
                          f"({result.seconds:.2f}s)")
        timings.fetch_s = time.perf_counter() - start
        return fetched

    def _execute(self, job: BentoJob, run_dir: Path, fmt: str, ds: str, timings: RunTimings,
                 fetch: "concurrent.futures.Future[Any]", config: Any, lease: Any) -> Path:
        from dagster_bento.execution.sandbox import execute_notebook

        nb = rewrite_notebook(
            self._source_nb, sql_cells=[(c.index, c.output) for c in job.sql_cells],
            write_cells=[(w.index, w.input, w.table) for w in job.write_cells],
            # papermill's semantics: only what the schedule sets (defaults stay in the parameters cell)
            parameters={**job.entry.parameters, "ds": ds, "ds_nodash": ds.replace("-", "")},
            parameters_cell=job.parameters_cell, fmt=fmt,  # type: ignore[arg-type]
            run_info={"schedule": job.name, "run_id": self.context.run_id, "notebook": job.notebook_path,
                      "code_version": job.code_version})
        sql_cells = {c.index for c in job.sql_cells}

        def wait_for_fetch(index: int) -> Any:
            if original_index(nb, index) in sql_cells:
                return asyncio.wrap_future(fetch)  # raises the fetch's error, if any
            return None

        self._fetch_future = fetch
        start = time.perf_counter()
        try:
            executed = execute_notebook(nb, run_dir=run_dir, config=config, notebook_label=job.notebook_path,
                                        log=self.log,
                                        cell_number=lambda index: original_index(nb, index),
                                        before_cell=wait_for_fetch, lease=lease)
        except DagsterBentoRunError as err:
            self._executed_nb = getattr(err, "executed_nb", None) or nb  # kept by _run's failure path
            raise
        finally:
            timings.execute_s = time.perf_counter() - start
        # kept (see _keep) once the outputs are checked, with what each write cell wrote
        self._executed_nb = executed
        return executed

    # -- the kept notebook and what a failure shows ---------------------------------------------

    def _keep(self, job: BentoJob, rows_written: Mapping[str, int] | None = None) -> None:
        """Keep the executed notebook once, as its author wrote it (`artifacts.author_view`): SQL cells show
        their rendered SQL with the fetch's rows, seconds and tables; write cells their source with the rows
        and file size written and the table. Its HTML rendering starts when the run ends (see _run)."""
        if self.executed_notebook is not None or self._executed_nb is None:
            return
        fetched: Mapping[int, Any] = {}
        future = self._fetch_future
        if future is not None and future.done() and not future.cancelled() and future.exception() is None:
            fetched = future.result()
        sql = {c.index: {"sql": c.sql, "output": c.output, "tables": list(c.tables),
                         "rows": getattr(fetched.get(c.index), "rows", None),
                         "seconds": getattr(fetched.get(c.index), "seconds", None)} for c in job.sql_cells}
        writes = {c.index: {"input": c.input, "table": c.table, "mode": c.mode,
                            "rows": (rows_written or {}).get(c.table), "bytes": self._output_size(c.table)}
                  for c in job.write_cells}
        target = artifacts.artifact_path(self.resource.artifacts_path, job.name, self.context.run_id)
        view = artifacts.author_view(self._executed_nb, sql=sql, writes=writes)
        self.executed_notebook = artifacts.save(view, target, html=False)
        self.log.info(f"executed notebook kept at {self.executed_notebook}")

    def _output_size(self, table: str) -> int | None:
        """The size of the file the notebook wrote for ``table`` (remembered: the work dir goes at run end)."""
        if table not in self._sizes:
            self._sizes[table] = _size(self._files.get(table))
        return self._sizes[table]

    def _describe_failure(self, job: BentoJob, err: DagsterBentoRunError) -> None:
        """Keep the notebook (if it ran) and put into the failure's metadata what the UI shows: the kept
        notebook's path and link, and the failing cell as the author wrote it, with the error."""
        try:
            self._keep(job)
        except Exception as keep_err:  # noqa: BLE001 -- the run's own error is what the user must see
            self.log.warning(f"could not keep the executed notebook of {job.notebook_path}: {keep_err}")
        if self.executed_notebook is not None:
            err.attach_executed_notebook(str(self.executed_notebook), url=self._notebook_url(self.executed_notebook))
        cells = getattr(self._source_nb, "cells", None) or []
        if err.cell is not None and 0 <= err.cell < len(cells) and "failing_cell" not in err.metadata:
            source = cells[err.cell].get("source", "")
            err.attach_failing_cell(source if isinstance(source, str) else "".join(source))

    def _notebook_url(self, path: Path) -> str | None:
        """The kept notebook's page in the Dagster UI, when bento.yaml sets notifications.webserver_url and
        the run came from a code location (the webserver asks it for the file)."""
        from dagster_bento.errors import notebook_url
        from dagster_bento.project import load_config

        origin = getattr(getattr(self.context, "dagster_run", None), "remote_job_origin", None)
        location = getattr(origin, "location_name", None) if origin is not None else None
        try:
            url = (load_config(self.project_dir)[0].notifications or {}).get("webserver_url")
        except Exception:  # noqa: BLE001 -- a link is a convenience; the path is in the metadata anyway
            return None
        if not isinstance(url, str) or not url or not isinstance(location, str):
            return None
        return notebook_url(url, str(path), location)

    def _check_writes(self, policy: Any, job: BentoJob, warehouse: Warehouse,
                      read_labels: Mapping[str, frozenset[str]]) -> dict[str, frozenset[str]]:
        """The write check of a trial run (nothing is uploaded, so it reads the labels itself)."""
        if policy is None:
            return {}
        stored = warehouse.read_labels(job.tables_written)
        existing = {t for t in job.tables_written if t in stored or warehouse.table_exists(t)}
        return self._write_labels(policy, job, read_labels, stored, existing)

    def _write_labels(self, policy: Any, job: BentoJob, read_labels: Mapping[str, frozenset[str]],
                      stored: Mapping[str, frozenset[str]], existing: Any) -> dict[str, frozenset[str]]:
        """Each output's label, after the write rule; raises on an enforced violation. Called inside the
        upload transaction with the labels stored at that moment (see Warehouse.upload)."""
        labels: dict[str, frozenset[str]] = {}
        for cell in job.write_cells:
            reclass = policy.reclassification_for(job.name, cell.table, notebook_path=job.notebook_path)
            required = zones.output_label(read_labels.values(), job.zone, reclassification=reclass)
            violation, label = zones.check_write(
                policy, notebook=job.name, notebook_path=job.notebook_path, notebook_zone=job.zone,
                cell=cell.index, table=cell.table, required=required, stored=stored.get(cell.table),
                exists_unlabeled=cell.table not in stored and cell.table in existing
                and not isinstance(policy.declared_label(cell.table), frozenset),
                mode=cell.mode, phase="pre_upload")
            self._handle(violation)
            labels[cell.table] = label
        return labels

    def _requests(self, job: BentoJob, files: Mapping[str, Path], ds: str, fmt: str) -> list[UploadRequest]:
        max_decoded = _limit(self.resource, "max_output_decoded_mb", DEFAULT_MAX_DECODED_BYTES)
        return [UploadRequest(table=c.table, path=files[c.table], mode=c.mode, partition_column=c.partition_column,
                              partition_value=ds if c.mode == "overwrite_partition" else None,
                              notebook=job.notebook_path, cell=c.index, fmt=fmt,  # type: ignore[arg-type]
                              max_decoded_bytes=max_decoded)
                for c in job.write_cells]

    def _upload(self, job: BentoJob, warehouse: Warehouse, files: Mapping[str, Path], check_labels: Any,
                ds: str, fmt: str, timings: RunTimings) -> list[Any]:
        requests = self._requests(job, files, ds, fmt)
        start = time.perf_counter()
        uploaded = warehouse.upload(requests, run_id=self.context.run_id, notebook=job.notebook_path,
                                    check_labels=check_labels)
        timings.upload_s = time.perf_counter() - start
        return uploaded

    def _result(self, job: BentoJob, uploaded: Any, labels: Mapping[str, frozenset[str]],
                fetched: Mapping[int, Any], executed: Path, timings: RunTimings, ds: str) -> dg.MaterializeResult:
        columns = {c.name: c.type for c in uploaded.columns}
        metadata: dict[str, Any] = {
            "dagster/table_name": uploaded.table,
            "dagster/row_count": int(uploaded.rows_in_table),
            "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in columns.items()]),
            f"{META}/rows_written": int(uploaded.rows_written),
            # numbers the UI plots over runs, one key each (timings_s holds the same per step)
            f"{META}/rows_fetched_total": int(sum(r.rows for r in fetched.values())),
            f"{META}/fetch_seconds": dg.MetadataValue.float(round(timings.fetch_s, 3)),
            f"{META}/execute_seconds": dg.MetadataValue.float(round(timings.execute_s, 3)),
            f"{META}/upload_seconds": dg.MetadataValue.float(round(timings.upload_s, 3)),
            f"{META}/executed_notebook": dg.MetadataValue.notebook(str(executed)),
            f"{META}/timings_s": dg.MetadataValue.json(timings.as_dict()),
            f"{META}/rows_fetched": dg.MetadataValue.json({str(i): r.rows for i, r in fetched.items()}),
            f"{META}/ds": ds,
        }
        size = self._output_size(uploaded.table)
        if size is not None:
            metadata[f"{META}/bytes_written"] = dg.MetadataValue.int(size)  # the file the notebook wrote
        if self.resource.html:
            metadata[f"{META}/executed_notebook_html"] = dg.MetadataValue.path(str(executed.with_suffix(".html")))
        lineage = column_lineage_for(job, columns, self.translator)
        if lineage is not None:
            metadata["dagster/column_lineage"] = lineage
        if uploaded.table in labels:
            metadata[f"{META}/output_label"] = dg.MetadataValue.json(sorted(labels[uploaded.table]))
        if self._logged:
            metadata[f"{META}/logged_violations"] = dg.MetadataValue.json(self._logged)
        return dg.MaterializeResult(asset_key=self.translator.get_asset_key(uploaded.table), metadata=metadata)

    def _emitter(self, warehouse: Warehouse) -> LineageEmitter:
        r = self.resource
        path = r.lineage_file or str(r.artifacts_path / "openlineage.jsonl")
        transport = "none" if self.dry_run else r.lineage_transport
        config = LineageConfig(transport=transport, file_path=path, url=r.lineage_url)  # type: ignore[arg-type]
        return LineageEmitter(config, dataset_namespace=_namespace(warehouse))


DEFAULT_MAX_OUTPUT_BYTES = 10 * 1024**3  # one output file on disk (bento.yaml: max_output_mb)
_SPARSE_SLACK = 1024 * 1024  # allocation may trail the size a little (tail blocks, inline data): not a sparse file


def collect_outputs(job: BentoJob, run_dir: Path, dest: Path, fmt: str, *,
                    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> dict[str, Path]:
    """Copy each write cell's file out of the sandbox's directory into an orchestrator-private one.

    The notebook controls everything under ``run_dir``: files are opened without following symbolic
    links (``O_NOFOLLOW``, relative to a directory opened the same way), must be regular files, and are
    copied, so nothing the upload reads can be swapped afterwards. Each file is judged before a byte is
    copied: larger than ``max_bytes``, or sparse (fewer blocks allocated than its size says: copying
    it would write its holes out as real disk), it is refused.
    """
    try:
        out_fd = os.open(run_dir / "outputs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise DagsterBentoOutputError(
            f"{job.notebook_path}: the run's outputs directory was replaced or removed by the notebook ({err}); "
            "write cells write there — leave it in place", notebook=job.notebook_path) from err
    files = {}
    try:
        for cell in job.write_cells:
            name = output_path(cell.table, fmt).removeprefix("outputs/")
            for part in [name, *([name + ".schema.json"] if fmt == "csv" else [])]:
                _copy_regular_file(out_fd, part, dest / part, job, cell, max_bytes)
            files[cell.table] = dest / name
    finally:
        os.close(out_fd)
    return files


def _copy_regular_file(dir_fd: int, name: str, target: Path, job: BentoJob, cell: Any,
                       max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
    where = dict(notebook=job.notebook_path, cell=cell.index)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError as err:
        raise DagsterBentoOutputError(
            f"write cell {cell.index} of {job.notebook_path} produced no file for {cell.table}: the dataframe "
            f"{cell.input!r} was not written. Make sure every cell before it runs and that it holds a pandas "
            "DataFrame", **where) from err
    except OSError as err:  # ELOOP: a symbolic link
        raise DagsterBentoOutputError(
            f"write cell {cell.index} of {job.notebook_path}: outputs/{name} is not a regular file ({err.strerror}); "
            "the notebook must not replace what write cells write", **where) from err
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise DagsterBentoOutputError(
                f"write cell {cell.index} of {job.notebook_path}: outputs/{name} is not a regular file; the "
                "notebook must not replace what write cells write", **where)
        _judge_size(info, name, job, cell, max_bytes)
        with open(target, "wb") as dst:
            _copy_contents(src.fileno(), dst.fileno(), info.st_size)
        if os.fstat(src.fileno()).st_size != info.st_size:
            raise DagsterBentoOutputError(
                f"write cell {cell.index} of {job.notebook_path}: outputs/{name} changed size while it was copied; "
                "nothing may write to the outputs after the notebook ends", **where)


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def _judge_size(info: os.stat_result, name: str, job: BentoJob, cell: Any, max_bytes: int) -> None:
    """Refuse an output that is too large, or sparse, before anything is copied."""
    where = dict(notebook=job.notebook_path, cell=cell.index)
    if info.st_size > max_bytes:
        raise DagsterBentoOutputError(
            f"write cell {cell.index} of {job.notebook_path}: outputs/{name} is {_mib(info.st_size)}, more than the "
            f"{_mib(max_bytes)} an output may be (max_output_mb in bento.yaml); nothing was copied or written. "
            "Write fewer rows or columns (aggregate in the notebook), or raise the limit", **where)
    allocated = info.st_blocks * 512
    if info.st_size - allocated > max(_SPARSE_SLACK, info.st_size // 2):
        raise DagsterBentoOutputError(
            f"write cell {cell.index} of {job.notebook_path}: outputs/{name} is a sparse file ({_mib(info.st_size)} "
            f"long, {_mib(allocated)} on disk); write cells write ordinary files, and copying its holes would fill "
            "the disk. Nothing was copied or written; let the write cell write the file", **where)


def _copy_contents(src: int, dst: int, size: int) -> None:
    """Copy exactly ``size`` bytes between file descriptors inside the kernel (copy_file_range), falling back
    to read/write where the file systems cannot. Never more: the size was judged before."""
    copied = 0
    try:
        while copied < size and (n := os.copy_file_range(src, dst, size - copied)):
            copied += n
    except OSError:  # EXDEV on old kernels, EINVAL/ENOSYS on some file systems: copy the rest by hand
        pass
    if copied < size:
        os.lseek(src, copied, os.SEEK_SET)
        os.lseek(dst, copied, os.SEEK_SET)
        while copied < size and (chunk := os.read(src, min(1024 * 1024, size - copied))):
            os.write(dst, chunk)
            copied += len(chunk)


def _describe_file(request: UploadRequest, label: frozenset[str] | None, warehouse: Warehouse) -> dict[str, Any]:
    """A trial output's rows and columns, judged exactly as the upload would judge it (nothing is written)."""
    rows, schema = describe_output(request, default_schema=getattr(warehouse, "default_schema", "main"),
                                   table_columns=warehouse.table_columns)
    return {"table": request.table, "rows": rows, "columns": {f.name: str(f.type) for f in schema},
            "label": sorted(label) if label is not None else None}


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _limit(resource: Any, field: str, default: int) -> int:
    """A size limit in bytes from the resource's ``<field>`` (MiB), when it has one."""
    value = getattr(resource, field, None)
    return int(value * 1024 * 1024) if isinstance(value, (int, float)) and value > 0 else default


def _namespace(warehouse: Warehouse) -> str:
    return redact_url(getattr(warehouse, "url", None) or warehouse.kind)


def _nominal(ds: str) -> str:
    return f"{ds}T00:00:00Z"


def _ol_column_lineage(job: BentoJob, uploaded: Any) -> dict[str, list[tuple[str, str]]]:
    names = {c.name for c in uploaded.columns}
    out: dict[str, list[tuple[str, str]]] = {}
    for cell in job.sql_cells:
        for col, deps in cell.column_lineage.items():
            if col in names:
                out.setdefault(col, list(deps))
    return out
