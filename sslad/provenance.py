"""Which code and libraries made a result: the keys every job's metrics.json carries, and the digest
that ties a resumable checkpoint to the code that wrote it.

Why: a number whose code is unknown cannot be checked or reproduced; a study that runs for days on a
cluster may see the checkout or an environment change between jobs, and only records written by each
job itself show it. Versions are those of the distributions whose modules the process has imported
(so a job lists what it really used), found through ``importlib.metadata``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from sslad import __version__

SOURCE = Path(__file__).resolve().parent  # the sslad package the process runs
PROVENANCE_KEYS = ("sslad_version", "commit", "dirty", "source_sha256", "python", "platform", "packages",
                   "threads", "device")


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(SOURCE.parent), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The commit of the checkout the package runs from ("unknown" outside a git checkout, e.g. an
    installed wheel), whether tracked files differ from it, and the digest of the package's source
    (which says what ran even when the tree is dirty or not a checkout)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"sslad_version": __version__, "commit": commit or "unknown",
            "dirty": bool(status) if status is not None else None, "source_sha256": source_digest()}


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the package's Python files (relative path and bytes, in sorted order)."""
    h = hashlib.sha256()
    for path in sorted(SOURCE.rglob("*.py")):
        h.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _owners() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # ~0.1 s: read once per process


@functools.lru_cache(maxsize=None)
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def imported_packages() -> dict[str, str]:
    """{distribution: version} of every installed distribution whose top-level module this process
    has imported (the standard library and the sslad checkout itself are not distributions)."""
    found: dict[str, str] = {}
    for module in {name.split(".")[0] for name in list(sys.modules)}:
        for dist in _owners().get(module, []):
            if dist.lower() != "sslad" and (version := _version(dist)) is not None:
                found[dist] = version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def job_provenance(device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """The provenance keys (PROVENANCE_KEYS) of one job, taken when it writes its results."""
    if threads is None and "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    return {**code_version(), "python": platform.python_version(), "platform": platform.platform(),
            "packages": imported_packages(), "threads": threads, "device": device}


def resume_key(libraries: tuple[str, ...] = ("torch", "numpy")) -> dict[str, str]:
    """What a checkpoint must have been written by to be resumed: this source and these libraries."""
    return {"source_sha256": source_digest(), **{f"{lib}_version": _version(lib) or "absent" for lib in libraries}}


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a config as sorted JSON: two runs with the same digest had the same settings."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def code_label(prov: dict[str, Any] | None) -> str:
    """A result's code in one word: the commit's first 12 digits (+dirty when tracked files differed)
    and the source digest's, e.g. ``984d85501e03+dirty:c3244f1cf329``; "" without provenance."""
    if not prov:
        return ""
    commit = prov.get("commit") or "unknown"
    head = commit[:12] if commit != "unknown" else "no-git"
    return f"{head}{'+dirty' if prov.get('dirty') else ''}:{str(prov.get('source_sha256', ''))[:12]}"


def _variants(records: list[tuple[str, dict[str, Any] | None]]) -> list[dict[str, Any]]:
    """Distinct provenances (threads and device apart) with the number of results each made and one
    example file; results without provenance form their own entry."""
    groups: dict[str, dict[str, Any]] = {}
    for path, prov in records:
        core = {k: v for k, v in (prov or {}).items() if k not in ("threads", "device")}
        key = json.dumps(core, sort_keys=True)
        entry = groups.setdefault(key, {"provenance": core or None, "results": 0, "example": path,
                                        "devices": set(), "threads": set()})
        entry["results"] += 1
        if prov:
            entry["devices"].add(str(prov.get("device")))
            entry["threads"].add(str(prov.get("threads")))
    return [{**g, "devices": sorted(g["devices"]), "threads": sorted(g["threads"])} for g in groups.values()]


def report(stages: dict[str, list[str]], config_sha256: str) -> dict[str, Any]:
    """results/provenance.json: for each stage ({stage: result files, JSON with a ``provenance``
    key}), the distinct code and library sets its results were made with; the commits seen; whether
    the whole study ran on one code version; the config digest; and the process that wrote it."""
    out: dict[str, Any] = {"config_sha256": config_sha256, "stages": {}, "written_by": job_provenance()}
    sources, commits = set(), set()
    for stage, paths in stages.items():
        records = []
        for path in paths:
            try:
                prov = json.loads(Path(path).read_text()).get("provenance")
            except (OSError, ValueError):  # a scan without a QC record: qc.tsv already reports it
                prov = None
            records.append((str(path), prov))
            sources.add((prov or {}).get("source_sha256"))
            commits.add(code_label(prov) or "no provenance (written by an older sslad)")
        out["stages"][stage] = _variants(records)
    out["codes"] = sorted(commits)
    out["one_code_version"] = len(sources) == 1 and None not in sources
    return out
