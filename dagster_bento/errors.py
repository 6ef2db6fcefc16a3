"""Error hierarchy and the `Problem` record shared by every static check.

Every problem a user can cause names the notebook, the cell (index in the ``.ipynb``) and, where it
applies, the table, and says what to do next. Problems are aggregated: a check reports all of them at
once, under a stable header, never one at a time and never as a bare traceback.
"""

import dataclasses
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

PROJECT_PROBLEMS_HEADER = "dagster-bento found problems in the project:"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One static problem. ``to_dict()`` is the stable JSON contract of ``dagster-bento check --json``."""

    notebook: str  # path relative to the project dir, e.g. "notebooks/revenue.ipynb"
    cell: int | None  # cell index in the notebook, None when the problem is about the whole file
    code: str  # stable identifier, e.g. "BENTO003" or "PZ001"
    message: str  # one line: what happened and what to do
    table: str | None = None
    line: int | None = None  # line inside the cell, for code checks
    severity: str = "error"  # "error" or "warning" (warnings do not fail `check`)

    def sort_key(self) -> tuple:
        """File-level problems first, then by cell and line; None never meets an int in a comparison."""
        return (self.notebook, self.cell is not None, self.cell or 0, self.line or 0, self.code, self.message,
                self.table or "", self.severity)

    def __lt__(self, other: "Problem") -> bool:
        return self.sort_key() < other.sort_key()

    def location(self) -> str:
        where = self.notebook
        if self.cell is not None:
            where += f" [cell {self.cell}"
            if self.line is not None:
                where += f", line {self.line}"
            where += "]"
        return where

    def __str__(self) -> str:
        return f"{self.location()}: {self.code} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "notebook": self.notebook,
            "cell": self.cell,
            "line": self.line,
            "table": self.table,
            "message": self.message,
        }


def format_problems(problems: Iterable[Problem], header: str = PROJECT_PROBLEMS_HEADER) -> str:
    lines = [header]
    lines.extend(f"  - {p}" for p in sorted(problems))
    return "\n".join(lines)


class DagsterBentoError(dg.Failure):
    """Base class of every dagster-bento error. A `dagster.Failure`, so it fails a run cleanly."""

    def __init__(self, message: str, metadata: Mapping[str, Any] | None = None):
        super().__init__(description=message, metadata=dict(metadata or {}))
        self.message = message

    def __str__(self) -> str:
        return self.message


class DagsterBentoConfigError(DagsterBentoError):
    """Run config tried to set or widen an operator-only setting of the ``bento`` resource."""


class DagsterBentoProjectError(DagsterBentoError, dg.DagsterInvalidDefinitionError):
    """The project has static problems; ``problems`` lists all of them."""

    def __init__(self, problems: Iterable[Problem], header: str = PROJECT_PROBLEMS_HEADER):
        self.problems = sorted(problems)
        DagsterBentoError.__init__(self, format_problems(self.problems, header))


class DagsterBentoNotebookError(DagsterBentoError, dg.DagsterInvalidDefinitionError):
    """A single notebook cannot be read (used by ``inspect`` and lower-level APIs)."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = sorted(problems)
        nb = self.problems[0].notebook if self.problems else "notebook"
        DagsterBentoError.__init__(self, format_problems(self.problems, f"{nb} cannot be used:"))


