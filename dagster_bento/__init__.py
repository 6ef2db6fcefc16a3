"""dagster-bento: scheduled Jupyter notebooks for Dagster, reviewable, lineage-aware and privacy-safe."""

from dagster_bento.assets import bento_assets, build_bento_assets, build_bento_definitions
from dagster_bento.errors import (
    DagsterBentoCellError,
    DagsterBentoError,
    DagsterBentoKernelDiedError,
    DagsterBentoNotebookError,
    DagsterBentoPolicyError,
    DagsterBentoProjectError,
    DagsterBentoRunError,
    DagsterBentoSandboxUnavailableError,
    DagsterBentoTimeoutError,
    Problem,
)
from dagster_bento.notebook import load_notebook, parse_notebook
from dagster_bento.project import BentoProject, load_project
from dagster_bento.resources import BentoResource
from dagster_bento.translator import BentoTableProps, DagsterBentoTranslator

__all__ = [
    "BentoProject",
    "BentoResource",
    "BentoTableProps",
    "DagsterBentoCellError",
    "DagsterBentoConfigError",
    "DagsterBentoError",
    "DagsterBentoKernelDiedError",
    "DagsterBentoNotebookError",
    "DagsterBentoPolicyError",
    "DagsterBentoProjectError",
    "DagsterBentoRunError",
    "DagsterBentoSandboxUnavailableError",
    "DagsterBentoTimeoutError",
    "DagsterBentoTranslator",
    "Problem",
    "bento_assets",
    "build_bento_assets",
    "build_bento_definitions",
    "load_notebook",
    "load_project",
    "parse_notebook",
]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext dagster_bento``: the interactive magics (`dagster_bento.ipython`), imported only here."""
    from dagster_bento import ipython as _ipython

    _ipython.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: object) -> None:
    from dagster_bento import ipython as _ipython

    _ipython.unload_ipython_extension(ipython)
