"""Preprocessing with real ANTs on tiny simulated scans: accuracy, QC record, bad inputs, reruns."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from sslad.preprocess import Outputs, qc_table, run
from sslad.simulate import simulate_cohort
from sslad.template import write_template

SPACE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_config):
    """Two simulated subjects at 4 mm, the template, and the default preprocessing settings."""
    root = tmp_path_factory.mktemp("pre")
    sim = {**default_config["simulate"], "n_subjects": 2, "resolution_mm": 4, "seed": 11}
    simulate_cohort(sim, root / "bids")
    write_template(root / "tpl.nii.gz", root / "tplmask.nii.gz")
    whole_brain = {"x": [-76, 76], "y": [-112, 80], "z": [-64, 88]}  # config/paper.yaml's box (the demo crops)
    settings = {**default_config["preprocess"], "voxel_mm": 4.0, "crop_mm": whole_brain}
    truth = pd.read_csv(root / "bids/derivatives/simulation/scans.tsv", sep="\t")
    return root, settings, truth


def _run(root: Path, settings: dict, t1w: Path, sub: str = "sub-SIM001", ses: str = "ses-M000", out: str = "preproc"):
    return run(str(t1w), sub, ses, str(root / "tpl.nii.gz"), str(root / "tplmask.nii.gz"), str(root / out),
               settings, SPACE)


def test_brain_mask_dice_and_qc_record(setup):
    root, settings, truth = setup
    sub, ses = truth.iloc[0][["participant_id", "session_id"]]
    t1w = root / "bids" / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz"
    record = _run(root, settings, t1w, sub, ses)
    assert record["pass"], record["reason"]
    out = Outputs.for_scan(root / "preproc", sub, ses, SPACE)
    for f in out.images() + [out.qc_json, out.qc_png]:
        assert f.is_file(), f
    saved = json.loads(out.qc_json.read_text())
    for key in ("template_correlation", "brain_volume_ml", "mask_components", "mask_touches_border", "pass",
                "reason", "seconds", "outputs", "input", "space"):
        assert key in saved
    assert saved["template_correlation"] > 0.7
    gt = nib.load(root / "bids/derivatives/simulation" / sub / ses / "anat" / f"{sub}_{ses}_desc-brain_mask.nii.gz")
    est = nib.load(out.native_mask)
    np.testing.assert_allclose(est.affine, gt.affine)
    a, b = est.get_fdata() > 0, gt.get_fdata() > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    arr = np.load(out.array)
    assert arr.dtype == np.float16 and arr.shape == (38, 48, 38)
    brain = nib.load(out.mask).get_fdata() > 0
    assert abs(float(arr[brain].mean())) < 0.05 and abs(float(arr[brain].std()) - 1) < 0.05  # z-scored brain
    assert not arr[~brain].any()  # skull-stripped


def test_rerun_is_identical(setup):
    root, settings, truth = setup
    sub, ses = truth.iloc[1][["participant_id", "session_id"]]
    t1w = root / "bids" / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz"
    arrays = []
    for out in ("again1", "again2"):
        assert _run(root, settings, t1w, sub, ses, out)["pass"]
        arrays.append(np.load(Outputs.for_scan(root / out, sub, ses, SPACE).array))
    np.testing.assert_array_equal(*arrays)


def _bad_inputs(d: Path) -> dict[str, tuple[Path, str]]:
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    cube = np.random.default_rng(0).random((30, 30, 30)).astype(np.float32)
    cases = {}

    def save(name: str, data: np.ndarray, aff: np.ndarray = affine) -> Path:
        p = d / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), p)
        return p

    text = d / "text.nii.gz"
    text.write_text("this is not an image")
    cases["not_nifti"] = (text, "not a readable NIfTI image")
    good = save("good", cube)
    trunc = d / "truncated.nii.gz"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    cases["truncated"] = (trunc, "not a readable NIfTI image")
    cases["2d"] = (save("flat", cube[:, :, 0]), "expected a 3D image, got 2D")
    cases["4d"] = (save("series", np.stack([cube, cube, cube], -1)), "expected a 3D image, got 4D")
    cases["zeros"] = (save("zeros", np.zeros_like(cube)), "image is constant")
    nan = cube.copy()
    nan[3, 4, 5] = np.nan
    cases["nan"] = (save("nan", nan), "1 voxels are NaN or infinite")
    cases["voxels"] = (save("huge_voxels", cube, np.diag([40.0, 40.0, 40.0, 1.0])), "implausible voxel size")
    cases["missing"] = (d / "absent.nii.gz", "file not found")
    return cases


@pytest.mark.parametrize("case", ["not_nifti", "truncated", "2d", "4d", "zeros", "nan", "voxels", "missing"])
def test_bad_input_marked_failed_without_partial_output(setup, tmp_path, case):
    root, settings, _ = setup
    path, message = _bad_inputs(tmp_path)[case]
    record = _run(root, settings, path, out=f"bad-{case}")
    assert not record["pass"]
    assert str(path) in record["reason"] and message in record["reason"], record["reason"]
    out = Outputs.for_scan(root / f"bad-{case}", "sub-SIM001", "ses-M000", SPACE)
    assert json.loads(out.qc_json.read_text())["pass"] is False
    assert out.qc_png.is_file()
    assert not any(f.exists() for f in out.images())
    assert not [p for p in out.qc_json.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_qc_table_collects_failures(setup, tmp_path):
    root, settings, _ = setup
    scans = pd.DataFrame({"participant_id": ["sub-SIM001", "sub-SIM009"], "session_id": ["ses-M000", "ses-M000"]})
    scans.to_csv(tmp_path / "scans.tsv", sep="\t", index=False)
    bad = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), bad)
    _run(root, settings, bad, out="table")
    qc_table(tmp_path / "scans.tsv", root / "table", SPACE, tmp_path / "qc.tsv")
    qc = pd.read_csv(tmp_path / "qc.tsv", sep="\t")
    assert list(qc["qc_pass"]) == [False, False]
    assert "image is constant" in qc["qc_reason"][0]
    assert "no readable QC record" in qc["qc_reason"][1]


def test_gzip_sanity_of_fixture(tmp_path):
    """The truncated case really is a broken gzip stream (so the test above means what it says)."""
    path, _ = _bad_inputs(tmp_path)["truncated"]
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(path.read_bytes())


def test_cli_refuses_sessions_and_files_that_do_not_pair(tmp_path):
    from sslad.cli import main

    args = ["preprocess", "--participant", "sub-01", "--sessions", "ses-M000", "ses-M012", "--t1w",
            str(tmp_path / "a.nii.gz"), "--template", "t.nii.gz", "--template-mask", "m.nii.gz",
            "--space", "MNI152NLin2009aSym", "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="2 sessions but 1 T1w files"):
        main(args)
    assert not (tmp_path / "out").exists()
