"""The simulated cohort: BIDS layout, ground truth, determinism and the disease model."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from sslad.simulate import GROUPS, draw_cohort, load_template, render_scan, simulate_cohort


def test_bids_layout_and_ground_truth(tmp_path, tiny_sim):
    out = tmp_path / "bids"
    subjects = simulate_cohort(tiny_sim, out)
    participants = pd.read_csv(out / "participants.tsv", sep="\t")
    assert list(participants.columns) == ["participant_id", "sex", "age"]
    assert len(participants) == 6
    truth = pd.read_csv(out / "derivatives/simulation/scans.tsv", sep="\t")
    assert len(truth) == sum(len(s.months) for s in subjects)
    for s in subjects:
        sessions = pd.read_csv(out / s.participant_id / f"{s.participant_id}_sessions.tsv", sep="\t")
        assert list(sessions.columns) == ["session_id", "age", "diagnosis", "days_from_baseline"]
        assert sessions["session_id"].str.fullmatch(r"ses-M\d{3}").all()
        assert (np.diff(sessions["days_from_baseline"]) > 150).all()  # >= 6 months apart
        for ses in sessions["session_id"]:
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
    cfg = {**default_config["simulate"], "n_subjects": 200, "label_noise": 0.0, "reverter_rate": 0.0}
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


def test_atrophy_grows_with_stage(tiny_sim):
    """Same subject and pose at a later stage: less brain, as the model is meant to learn."""
    tpl = load_template(tiny_sim["resolution_mm"])
    s = next(x for x in draw_cohort({**tiny_sim, "n_subjects": 20}) if x.group == "mci_ad")
    early = render_scan(s, 0, tpl, tiny_sim, np.random.default_rng(0))[1].sum()
    late = render_scan(s, len(s.months) - 1, tpl, tiny_sim, np.random.default_rng(0))[1].sum()
    assert late < early * 0.98
