"""The example project's Dagster code location: every scheduled notebook under notebooks/."""

from pathlib import Path

from dagster_bento import build_bento_definitions

defs = build_bento_definitions(project_dir=Path(__file__).parent)
