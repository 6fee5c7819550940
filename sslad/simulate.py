"""Simulate a longitudinal Clinica-style BIDS cohort from the MNI152 template that nilearn ships.

Why: the study must run anywhere with nothing downloaded, and every stage needs ground truth to be
tested against (brain masks for skull stripping, poses for registration, disease stage for the
models). The nilearn template is skull-stripped, so a head (CSF, skull, scalp fat, neck) is built
around it with per-subject thickness and intensity. Each subject gets its own anatomy (head size,
smooth deformation, hippocampal and ventricular size); each visit a rigid pose, a bias field, Rician
noise and an intensity scale.

Disease is a latent stage (0 = healthy, 1 = MCI threshold, 2 = AD threshold) that grows with time
for converters. The diagnosis is the stage read through a noisy link (a per-subject offset, as
cognitive reserve, and per-visit noise), so the same atrophy can carry different diagnoses. The
images show volumes calibrated to published effect sizes (``atrophy`` settings, docs/study.md):
hippocampal volume varies between subjects and shrinks with age for everyone, and with disease by a
deficit that grows with the baseline stage and a per-course annual loss; the ventricles grow and the
whole brain shrinks in proportion. ``disease_effect`` scales every disease term: 0 gives a null
cohort whose images carry no trace of the disease (same subjects, visits and diagnoses).
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from sslad.io import atomic_dir, write_tsv
from sslad.register import rotation
from sslad.visit_time import DAYS_PER_MONTH

GROUPS = ("cn", "cn_mci", "mci", "mci_ad", "ad")
DX_BY_STAGE = ("CN", "MCI", "AD")
HEAD_CENTER = np.array([0.0, -18.0, 10.0])  # mm, MNI: rotation centre of the pose
HIPPOCAMPI = np.array([[-27.0, -22.0, -14.0], [27.0, -22.0, -14.0]])  # mm, MNI
FOV_MM = np.array([[-105.0, 105.0], [-140.0, 105.0], [-115.0, 115.0]])  # native field of view


@dataclass(frozen=True)
class Template:
    """Template-space arrays the simulator samples from (all on one padded grid)."""

    t1: np.ndarray  # intensity, white matter ~ 1
    brain: np.ndarray  # brain mask as float
    dist: np.ndarray  # mm outside the brain mask (0 inside)
    inv_affine: np.ndarray  # world mm -> voxel index
    ventricle_center: np.ndarray  # mm
    brain_center: np.ndarray  # mm


def load_template(resolution_mm: float, pad_mm: float = 24.0) -> Template:
    """Load nilearn's MNI152 template and mask, normalise to white matter = 1, pad for the head."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template, load_mni152_wm_mask

    res = 1 if resolution_mm < 2 else 2
    t1_img = load_mni152_template(resolution=res)
    t1 = t1_img.get_fdata(dtype=np.float32)
    brain = load_mni152_brain_mask(resolution=res).get_fdata(dtype=np.float32) > 0.5
    wm = load_mni152_wm_mask(resolution=res).get_fdata(dtype=np.float32) > 0.5
    t1 = t1 / np.median(t1[wm])
    pad = int(np.ceil(pad_mm / res))
    t1 = np.pad(t1 * brain, pad)
    brain = np.pad(brain, pad)
    affine = t1_img.affine.copy()
    affine[:3, 3] -= pad * res
    dist = ndimage.distance_transform_edt(~brain, sampling=res).astype(np.float32)
    # Ventricles: dark voxels inside the brain near the midline, above the temporal lobes.
    coords = np.argwhere(brain & (t1 < 0.35))
    mm = coords @ affine[:3, :3].T + affine[:3, 3]
    central = (np.abs(mm[:, 0]) < 22) & (mm[:, 1] > -45) & (mm[:, 1] < 25) & (mm[:, 2] > -5) & (mm[:, 2] < 35)
    ventricle_center = mm[central].mean(axis=0) if central.any() else np.array([0.0, -15.0, 15.0])
    brain_center = np.argwhere(brain).mean(axis=0) @ affine[:3, :3].T + affine[:3, 3]
    return Template(t1.astype(np.float32), brain.astype(np.float32), dist, np.linalg.inv(affine),
                    ventricle_center, brain_center)


