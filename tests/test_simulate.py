"""The simulated cohort: BIDS layout, ground truth, determinism and the disease model."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from sslad.simulate import (
    GROUPS,
    HIPPOCAMPI,
    HIPPOCAMPUS_RADIUS_MM,
    VENTRICLE_RADIUS_MM,
    atrophy_offsets,
    draw_cohort,
    load_template,
    log_volumes,
    render_scan,
    simulate_cohort,
)


def test_bids_layout_and_ground_truth(tmp_path, tiny_sim):
    out = tmp_path / "bids"
    subjects = simulate_cohort(tiny_sim, out)
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "sex", "age"]
    assert len(participants) == 6
    truth = pd.read_csv(out / "derivatives/simulation/scans.tsv", sep="\t")
    assert len(truth) == sum(sum(s.imaged) for s in subjects)  # clinical-only visits have no scan
    for s in subjects:
        sessions = pd.read_csv(out / s.participant_id / f"{s.participant_id}_sessions.tsv", sep="\t")
        assert list(sessions.columns) == ["session_id", "age", "diagnosis", "days_from_baseline"]
        assert sessions["session_id"].str.fullmatch(r"ses-M\d{3}").all()
        assert (np.diff(sessions["days_from_baseline"]) > 150).all()  # >= 6 months apart
        for ses, imaged in zip(sessions["session_id"], s.imaged):
            if not imaged:
                continue
            img = nib.load(out / s.participant_id / ses / "anat" / f"{s.participant_id}_{ses}_T1w.nii.gz")
            mask = nib.load(out / "derivatives/simulation" / s.participant_id / ses / "anat"
                            / f"{s.participant_id}_{ses}_desc-brain_mask.nii.gz")
            assert img.ndim == 3 and img.shape == mask.shape
            np.testing.assert_allclose(img.header.get_zooms(), (6, 6, 6))
            brain_ml = mask.get_fdata().sum() * 216 / 1000
            assert 1100 < brain_ml < 2300, brain_ml
            data = img.get_fdata()
            inside = data[mask.get_fdata() > 0].mean()
            assert inside > 3 * data[:2].mean()  # brain much brighter than the air at the border
    assert (truth[["rot_x_deg", "rot_y_deg", "rot_z_deg"]].abs() <= tiny_sim["max_rotation_deg"]).all().all()
    assert (truth[["shift_x_mm", "shift_y_mm", "shift_z_mm"]].abs() <= tiny_sim["max_translation_mm"]).all().all()


def test_same_seed_same_cohort_other_seed_differs(tiny_sim):
    tpl = load_template(tiny_sim["resolution_mm"])
    a, b = draw_cohort(tiny_sim), draw_cohort(tiny_sim)
    assert a == b
    img_a = render_scan(a[0], 0, tpl, tiny_sim, np.random.default_rng(3))[0]
    img_b = render_scan(b[0], 0, tpl, tiny_sim, np.random.default_rng(3))[0]
    np.testing.assert_array_equal(img_a, img_b)
    other = draw_cohort({**tiny_sim, "seed": tiny_sim["seed"] + 1})
    assert [s.months for s in other] != [s.months for s in a]


def test_disease_course_follows_groups(default_config):
    cfg = {**default_config["simulate"], "n_subjects": 200, "label_noise": 0.0, "reverter_rate": 0.0,
           "diagnosis_noise": {"subject_sd": 0.0, "visit_sd": 0.0}}
    subjects = draw_cohort(cfg)
    assert {s.group for s in subjects} == set(GROUPS)
    for s in subjects:
        dx = s.diagnoses
        if s.group == "cn":
            assert set(dx) == {"CN"}
        elif s.group == "mci":
            assert set(dx) == {"MCI"}
        elif s.group == "ad":
            assert set(dx) == {"AD"}
        elif s.group == "cn_mci":
            assert dx[0] == "CN" and dx[-1] in ("MCI", "AD") and len(dx) >= 3
        else:
            assert dx[0] == "MCI" and dx[-1] == "AD" and len(dx) >= 3
        assert not s.reverter
        stages = [s.stage(v) for v in range(len(s.months))]
        assert stages == sorted(stages)  # disease never recedes


def _region_volumes(subject, visit: int, labels: dict, tpl, cfg: dict) -> tuple[dict[str, float], dict]:
    """Volumes (voxels) of the template-space regions ``labels`` (name -> boolean template array) as
    one rendered scan shows them, and that scan's ground truth. render_scan is linear in the template's
    intensities: a scan rendered from the region's indicator minus one rendered from zeros (same draws,
    no noise or bias) is the region's partial-volume map, times the scan's intensity scale."""
    empty = render_scan(subject, visit, dataclasses.replace(tpl, t1=np.zeros_like(tpl.t1)), cfg,
                        np.random.default_rng(0))
    base, mask, pose = empty[0].astype(np.float64), empty[1], empty[3]
    out = {"brain": float(mask.sum())}
    for name, region in labels.items():
        image = render_scan(subject, visit, dataclasses.replace(tpl, t1=region.astype(np.float32)), cfg,
                            np.random.default_rng(0))[0]
        out[name] = float((image - base).sum() / pose["intensity_scale"])
    return out, pose


def test_hippocampi_shrink_and_ventricles_grow_relative_to_the_brain_as_the_ground_truth_says(tiny_sim):
    """The disease is in the images after the affine part is taken out: the hippocampal balls and the
    ventricular ball, traced through render_scan (pose, head size, anatomy, atrophy), change relative to
    the rendered brain (what an affine registration to the template leaves) by the ground truth's
    hippocampus_volume and ventricles_volume ratios, and a converter's change beyond a stable CN's.
    The same subject on both courses, first and last visit, 3-mm scans.
    Measured: relative to the brain, CN hippocampi x0.916 (truth 0.921), ventricles x1.170 (1.180);
    the same subject as an MCI->AD converter x0.807 (0.819) and x1.492 (1.490); brain x0.981 and x0.953."""
    cfg = {**tiny_sim, "resolution_mm": 3, "noise": 0.0, "bias": 0.0}
    tpl = load_template(cfg["resolution_mm"])
    ijk = np.argwhere(np.ones(tpl.t1.shape, bool))
    affine = np.linalg.inv(tpl.inv_affine)
    mm = ijk @ affine[:3, :3].T + affine[:3, 3]  # template voxels in mm
    hippocampi = np.min([np.linalg.norm(mm - c, axis=1) for c in HIPPOCAMPI], axis=0)
    labels = {"hippocampus": hippocampi < HIPPOCAMPUS_RADIUS_MM,
              "ventricles": np.linalg.norm(mm - tpl.ventricle_center, axis=1) < VENTRICLE_RADIUS_MM}
    labels = {k: v.reshape(tpl.t1.shape) for k, v in labels.items()}
    cn = next(x for x in draw_cohort({**cfg, "n_subjects": 20}) if x.group == "cn" and len(x.months) > 2)
    converter = dataclasses.replace(cn, group="mci_ad", stage0=1.8, rate=0.3)
    change = {}
    for subject in (cn, converter):
        visits = (0, len(cn.months) - 1)
        (first, truth0), (last, truth1) = (_region_volumes(subject, v, labels, tpl, cfg) for v in visits)
        brain = truth1["brain_volume"] / truth0["brain_volume"]
        assert last["brain"] / first["brain"] == pytest.approx(brain, rel=0.005)  # head size and shrinkage
        for name in labels:
            relative = (last[name] / last["brain"]) / (first[name] / first["brain"])
            assert relative == pytest.approx(truth1[f"{name}_volume"] / truth0[f"{name}_volume"], rel=0.02), (
                subject.group, name)
            change[subject.group, name] = relative
    assert change["cn", "hippocampus"] < 0.95 and change["cn", "ventricles"] > 1.1  # ageing alone
    assert change["mci_ad", "hippocampus"] < change["cn", "hippocampus"] - 0.08
    assert change["mci_ad", "ventricles"] > change["cn", "ventricles"] + 0.25


def _cohen_d(a: np.ndarray, b: np.ndarray) -> float:
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    return float((b.mean() - a.mean()) / np.sqrt(pooled))


@pytest.mark.parametrize("seed", [1, 2])
def test_simulation_is_calibrated_to_published_effect_sizes(default_config, seed):
    """Measured on the simulation's ground truth (the hippocampal volume each scan is rendered with),
    by diagnosis at baseline and by course, against the ranges docs/study.md gives with its sources:
    annual hippocampal loss 1.4% (stable CN), 2-2.5% (stable MCI), 3.5-4.5% (MCI->AD), 4.7% (AD);
    between-subject SD ~10%; baseline Cohen's d CN vs AD 1.5-2, CN vs MCI ~0.7."""
    cfg = {**default_config["simulate"], "n_subjects": 2000, "seed": seed}
    cfg["visits"] = {**cfg["visits"], "min": 3, "single_visit_fraction": 0.0}
    subjects = draw_cohort(cfg)
    base = {dx: np.array([np.exp(log_volumes(s, 0, cfg)["hippocampus"]) for s in subjects if s.diagnoses[0] == dx])
            for dx in ("CN", "MCI", "AD")}
    assert 1.5 <= _cohen_d(base["AD"], base["CN"]) <= 2.1
    assert 0.55 <= _cohen_d(base["MCI"], base["CN"]) <= 0.95
    for dx, v in base.items():
        assert 0.08 <= v.std() / v.mean() <= 0.13, dx
    expected = {"cn": (0.012, 0.016), "cn_mci": (0.017, 0.025), "mci": (0.019, 0.025), "mci_ad": (0.035, 0.045),
                "ad": (0.042, 0.052)}
    for group, (lo, hi) in expected.items():
        slopes = [np.polyfit(np.array(s.months) / 12, [log_volumes(s, v, cfg)["hippocampus"]
                                                       for v in range(len(s.months))], 1)[0]
                  for s in subjects if s.group == group]
        loss = 1 - np.exp(np.mean(slopes))
        assert lo <= loss <= hi, (group, loss)
    # the diagnosis is a noisy function of the stage: some of every course is read as another class
    cn_read_mci = np.mean([s.diagnoses[0] != "CN" for s in subjects if s.group == "cn"])
    assert 0.005 < cn_read_mci < 0.15