class DagsterBentoRunError(DagsterBentoError):
    """Base of every run-time failure. Carries where it happened and the kept executed notebook."""

    def __init__(
        self,
        message: str,
        *,
        notebook: str | None = None,
        cell: int | None = None,
        executed_notebook: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self.notebook = notebook
        self.cell = cell
        self.executed_notebook = executed_notebook
        md = dict(metadata or {})
        if notebook:
            md.setdefault("notebook", notebook)
        if cell is not None:
            md.setdefault("cell", cell)
        if executed_notebook:
            md.setdefault("executed_notebook", dg.MetadataValue.path(executed_notebook))
        full = message
        if executed_notebook:
            full += f"\nThe executed notebook is kept at {executed_notebook}"
        super().__init__(full, md)

    def attach_executed_notebook(self, path: str, *, url: str | None = None) -> None:
        """Name the kept executed notebook in the message and metadata (it is saved after the error).
        ``url``: its page in the Dagster UI (see `notebook_url`), shown as a link next to the path."""
        if not self.executed_notebook:
            self.executed_notebook = path
            self.message = f"{self.message}\nThe executed notebook is kept at {path}"
            self.description = self.message
            self.metadata["executed_notebook"] = dg.MetadataValue.path(path)
        if url and self.executed_notebook == path:
            self.metadata["executed_notebook_url"] = dg.MetadataValue.url(url)

    def attach_failing_cell(self, source: str) -> None:
        """Show the failing cell as the author wrote it, with the error, as markdown in the failure event."""
        ename = getattr(self, "ename", None) or type(self).__name__
        evalue = getattr(self, "evalue", None)
        if evalue is None:
            evalue = self.message.split("\nThe executed notebook is kept at ")[0]
        self.metadata["failing_cell"] = dg.MetadataValue.md(
            failing_cell_markdown(source, cell=self.cell, notebook=self.notebook, ename=ename, evalue=evalue))


MAX_MARKDOWN_SOURCE = 20_000  # characters of a failing cell shown in the failure event (the kept notebook has all)


def _fence(text: str, minimum: int = 3) -> str:
    """A backtick fence longer than any run of backticks in ``text``, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(minimum, longest + 1)


def _inline_code(text: str) -> str:
    fence = _fence(text, minimum=1)
    return f"{fence} {text} {fence}"


def failing_cell_markdown(source: str, *, cell: int | None, notebook: str | None, ename: str, evalue: str) -> str:
    """Markdown for the Dagster UI: the cell's source and the error, each in a code fence longer than any
    backtick run inside it (nothing the notebook wrote is rendered as markdown or HTML)."""

    def clip(text: str, limit: int) -> str:
        return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit:,} more characters)"

    source, error = clip(source, MAX_MARKDOWN_SOURCE), clip(f"{ename}: {evalue}".strip().rstrip(":"), 4000)
    where = "The failing cell" if cell is None else f"Cell {cell}"
    if notebook:
        where += f" of {_inline_code(notebook)}"
    code_fence, error_fence = _fence(source), _fence(error)
    return (f"**{where}**\n\n{code_fence}python\n{source}\n{code_fence}\n\n"
            f"**Error**\n\n{error_fence}text\n{error}\n{error_fence}\n")


def notebook_url(webserver_url: str, path: str, location: str) -> str:
    """The Dagster webserver's page for a kept notebook: ``/notebook?path=...&repoLocName=...``, the route
    dagster-webserver serves (and links for notebook metadata); it asks the code location ``location`` for
    the file, so both parameters are required."""
    query = urllib.parse.urlencode({"path": path, "repoLocName": location}, quote_via=urllib.parse.quote)
    return f"{webserver_url.rstrip('/')}/notebook?{query}"


class DagsterBentoSandboxUnavailableError(DagsterBentoRunError):
    """The sandbox could not be established; the run refuses rather than run unsandboxed."""


class DagsterBentoCellError(DagsterBentoRunError):
    """A cell raised. Carries ``ename``, ``evalue`` and ``traceback`` like papermill's PapermillExecutionError."""

    def __init__(self, message: str, *, ename: str, evalue: str, traceback: list[str] | None = None, **kw: Any):
        self.ename = ename
        self.evalue = evalue
        self.traceback = traceback or []
        super().__init__(message, **kw)


class DagsterBentoKernelDiedError(DagsterBentoRunError):
    """The kernel process died (os._exit, the memory limit, a segfault)."""


class DagsterBentoTimeoutError(DagsterBentoRunError):
    """The run exceeded its time limit."""


class DagsterBentoFetchError(DagsterBentoRunError):
    """A SQL cell's query failed in the warehouse."""


class DagsterBentoOutputError(DagsterBentoRunError):
    """A write cell's output is missing or does not fit its declared table."""


class DagsterBentoUploadError(DagsterBentoRunError):
    """Loading outputs into the warehouse failed; nothing was committed."""


class DagsterBentoPolicyError(DagsterBentoRunError):
    """A purpose-zone rule refused a read or a write at run time."""
