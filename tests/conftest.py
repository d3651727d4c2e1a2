"""Shared test fixtures: paths to the copied test texts and a CLI runner."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The folder of small real texts copied into the project (never ../shared)."""
    return FIXTURES


@pytest.fixture
def runner() -> CliRunner:
    """A Typer CLI runner; stderr is captured apart from stdout."""
    return CliRunner()
