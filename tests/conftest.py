"""Shared test fixtures: paths to the copied test texts and a CLI runner."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The folder of small real texts copied into the project (never the shared data folder)."""
    return FIXTURES


@pytest.fixture
def runner() -> CliRunner:
    """A Typer CLI runner; stderr is captured apart from stdout."""
    return CliRunner()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run torch on one thread: tiny models run as fast on one as on two, and OpenMP threads spin-waiting on
    a machine whose cores are shared with other jobs slow small steps several times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
