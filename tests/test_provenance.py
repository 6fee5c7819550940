"""Provenance: which code and libraries made each result, and the study-wide report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sslad import provenance
from sslad.derivatives import dataset_description

ROOT = Path(__file__).resolve().parents[1]


def test_job_provenance_names_the_commit_and_the_imported_libraries():
    """The commit is the checkout's (git itself says which), and the packages are those imported."""
    prov = subprocess.run([sys.executable, "-c", "import json, numpy; from sslad.provenance import job_provenance; "
                           "print(json.dumps(job_provenance('cpu', 2)))"], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout
    prov = json.loads(prov)
    assert set(provenance.PROVENANCE_KEYS) <= set(prov)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's clean clone is one)
        assert prov["commit"] == head.stdout.strip() and isinstance(prov["dirty"], bool)
    import numpy

    assert prov["packages"]["numpy"] == numpy.__version__ and "torch" not in prov["packages"]  # not imported
    assert prov["device"] == "cpu" and prov["threads"] == 2 and len(prov["source_sha256"]) == 64


def test_the_source_digest_follows_the_code(tmp_path):
    """Outside a git checkout the commit is unknown, and the source digest still tells two codes apart."""
    import shutil

    code = tmp_path / "code"
    shutil.copytree(ROOT / "sslad", code / "sslad", ignore=shutil.ignore_patterns("__pycache__"))
    probe = "import json; from sslad.provenance import code_version; print(json.dumps(code_version()))"
    first = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                      cwd=code, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code)}).stdout)
    assert first["commit"] == "unknown" and first["dirty"] is None
    (code / "sslad" / "schedule.py").write_text((code / "sslad" / "schedule.py").read_text() + "\n# edited\n")
    second = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                       cwd=code, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code)}).stdout)
    assert second["source_sha256"] != first["source_sha256"]
    assert provenance.code_label(first).startswith("no-git:")


def test_the_report_says_when_a_study_ran_on_two_code_versions(tmp_path):
    one = {**provenance.job_provenance("cpu", 1)}
    other = {**one, "commit": "0" * 40, "source_sha256": "1" * 64}
    files = []
    for i, prov in enumerate((one, one, other)):
        files.append(tmp_path / f"m{i}.json")
        files[-1].write_text(json.dumps({"provenance": prov}))
    (tmp_path / "old.json").write_text(json.dumps({"task": "x"}))
    report = provenance.report({"finetune": [str(f) for f in files[:2]], "pretrain": [str(files[2])]}, "abc")
    assert report["stages"]["finetune"][0]["results"] == 2 and len(report["stages"]["finetune"]) == 1
    assert not report["one_code_version"] and len(report["codes"]) == 2 and report["config_sha256"] == "abc"
    same = provenance.report({"finetune": [str(f) for f in files[:2]]}, "abc")
    assert same["one_code_version"] and same["codes"] == [provenance.code_label(one)]
    old = provenance.report({"finetune": [str(tmp_path / "old.json")]}, "abc")
    assert not old["one_code_version"] and old["codes"] == ["no provenance (written by an older sslad)"]


def test_the_derivatives_description_carries_the_version_and_commit():
    desc = dataset_description({"space": "MNI152NLin2009aSym", "registration": "affine", "voxel_mm": 4.0})
    code = provenance.code_version()
    version = desc["GeneratedBy"][0]["Version"]
    assert version.startswith(code["sslad_version"])
    if code["commit"] != "unknown":
        assert code["commit"][:12] in version
    assert desc["provenance"]["source_sha256"] == code["source_sha256"]