def test_rendered_hippocampus_has_the_ground_truth_volume():
    """The deformation render_scan samples with gives the hippocampal ball the volume the ground truth
    states: counted on a 0.25-mm grid of subject space mapped into the template."""
    tpl = load_template(6)
    step = 0.25
    axis = np.arange(-9, 9 + step, step)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    for log_volume in (-0.3, -0.1, 0.0, 0.1):
        volumes = {"hippocampus": log_volume, "ventricles": 0.0, "brain": 0.0}
        pts = grid + HIPPOCAMPI[0]
        mapped = pts + atrophy_offsets(pts, tpl, volumes)
        inside = (np.linalg.norm(mapped - HIPPOCAMPI[0], axis=1) < HIPPOCAMPUS_RADIUS_MM).sum() * step**3
        ball = 4 / 3 * np.pi * HIPPOCAMPUS_RADIUS_MM**3
        assert inside / ball == pytest.approx(np.exp(log_volume), rel=0.02)


def test_null_disease_effect_renders_no_disease(tiny_sim):
    """disease_effect 0: an AD course and a stable CN course of the same subject render the same image
    at every visit; at 1 they differ."""
    tpl = load_template(tiny_sim["resolution_mm"])
    s = next(x for x in draw_cohort({**tiny_sim, "n_subjects": 20}) if x.group == "cn" and len(x.months) > 1)
    sick = dataclasses.replace(s, group="ad", stage0=2.4, rate=0.2, diagnoses=("AD",) * len(s.months))
    for effect, same in ((0.0, True), (1.0, False)):
        cfg = {**tiny_sim, "disease_effect": effect}
        a = render_scan(s, 1, tpl, cfg, np.random.default_rng(5))[0]
        b = render_scan(sick, 1, tpl, cfg, np.random.default_rng(5))[0]
        assert np.array_equal(a, b) == same, effect
    null = {**tiny_sim, "disease_effect": 0.0}
    assert draw_cohort(null) == draw_cohort(tiny_sim)  # same subjects, visits and diagnoses