def _sample(volume: np.ndarray, inv_affine: np.ndarray, pts: np.ndarray, order: int = 1,
            cval: float = 0.0) -> np.ndarray:
    """Sample ``volume`` at world points ``pts`` (N x 3, mm)."""
    ijk = pts @ inv_affine[:3, :3].T + inv_affine[:3, 3]
    return ndimage.map_coordinates(volume, ijk.T, order=order, mode="constant", cval=cval)


def _smooth_field(rng: np.random.Generator, amplitude_mm: float, nodes: int = 6) -> np.ndarray:
    """Random smooth 3-vector field on a coarse grid spanning the field of view."""
    field = rng.normal(0.0, 1.0, size=(3, nodes, nodes, nodes))
    field = ndimage.gaussian_filter(field, sigma=(0, 1, 1, 1), mode="nearest")
    field *= amplitude_mm / (field.std() + 1e-8)
    # Upsample once with cubic splines; evaluating it per voxel is then a cheap linear lookup.
    return ndimage.zoom(field, (1, 5, 5, 5), order=3, mode="nearest").astype(np.float32)


def _eval_field(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    nodes = field.shape[1]
    rel = (pts - FOV_MM[:, 0]) / (FOV_MM[:, 1] - FOV_MM[:, 0]) * (nodes - 1)
    return np.stack([ndimage.map_coordinates(f, rel.T, order=1, mode="nearest") for f in field], axis=1)


@dataclass(frozen=True)
class Subject:
    participant_id: str
    group: str
    sex: str
    age: float  # at baseline, years
    months: tuple[int, ...]  # scheduled visit times from baseline (the session codes)
    days: tuple[int, ...]  # when each visit took place (off schedule by up to visits.jitter_days)
    stage0: float
    rate: float  # stage units per year
    diagnoses: tuple[str, ...]
    reverter: bool
    head_scale: float
    anatomy_seed: int
    layers: tuple[float, ...]  # csf, skull, scalp thickness (mm); csf, skull, scalp, neck intensity
    imaged: tuple[bool, ...]  # per visit: False = a clinical visit with a diagnosis but no T1w image
    hippocampus: float = 0.0  # log hippocampal volume of this subject's anatomy (0 = the template's)
    ventricles: float = 0.0  # log ventricular volume, likewise
    loss_deviation: float = 0.0  # this subject's annual hippocampal loss minus its course's mean

    def stage(self, visit: int) -> float:
        return self.stage0 + self.rate * self.months[visit] / 12.0


def _stage_deficit(stage: float, deficit: dict[str, float]) -> float:
    """Disease-related log hippocampal loss at a latent stage: 0 when healthy, ``deficit.mci`` at the
    MCI threshold (stage 1), ``deficit.ad`` at the AD threshold (stage 2) (fractions of the volume),
    linear between, and on at the MCI-to-AD slope beyond."""
    mci, ad = -np.log1p(-deficit["mci"]), -np.log1p(-deficit["ad"])
    if stage >= 2.0:
        return float(ad + (ad - mci) * (stage - 2.0))
    return float(np.interp(stage, [0.0, 1.0, 2.0], [0.0, mci, ad]))


def log_volumes(subject: Subject, visit: int, cfg: dict[str, Any]) -> dict[str, float]:
    """Log volumes of the hippocampi, the ventricles and the brain at a visit, relative to the template.

    Ageing (``atrophy.annual_loss.cn`` a year, about age 70) and the subject's own rate deviation act
    on everyone; the disease adds its stage deficit at baseline and its course's extra annual loss,
    both scaled by ``disease_effect``. The ventricles grow and the brain shrinks by fixed ratios of the
    hippocampal loss (``ventricle_ratio``, ``brain_ratio``)."""
    atrophy, effect = cfg["atrophy"], cfg["disease_effect"]
    years = subject.months[visit] / 12.0
    loss = atrophy["annual_loss"]
    ageing = (loss["cn"] + subject.loss_deviation) * (subject.age + years - 70.0)
    disease = effect * (_stage_deficit(subject.stage0, atrophy["deficit"])
                        + (loss[subject.group] - loss["cn"]) * years)
    shrink = ageing + disease
    return {"hippocampus": subject.hippocampus - shrink,
            "ventricles": subject.ventricles + atrophy["ventricle_ratio"] * shrink,
            "brain": -atrophy["brain_ratio"] * shrink}


def _draw_subject(index: int, group: str, rng: np.random.Generator, cfg: dict[str, Any]) -> Subject:
    vcfg = cfg["visits"]
    converter = group in ("cn_mci", "mci_ad")
    if converter:
        n_visits = int(rng.integers(max(3, vcfg["min"]), vcfg["max"] + 1))
    elif rng.random() < vcfg["single_visit_fraction"]:
        n_visits = 1
    else:
        n_visits = int(rng.integers(max(2, vcfg["min"]), vcfg["max"] + 1))
    lo, hi = vcfg["gap_months"]
    gaps = rng.choice(np.arange(lo, hi + 1, 6), size=n_visits - 1)
    months = np.concatenate([[0], np.cumsum(gaps)]).astype(int)
    jitter = int(vcfg["jitter_days"])
    days = np.round(months * DAYS_PER_MONTH + np.concatenate([[0], rng.integers(-jitter, jitter + 1, n_visits - 1)]))
    years = months / 12.0
    # the diagnosis reads the stage through a per-subject offset (cognitive reserve) and per-visit noise
    link = cfg["diagnosis_noise"]
    offset = float(rng.normal(0.0, link["subject_sd"]))
    if group == "cn":
        rate, stage0 = rng.uniform(0.0, 0.04), rng.uniform(0.0, 0.5)
    elif group == "mci":
        rate, stage0 = rng.uniform(0.0, 0.04), rng.uniform(1.1, 1.5)
    elif group == "ad":
        rate, stage0 = rng.uniform(0.1, 0.3), rng.uniform(2.1, 2.6)
    else:  # converters' clinical stage crosses the threshold between the first and the last visit,
        # from a baseline near it (as pMCI's atrophy is nearer AD's than sMCI's)
        threshold = 1.0 if group == "cn_mci" else 2.0
        clinical0 = rng.uniform(threshold - 0.5, threshold - 0.15)
        t_conv = rng.uniform(years[1] * 0.5, years[-1] * 0.95)
        rate = (threshold - clinical0) / t_conv
        stage0 = clinical0 - offset
    clinical = stage0 + offset + rate * years + rng.normal(0.0, link["visit_sd"], n_visits)
    dx = [DX_BY_STAGE[int(np.clip(np.floor(s), 0, 2))] for s in clinical]
    dx = _add_label_noise(dx, rng, cfg["label_noise"])
    if converter and rng.random() < cfg["reverter_rate"]:
        # a converted visit followed by a return to the earlier diagnosis
        ranks = [DX_BY_STAGE.index(d) for d in dx]
        after = [i for i in range(1, len(dx) - 1) if ranks[i] > ranks[0]]
        if after:
            dx[after[0] + 1] = DX_BY_STAGE[ranks[after[0]] - 1]
    ranks = [DX_BY_STAGE.index(d) for d in dx]
    reverter = any(r < max(ranks[:k]) for k, r in enumerate(ranks) if k)
    age_mu = {"cn": 71, "cn_mci": 73, "mci": 73, "mci_ad": 74, "ad": 75}[group]
    layers = (rng.uniform(1.5, 3.0), rng.uniform(4.0, 7.0), rng.uniform(3.0, 6.0),
              rng.uniform(0.12, 0.22), rng.uniform(0.03, 0.10), rng.uniform(0.85, 1.25), rng.uniform(0.4, 0.55))
    # follow-up visits without an image (as in ADNI): their diagnosis still counts for labels
    imaged = [True] + [bool(rng.random() >= vcfg["clinical_only_fraction"]) for _ in range(n_visits - 1)]
    atrophy = cfg["atrophy"]
    return Subject(
        participant_id=f"sub-{cfg['seed']:03d}{index + 1:03d}", group=group, sex=str(rng.choice(["F", "M"])),
        age=float(np.round(np.clip(rng.normal(age_mu, 6.0), 55, 92), 1)),
        months=tuple(int(m) for m in months), days=tuple(int(d) for d in days),
        stage0=float(stage0), rate=float(rate), diagnoses=tuple(dx), reverter=bool(reverter),
        head_scale=float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
        anatomy_seed=int(rng.integers(2**31)), layers=tuple(float(x) for x in layers), imaged=tuple(imaged),
        hippocampus=float(rng.normal(0.0, atrophy["hippocampus_sd"])),
        ventricles=float(rng.normal(0.0, atrophy["ventricle_sd"])),
        loss_deviation=float(rng.normal(0.0, atrophy["annual_loss_sd"])),
    )


def _add_label_noise(dx: list[str], rng: np.random.Generator, rate: float) -> list[str]:
    """Move a visit's diagnosis to a neighbouring class with probability ``rate``."""
    out = list(dx)
    for i, d in enumerate(dx):
        if rng.random() < rate:
            r = DX_BY_STAGE.index(d)
            step = rng.choice([-1, 1]) if 0 < r < 2 else (1 if r == 0 else -1)
            out[i] = DX_BY_STAGE[r + step]
    return out


def draw_cohort(cfg: dict[str, Any]) -> list[Subject]:
    """Draw every subject's demographics, visit schedule, disease course and diagnoses."""
    rng = np.random.default_rng(cfg["seed"])
    mix = np.array([cfg["group_mix"][g] for g in GROUPS], dtype=float)
    counts = np.floor(mix / mix.sum() * cfg["n_subjects"]).astype(int)
    for k in np.argsort(-(mix / mix.sum() * cfg["n_subjects"] - counts))[: cfg["n_subjects"] - counts.sum()]:
        counts[k] += 1
    groups = [g for g, n in zip(GROUPS, counts) for _ in range(n)]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    return [_draw_subject(i, g, rng, cfg) for i, g in enumerate(groups)]


HIPPOCAMPUS_SIGMA_MM, HIPPOCAMPUS_RADIUS_MM = 7.0, 5.0  # displacement reach; the ball whose volume is measured
VENTRICLE_SIGMA_MM, VENTRICLE_RADIUS_MM = 20.0, 10.0


def _radial_gain(log_volume: float, radius: float, sigma: float) -> float:
    """Gain k of the displacement k (p - c) exp(-|p - c|^2 / 2 sigma^2) that makes the subject-space
    region drawn from the template's ball of ``radius`` about c exp(log_volume) times its volume
    (exact: the map is radial and monotonic)."""
    r = radius * np.exp(log_volume / 3.0)
    return float((radius / r - 1.0) / np.exp(-(r**2) / (2 * sigma**2)))


def atrophy_offsets(pts: np.ndarray, tpl: Template, volumes: dict[str, float]) -> np.ndarray:
    """Displacement (mm) that, sampled at ``pts + offset``, shows these log volumes (:func:`log_volumes`).

    Ventricles grow (samples pulled towards their centre), hippocampi shrink (samples pushed away
    from theirs) and the whole brain scales; the lost volume becomes CSF.
    """
    k_hipp = _radial_gain(volumes["hippocampus"], HIPPOCAMPUS_RADIUS_MM, HIPPOCAMPUS_SIGMA_MM)
    k_vent = _radial_gain(volumes["ventricles"], VENTRICLE_RADIUS_MM, VENTRICLE_SIGMA_MM)
    k_glob = float(np.exp(-volumes["brain"] / 3.0) - 1.0)
    d = pts - tpl.ventricle_center
    off = k_vent * d * np.exp(-(d**2).sum(1, keepdims=True) / (2 * VENTRICLE_SIGMA_MM**2))
    for c in HIPPOCAMPI:
        d = pts - c
        off += k_hipp * d * np.exp(-(d**2).sum(1, keepdims=True) / (2 * HIPPOCAMPUS_SIGMA_MM**2))
    off += k_glob * (pts - tpl.brain_center)
    return off


def render_scan(subject: Subject, visit: int, tpl: Template, cfg: dict[str, Any],
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one visit: returns the int16 image, the true brain mask, the affine and the pose."""
    res = float(cfg["resolution_mm"])
    shape = np.ceil((FOV_MM[:, 1] - FOV_MM[:, 0]) / res).astype(int)
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = FOV_MM[:, 0]
    angles = rng.uniform(-1, 1, 3) * cfg["max_rotation_deg"]
    shift = rng.uniform(-1, 1, 3) * cfg["max_translation_mm"]
    rot = rotation(angles)
    anat = np.random.default_rng(subject.anatomy_seed)
    warp = _smooth_field(anat, cfg["warp_mm"])
    bias_coef = rng.normal(0.0, cfg["bias"], size=9)
    t_csf, t_skull, t_scalp, i_csf, i_skull, i_scalp, i_neck = subject.layers
    stage = subject.stage(visit)
    age = subject.age + subject.months[visit] / 12.0
    volumes = log_volumes(subject, visit, cfg)

    image = np.empty(shape, np.float32)
    mask = np.empty(shape, np.uint8)
    grid_ij = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1).reshape(-1, 2)
    for k in range(shape[2]):  # one axial slab at a time bounds memory at 1 mm
        ijk = np.column_stack([grid_ij, np.full(len(grid_ij), k)])
        p = ijk * res + FOV_MM[:, 0]
        q = (p - HEAD_CENTER - shift) @ rot + HEAD_CENTER  # inverse pose: scanner -> subject
        s = tpl.brain_center + (q - tpl.brain_center) / subject.head_scale
        s = s + _eval_field(warp, q)  # subject anatomy -> template
        a = s + atrophy_offsets(s, tpl, volumes)
        m = _sample(tpl.brain, tpl.inv_affine, a)
        brain_val = _sample(tpl.t1, tpl.inv_affine, a) ** cfg["contrast"]  # the protocol's grey/white contrast
        dist = _sample(tpl.dist, tpl.inv_affine, s, cval=1e3)
        sig = lambda x: 1.0 / (1.0 + np.exp(-x / 0.7))  # noqa: E731  smooth layer edges
        outer = (i_csf + (i_skull - i_csf) * sig(dist - t_csf) + (i_scalp - i_skull) * sig(dist - t_csf - t_skull)
                 - i_scalp * sig(dist - t_csf - t_skull - t_scalp))
        ell = (s[:, 0] / 42.0) ** 2 + ((s[:, 1] + 18.0) / 48.0) ** 2
        neck = (s[:, 2] < -30) & (s[:, 2] > -150)
        neck_val = np.where(ell < 0.8, i_neck, np.where(ell < 1.0, i_scalp, 0.0)) * neck
        outer = np.where(dist < t_csf + t_skull + t_scalp, outer, np.maximum(outer, neck_val))
        val = m * brain_val + (1 - m) * outer
        x = (p - HEAD_CENTER) / 100.0  # quadratic bias field in scanner space
        basis = np.column_stack([x, x[:, [0]] * x[:, [1]], x[:, [0]] * x[:, [2]], x[:, [1]] * x[:, [2]], x**2])
        val = val * np.exp(basis @ bias_coef)
        image[:, :, k] = val.reshape(shape[0], shape[1])
        mask[:, :, k] = (m > 0.5).reshape(shape[0], shape[1])
    sigma = cfg["noise"]
    image = np.sqrt((image + rng.normal(0, sigma, shape)) ** 2 + rng.normal(0, sigma, shape) ** 2)
    scale = rng.uniform(300, 1200)
    image = np.clip(np.round(image * scale), 0, 32767).astype(np.int16)
    pose = {"rotation_deg": [round(float(v), 4) for v in angles],
            "translation_mm": [round(float(v), 4) for v in shift],
            "rotation_center_mm": HEAD_CENTER.tolist(), "intensity_scale": round(float(scale), 4),
            "stage": round(stage, 4), "age": round(age, 2),
            **{f"{k}_volume": round(float(np.exp(v)), 5) for k, v in volumes.items()}}
    return image, mask, affine, pose


_TEMPLATE_CACHE: dict[float, Template] = {}


def _render_job(args: tuple) -> tuple[str, str, dict[str, Any]]:
    subject, visit, cfg, out, seed = args
    res = cfg["resolution_mm"]
    if res not in _TEMPLATE_CACHE:  # one load per worker process
        _TEMPLATE_CACHE[res] = load_template(res)
    tpl = _TEMPLATE_CACHE[res]
    rng = np.random.default_rng(seed)
    image, mask, affine, pose = render_scan(subject, visit, tpl, cfg, rng)
    ses = f"ses-M{subject.months[visit]:03d}"
    sub = subject.participant_id
    anat = Path(out) / sub / ses / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(image, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, anat / f"{sub}_{ses}_T1w.nii.gz")
    truth = Path(out) / "derivatives" / "simulation" / sub / ses / "anat"
    truth.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask, affine), truth / f"{sub}_{ses}_desc-brain_mask.nii.gz")
    return sub, ses, pose


def simulate_cohort(cfg: dict[str, Any], out_dir: str | Path, threads: int = 1,
                    cohort: str = "simulated") -> list[Subject]:
    """Write the whole simulated BIDS dataset into ``out_dir`` (replaced atomically); the ground
    truth names ``cohort`` as every scan's source."""
    subjects = draw_cohort(cfg)
    seeds = np.random.SeedSequence(cfg["seed"]).spawn(sum(len(s.months) for s in subjects))
    with atomic_dir(out_dir) as tmp:
        jobs = [(s, v, cfg, str(tmp), seed) for s in subjects for v in range(len(s.months))
                for seed in [seeds.pop(0)] if s.imaged[v]]
        if threads > 1:
            with ProcessPoolExecutor(threads) as pool:
                poses = list(pool.map(_render_job, jobs))
        else:
            poses = [_render_job(j) for j in jobs]
        _write_tables(subjects, poses, cfg, tmp, cohort)
    return subjects


def _write_tables(subjects: list[Subject], poses: list, cfg: dict[str, Any], out: Path, cohort: str) -> None:
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "sslad simulated longitudinal cohort", "BIDSVersion": "1.8.0", "DatasetType": "raw",
         "GeneratedBy": [{"Name": "sslad simulate"}]}, indent=2) + "\n")
    write_tsv(pd.DataFrame({"participant_id": [s.participant_id for s in subjects],
                            "sex": [s.sex for s in subjects], "age": [s.age for s in subjects]}),
              out / "participants.tsv")
    for s in subjects:
        write_tsv(pd.DataFrame({
            "session_id": [f"ses-M{m:03d}" for m in s.months],
            "age": [round(s.age + d / 365.25, 2) for d in s.days],
            "diagnosis": list(s.diagnoses),
            "days_from_baseline": list(s.days),
        }), out / s.participant_id / f"{s.participant_id}_sessions.tsv")
    by_id = {s.participant_id: s for s in subjects}
    rows = []
    for sub, ses, pose in poses:
        s = by_id[sub]
        rows.append({"participant_id": sub, "session_id": ses, "cohort": cohort, "group": s.group,
                     "stage": pose["stage"], "reverter": s.reverter,
                     "hippocampus_volume": pose["hippocampus_volume"], "ventricles_volume": pose["ventricles_volume"],
                     "brain_volume": pose["brain_volume"],
                     "rot_x_deg": pose["rotation_deg"][0], "rot_y_deg": pose["rotation_deg"][1],
                     "rot_z_deg": pose["rotation_deg"][2], "shift_x_mm": pose["translation_mm"][0],
                     "shift_y_mm": pose["translation_mm"][1], "shift_z_mm": pose["translation_mm"][2],
                     "intensity_scale": pose["intensity_scale"], "head_scale": s.head_scale})
    truth = out / "derivatives" / "simulation"
    write_tsv(pd.DataFrame(rows), truth / "scans.tsv")
    (truth / "dataset_description.json").write_text(json.dumps(
        {"Name": "sslad simulation ground truth", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "sslad simulate"}],
         "Description": "Cohort, native-space brain masks; pose (rotation about rotation_center_mm, then "
                        "translation, scanner = R (x - c) + c + t) and latent disease stage per scan."},
        indent=2) + "\n")
