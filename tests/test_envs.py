"""The conda environments pin the same versions as the package, so --use-conda runs what we test."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {m.group(1).lower(): m.group(2) for r in reqs if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", r))}


def test_env_pins_match_pyproject():
    pins = _pins()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        deps = yaml.safe_load(env.read_text())["dependencies"]
        checked = 0
        for dep in deps:
            entries = dep["pip"] if isinstance(dep, dict) else [dep]
            for entry in entries:
                m = re.fullmatch(r"([A-Za-z0-9_.-]+)[=]{1,2}(\S+)", entry)
                if not m or m.group(1) == "python":
                    continue
                assert pins.get(m.group(1).lower()) == m.group(2), f"{env.name}: {entry} vs pyproject"
                checked += 1
        assert checked >= 5, env.name
        assert "--editable .." in [e for d in deps if isinstance(d, dict) for e in d["pip"]], env.name


def test_every_rule_env_exists():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for rel in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / rel).resolve().is_file(), f"{smk.name}: {rel}"
