"""Shared fixtures: the default config as a user has it, and a tiny simulation settings block."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture
def tiny_sim(default_config) -> dict:
    cfg = copy.deepcopy(default_config["simulate"])
    cfg.update(n_subjects=6, resolution_mm=6)
    return cfg


def pytest_collection_modifyitems(config, items) -> None:
    """The end-to-end workflow tests first: with two test processes (pyproject's addopts) the longest
    file then runs beside all the others instead of after them."""
    items.sort(key=lambda item: item.path.name != "test_workflow.py")
