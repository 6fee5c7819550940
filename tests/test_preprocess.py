"""Preprocessing with real ANTs on tiny simulated scans and a real head (Colin27): accuracy, QC
record and verdict, scans that cannot be registered, bad inputs, reruns."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from sslad import colin27
from sslad.preprocess import Outputs, band_threshold, qc_table, refine_mask, run, verdict
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
    assert verdict(record, settings["qc"]) == (True, ""), record["reason"]
    out = Outputs.for_scan(root / "preproc", sub, ses, SPACE)
    for f in out.images() + [out.qc_json, out.qc_png]:
        assert f.is_file(), f
    saved = json.loads(out.qc_json.read_text())
    for key in ("template_correlation", "brain_volume_ml", "mask_components", "mask_touches_border", "failed_stage",
                "reason", "registration", "seconds", "outputs", "input", "space"):
        assert key in saved
    assert saved["failed_stage"] is None and saved["registration"]["accepted"]
    stages = saved["registration"]["searches"][0]["starts"][0]["stages"]  # the narrow search's rigid start, then affine
    assert [s["stage"] for s in stages] == ["start", "affine"] and stages[1]["kept"]
    assert "qc" not in saved["settings"]  # the thresholds are the QC table's, not the scan's
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
        assert _run(root, settings, t1w, sub, ses, out)["failed_stage"] is None
        arrays.append(np.load(Outputs.for_scan(root / out, sub, ses, SPACE).array))
    np.testing.assert_array_equal(*arrays)


def test_refinement_threshold_is_estimated_on_each_scan():
    """Just above the CSF class, whether the CSF is dark and sharp or bright and spread (a blurred edge)."""
    rng = np.random.default_rng(0)
    tissue = rng.normal(100, 8, 30_000)
    for csf_mean, csf_sd in ((10, 3), (50, 12)):
        band = np.concatenate([rng.normal(csf_mean, csf_sd, 20_000), tissue])
        thr = band_threshold(band, 0.2, seed=1)
        assert csf_mean + 1.5 * csf_sd < thr < 100 - 2 * 8, (csf_mean, thr)
        assert band_threshold(band, 0.2, seed=1) == thr  # same voxels, same seed: same threshold
    dark, bright = (band_threshold(np.concatenate([rng.normal(c, sd, 20_000), tissue]), 0.2, 1)
                    for c, sd in ((10, 3), (50, 12)))
    assert bright > dark + 20


def _sphere_scan(pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1-mm ball of tissue (radius 25 mm, partial-volume edge) in CSF, then air; its true mask and a
    prior that is 1 mm too small, all padded by ``pad`` voxels of air."""
    n = 72
    r = np.sqrt(sum((g - n / 2) ** 2 for g in np.meshgrid(*[np.arange(n)] * 3, indexing="ij")))
    image = 15 + 85 * np.clip(25.5 - r, 0, 1) - 15 * np.clip(r - 30, 0, 1)
    image = image + np.random.default_rng(1).normal(0, 8, image.shape)  # noise and tissue texture
    return tuple(np.pad(a, pad) for a in (np.abs(image).astype(np.float32), r < 25, (r < 24).astype(np.float32)))


def test_refine_mask_moves_the_boundary_to_the_scan_on_its_bounding_box(default_config):
    import ants

    settings = {**default_config["preprocess"], "refine_mm": 2.0}
    masks = {}
    for pad in (0, 30):  # the same head in a field of view that is mostly air
        image, truth, prior = _sphere_scan(pad)
        masks[pad] = refine_mask(ants.from_numpy(image), ants.from_numpy(prior), 1.0, settings)
        dice = 2 * (masks[pad] & truth).sum() / (masks[pad].sum() + truth.sum())
        prior_dice = 2 * ((prior > 0) & truth).sum() / ((prior > 0).sum() + truth.sum())
        assert prior_dice < 0.95 and dice > 0.97, (prior_dice, dice)
    np.testing.assert_array_equal(masks[0], masks[30][30:-30, 30:-30, 30:-30])
    with pytest.raises(ValueError, match="lies outside the image"):
        refine_mask(ants.from_numpy(image), ants.from_numpy(np.zeros_like(prior)), 1.0, settings)


