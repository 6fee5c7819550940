"""The conda environments: the same pins as the package, third-party packages only, no path.

Snakemake builds each env from a copy of its file under .snakemake/conda/, so a path in it (such as
``--editable ..``) points into .snakemake/ rather than at this repository; the jobs reach the sslad
code from the workflow's own source tree instead (tests/test_workflow.py runs the tiny study in a
venv built from these pins alone, without sslad installed).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
PIN = re.compile(r"([A-Za-z0-9_.-]+)(=|==)([A-Za-z0-9_.+-]+)")


def _pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {m.group(1).lower(): m.group(2) for r in reqs if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", r))}


def env_entries(env: Path) -> list[str]:
    """Every dependency line of an env file: conda's and those of its pip section."""
    entries = []
    for dep in yaml.safe_load(env.read_text())["dependencies"]:
        entries += dep["pip"] if isinstance(dep, dict) else [dep]
    return entries


def pypi_requirements(env: Path) -> list[str]:
    """The env's packages as pip requirements (name==version); python and pip themselves left out.
    Every conda name here is also the package's PyPI name."""
    reqs = []
    for entry in env_entries(env):
        m = PIN.fullmatch(entry)
        if m and m.group(1) not in ("python", "pip"):
            reqs.append(f"{m.group(1)}=={m.group(3)}")
    return reqs


def test_env_pins_match_pyproject():
    pins = _pins()
    assert ENVS
    for env in ENVS:
        reqs = pypi_requirements(env)
        assert len(reqs) >= 8, env.name
        for req in reqs:
            name, version = req.split("==")
            assert pins.get(name.lower()) == version, f"{env.name}: {req} vs pyproject"


def test_env_files_name_packages_only_never_a_path():
    for env in ENVS:
        spec = yaml.safe_load(env.read_text())
        assert all(re.fullmatch(r"[a-z][a-z0-9-]*", c) for c in spec["channels"]), f"{env.name}: {spec['channels']}"
        for entry in env_entries(env):
            assert entry == "pip" or PIN.fullmatch(entry), f"{env.name}: {entry!r} is no exact pin of a package"
            assert "/" not in entry and not entry.startswith(("-", ".")), f"{env.name}: {entry!r} refers to a path"


def test_every_rule_env_exists():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for rel in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / rel).resolve().is_file(), f"{smk.name}: {rel}"
