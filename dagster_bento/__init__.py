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