def test_a_band_of_about_one_voxel_is_cut_at_the_fixed_fraction(default_config):
    """Coarse voxels (refine_mm / voxel < 1.5): the fixed refine_threshold decides, not the mixture."""
    import ants

    image, _, prior = _sphere_scan(0)
    settings = {**default_config["preprocess"], "refine_mm": 2.0}

    def mask(voxel_mm: float, **change) -> np.ndarray:
        return refine_mask(ants.from_numpy(image), ants.from_numpy(prior), voxel_mm, {**settings, **change})

    coarse = mask(2.0)  # the band is one voxel deep
    np.testing.assert_array_equal(coarse, mask(2.0, refine_tissue_probability=0.9))
    assert mask(2.0, refine_threshold=0.9).sum() < coarse.sum()
    fine = mask(1.0)  # two voxels deep: the mixture
    np.testing.assert_array_equal(fine, mask(1.0, refine_threshold=0.9))
    assert mask(1.0, refine_tissue_probability=0.95).sum() < fine.sum()


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
    assert record["failed_stage"] == "input" and not verdict(record, settings["qc"])[0]
    assert str(path) in record["reason"] and message in record["reason"], record["reason"]
    out = Outputs.for_scan(root / f"bad-{case}", "sub-SIM001", "ses-M000", SPACE)
    assert json.loads(out.qc_json.read_text())["failed_stage"] == "input"
    assert out.qc_png.is_file()
    assert not any(f.exists() for f in out.images())
    assert not [p for p in out.qc_json.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_qc_table_collects_failures_and_applies_the_thresholds(setup, tmp_path):
    root, settings, truth = setup
    sub, ses = truth.iloc[0][["participant_id", "session_id"]]
    scans = pd.DataFrame({"participant_id": ["sub-SIM008", "sub-SIM009", sub],
                          "session_id": ["ses-M000", "ses-M000", ses]})
    scans.to_csv(tmp_path / "scans.tsv", sep="\t", index=False)
    bad = tmp_path / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.eye(4)), bad)
    _run(root, settings, bad, "sub-SIM008", "ses-M000", out="table")
    _run(root, settings, root / "bids" / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz", sub, ses, out="table")
    qc_table(tmp_path / "scans.tsv", root / "table", SPACE, tmp_path / "qc.tsv", settings["qc"])
    qc = pd.read_csv(tmp_path / "qc.tsv", sep="\t", keep_default_na=False)
    assert list(qc["qc_pass"]) == [False, False, True]
    assert "image is constant" in qc["qc_reason"][0] and qc["failed_stage"][0] == "input"
    assert "no readable QC record" in qc["qc_reason"][1]
    # a stricter threshold fails the good scan from its record alone, keeping its array for the mosaic
    strict = {**settings["qc"], "min_template_correlation": 0.99}
    qc_table(tmp_path / "scans.tsv", root / "table", SPACE, tmp_path / "strict.tsv", strict)
    row = pd.read_csv(tmp_path / "strict.tsv", sep="\t", keep_default_na=False).iloc[2]
    assert not row["qc_pass"] and "template correlation" in row["qc_reason"] and "below 0.99" in row["qc_reason"]
    assert Path(row["array"]).is_file()


def _unregistrable(d: Path, case: str) -> Path:
    """Images no brain template fits: noise, a hand-like blob (a palm and fingers), a cylinder phantom."""
    rng = np.random.default_rng(3)
    shape = (48, 56, 48)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    if case == "noise":
        data = rng.random(shape).astype(np.float32) * 100
    elif case == "hand":
        data = ((np.abs(i - 24) < 12) & (np.abs(j - 18) < 10) & (np.abs(k - 24) < 4)).astype(np.float32)
        for f in range(4):  # fingers
            data[(np.abs(i - (14 + 6.5 * f)) < 2) & (j >= 28) & (j < 48) & (np.abs(k - 24) < 2)] = 1
        data = ndimage.gaussian_filter(data * 80, 1) + rng.normal(0, 2, shape)
    else:  # phantom: a uniform cylinder with three inserts
        data = ((i - 24) ** 2 + (j - 28) ** 2 < 18 ** 2) & (np.abs(k - 24) < 18)
        data = data * 60.0
        for x, y, v in ((18, 22, 120), (30, 22, 20), (24, 34, 200)):
            data[((i - x) ** 2 + (j - y) ** 2 < 9) & (np.abs(k - 24) < 18)] = v
        data = data + rng.normal(0, 2, shape)
    path = d / f"{case}.nii.gz"
    nib.save(nib.Nifti1Image(np.abs(data).astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


@pytest.mark.parametrize("case", ["noise", "hand", "phantom"])
def test_scan_that_cannot_be_registered_fails_qc_with_a_reason(setup, tmp_path, case):
    root, settings, _ = setup
    record = _run(root, settings, _unregistrable(tmp_path, case), out=f"unreg-{case}")  # returns: the study goes on
    passed, reason = verdict(record, settings["qc"])
    assert not passed
    out = Outputs.for_scan(root / f"unreg-{case}", "sub-SIM001", "ses-M000", SPACE)
    saved = json.loads(out.qc_json.read_text())
    assert out.qc_png.is_file()
    if saved["failed_stage"] == "registration":  # says what was tried: both searches
        assert "registration: best template correlation" in reason and "wide search" in reason
        assert [a["search"] for a in saved["registration"]["searches"]] == ["narrow", "wide"]
    else:  # or an earlier stage failed, and says which
        assert saved["failed_stage"] in ("n4", "registration") and saved["reason"].startswith(saved["failed_stage"])


@pytest.mark.skipif(not colin27.available(), reason="needs Debian's mricron-data (Colin27)")
def test_real_head_far_from_the_template_pose(setup, tmp_path):
    """Colin27 turned and moved (seed 105: a long neck, rotated 25 and 20 degrees), at 2 mm."""
    root, settings, _ = setup
    pose = colin27.make_scan(105, tmp_path / "t1w.nii.gz", tmp_path / "mask.nii.gz", voxel_mm=2.0)
    assert pose["field_of_view"] == "neck" and max(abs(d) for d in pose["rotation_deg"]) > 20
    record = _run(root, settings, tmp_path / "t1w.nii.gz", out="colin")
    assert verdict(record, settings["qc"]) == (True, ""), record["reason"]
    est = nib.load(record["outputs"]["native_mask"]).get_fdata() > 0
    gt = nib.load(tmp_path / "mask.nii.gz").get_fdata() > 0
    assert 2 * (est & gt).sum() / (est.sum() + gt.sum()) > 0.93


def test_gzip_sanity_of_fixture(tmp_path):
    """The truncated case really is a broken gzip stream (so the test above means what it says)."""
    path, _ = _bad_inputs(tmp_path)["truncated"]
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(path.read_bytes())


def test_cli_refuses_sessions_and_files_that_do_not_pair(tmp_path, default_config):
    from sslad.cli import main

    args = ["preprocess", "--settings", json.dumps(default_config["preprocess"]),
            "--participant", "sub-01", "--sessions", "ses-M000", "ses-M012", "--t1w",
            str(tmp_path / "a.nii.gz"), "--template", "t.nii.gz", "--template-mask", "m.nii.gz",
            "--space", "MNI152NLin2009aSym", "--out-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="2 sessions but 1 T1w files"):
        main(args)
    assert not (tmp_path / "out").exists()


def _declared_huge(path: Path, side: int = 1000) -> Path:
    """A 1 MB .nii.gz whose header declares side^3 float32 voxels (4 GB at 1000): non-zero content,
    so that only the size can reject it."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((side, side, side))
    hdr.set_data_dtype(np.float32)
    hdr.set_zooms((1.0, 1.0, 1.0))
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + np.random.default_rng(0).random(250_000).astype(np.float32).tobytes())
    return path


def test_an_image_declaring_too_many_voxels_is_rejected_unread(setup, tmp_path):
    """The size check reads the header only: the process's peak memory stays far below the 4 GB
    the header declares (measured in a fresh process)."""
    import subprocess
    import sys

    root, settings, _ = setup
    huge = _declared_huge(tmp_path / "huge.nii.gz")
    record = _run(root, settings, huge, out="huge")
    assert record["failed_stage"] == "input" and "declares 1000x1000x1000 = 1000 million voxels" in record["reason"]
    assert "preprocess.max_voxels_million" in record["reason"]
    # VmHWM: the peak of this process's own memory (ru_maxrss would carry its parent's over exec)
    probe = ("import sys; from sslad.preprocess import check_input, InputError\n"
             "try: check_input(sys.argv[1], 100e6)\nexcept InputError as e: print(e)\n"
             "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", probe, str(huge)], capture_output=True, text=True, check=True)
    assert "not read" in out.stdout and int(out.stdout.split()[-1]) < 400_000  # kB: no 4 GB decompression


def _worker(code: str) -> list[str]:
    import sys

    return [sys.executable, "-c", code]


def test_a_worker_that_dies_fails_its_scan_and_the_next_scans_go_on(tmp_path):
    from sslad.preprocess import run_participant

    scans = [("ses-M000", "a.nii.gz"), ("ses-M012", "b.nii.gz")]
    # a worker that finishes the first scan it is given when it is ses-M012, and is killed otherwise
    code = ("import os, sys, json; from sslad.preprocess import Outputs\n"
            f"out = Outputs.for_scan({str(tmp_path)!r}, 'sub-01', sys.argv[sys.argv.index('--sessions') + 1], "
            f"{SPACE!r})\n"
            "if out.qc_json.name.startswith('sub-01_ses-M012'):\n"
            "    out.qc_json.parent.mkdir(parents=True, exist_ok=True)\n"
            "    out.qc_json.write_text(json.dumps({'session_id': 'ses-M012', 'failed_stage': None}))\n"
            "else: os.kill(os.getpid(), 9)\n")
    records = run_participant(_worker(code), "sub-01", scans, str(tmp_path), SPACE, None)
    assert records[0]["failed_stage"] == "crash" and "died of SIGKILL" in records[0]["reason"]
    assert records[1] == {"session_id": "ses-M012", "failed_stage": None}
    assert Outputs.for_scan(tmp_path, "sub-01", "ses-M000", SPACE).qc_png.is_file()


def test_scans_left_when_the_time_runs_out_are_recorded(tmp_path):
    from sslad.preprocess import run_participant

    scans = [("ses-M000", "a.nii.gz"), ("ses-M012", "b.nii.gz")]
    records = run_participant(_worker("import time; time.sleep(60)"), "sub-01", scans, str(tmp_path), SPACE, 1.0)
    assert [r["failed_stage"] for r in records] == ["time_limit", "time_limit"]
    assert "used its 1 s" in records[0]["reason"]


def test_a_participant_job_killed_mid_run_appears_failed_in_the_qc_table(setup, tmp_path):
    """The real job (`sslad preprocess`) on two real scans; its worker is killed during the first:
    the job still exits 0, the first scan is a failure in qc.tsv with the reason, the second passes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, settings, truth = setup
    sub = truth["participant_id"].iloc[0]
    sessions = list(truth.loc[truth["participant_id"] == sub, "session_id"])[:2]
    t1w = [str(root / "bids" / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz") for ses in sessions]
    cmd = [sys.executable, "-m", "sslad", "preprocess", "--settings", json.dumps(settings), "--participant", sub,
           "--sessions", *sessions, "--t1w", *t1w, "--template", str(root / "tpl.nii.gz"), "--template-mask",
           str(root / "tplmask.nii.gz"), "--space", SPACE, "--out-dir", str(tmp_path / "preproc")]
    job = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{job.pid}/task/{job.pid}/children")
    deadline = time.monotonic() + 60
    while not children.read_text().split() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the worker is loading its libraries or on the first scan
    os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
    _, log = job.communicate(timeout=300)
    assert job.returncode == 0, log
    assert "1 of 2 scans preprocessed" in log and "died of SIGKILL" in log
    pd.DataFrame({"participant_id": [sub, sub], "session_id": sessions}).to_csv(tmp_path / "scans.tsv", sep="\t",
                                                                                index=False)
    qc_table(tmp_path / "scans.tsv", tmp_path / "preproc", SPACE, tmp_path / "qc.tsv", settings["qc"])
    qc = pd.read_csv(tmp_path / "qc.tsv", sep="\t", keep_default_na=False)
    assert list(qc["qc_pass"]) == [False, True] and list(qc["failed_stage"]) == ["crash", ""]
    assert "died of SIGKILL" in qc["qc_reason"][0]
