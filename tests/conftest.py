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
