"""Scan-to-template registration that starts in the right basin: a coarse search, then rigid -> affine.

Why a hand-written start: ANTs' own multi-start initialiser (``ants.affine_initializer``, i.e.
antsAffineInitializer) scores its starts by mutual information of the whole head against the
skull-stripped template, starting from the centres of mass. On Colin27 in random poses (+-25 deg,
+-25 mm, long neck, cut top, tuning seeds 100-107), followed by the same ANTs refinement, it left 1
of 4 scans in the wrong basin at its defaults, and 4 to 6 of 6 with a wider arc (0.2), principal
axes or a finer search grid (template correlation 0.1-0.2 after refinement).

The search here scores each start by what QC later measures: the normalised correlation of the
scan with the template inside the template's brain. For each rotation on a grid (about the
template's brain centre, placed on the head's centre) it finds the best translation over a
+-``SHIFT_MM`` box at once (masked normalised cross-correlation by FFT on a coarse grid), so the
start does not hang on the head's centre of mass, and the field of view (a long neck, a cut top)
does not matter. The best starts are refined by ANTs (the narrow search's rigid start straight to
affine; the wide search's starts rigid, then affine), each stage kept unless it lowers the
correlation markedly; a registration whose correlation stays below ``ACCEPT_CORRELATION`` is
retried with a wider rotation grid and more starts, then declared failed.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from scipy import fft, ndimage

# Internal acceptance of a registration (correlation with the template inside its brain, on the
# registration grid), deciding only whether to retry with the wider search. A fixed constant, not
# the QC thresholds (qc_table applies those without rerunning registration). Right basins reach
# 0.65-0.8 on the simulated heads and Colin27; the old chain's wrong basins on Colin27 reached 0.43
# at most (on the QC grid).
ACCEPT_CORRELATION = 0.5
# A refining stage is kept unless it lowers that correlation by more than this: the affine stage
# (optimising mutual information) often lowers it by ~0.015 while it raises the brain-mask Dice
# (0.94 -> 0.97 on Colin27); a jump into a wrong basin lowers it by far more.
STAGE_TOLERANCE = 0.05
SEARCH_MM = 10.0  # voxel size of the start search (8 mm found the same starts at twice the cost)
SHIFT_MM = 80.0  # translations searched, each axis, around the head's centre
# (name, rotation angles in degrees on each axis, starts refined by ANTs, ANTs stages). The narrow
# search's best start is itself a rigid fit (on the coarse grid), so it goes straight to the affine
# stage: each antsRegistration call costs ~0.6 s at the demo's 4 mm whatever its iterations, and a
# separate rigid call would double the demo's registration time. The wide retry refines rigid first.
SEARCHES = (("narrow", (-15, 0, 15), 1, ("Affine",)),
            ("wide", (-36, -24, -12, 0, 12, 24, 36), 4, ("Rigid", "Affine")))


def index_to_phys(image) -> np.ndarray:
    """4x4 matrix from an ANTs image's voxel index to its physical (LPS) point."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(image.direction) * np.asarray(image.spacing)
    a[:3, 3] = image.origin
    return a


def rotation(degrees) -> np.ndarray:
    """Rotation matrix of angles (degrees) about x, then y, then z: the convention of every pose
    here (simulated heads, posed Colin27 scans, the start search)."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class TemplateSearch:
    """The template side of the start search, prepared once: its brain on a coarse grid, centred
    intensities, and the FFTs of brain mask and intensities over the search box."""

    def __init__(self, template, brain_mask) -> None:
        t_arr, m_arr = template.numpy(), brain_mask.numpy() > 0.5
        t2p = index_to_phys(template)
        step = SEARCH_MM / np.asarray(template.spacing)
        lo, hi = np.argwhere(m_arr).min(axis=0), np.argwhere(m_arr).max(axis=0)
        shape = np.ceil((hi - lo) / step).astype(int) + 1
        # the coarse brain box: voxel index -> template voxel index -> physical
        box = np.eye(4)
        box[:3, :3] = np.diag(step)
        box[:3, 3] = lo
        smooth = ndimage.gaussian_filter(t_arr, step / 2.5)
        values = ndimage.affine_transform(smooth, box[:3, :3], box[:3, 3], output_shape=tuple(shape), order=1)
        mask = ndimage.affine_transform(m_arr.astype(np.float32), box[:3, :3], box[:3, 3],
                                        output_shape=tuple(shape), order=1) > 0.5
        self.margin = int(np.ceil(SHIFT_MM / SEARCH_MM))
        self.shape = tuple(int(s) + 2 * self.margin for s in shape)
        # the moving grid: the brain box widened by the margin (same orientation and voxel size)
        pad = np.eye(4)
        pad[:3, 3] = -self.margin
        self.grid_to_phys = t2p @ box @ pad
        self.step_phys = (t2p @ box)[:3, :3]
        self.centre = (t2p @ np.append(np.argwhere(m_arr).mean(axis=0), 1))[:3]
        centred = np.where(mask, values - values[mask].mean(), 0.0)
        self.n = int(mask.sum())
        self.norm = float(np.sqrt((centred ** 2).sum()))
        self.fft_t = np.conj(fft.rfftn(centred, self.shape))
        self.fft_m = np.conj(fft.rfftn(mask.astype(np.float64), self.shape))
        self.valid = tuple(slice(0, 2 * self.margin + 1) for _ in range(3))

    def starts(self, moving, head_centre: np.ndarray, angles, keep: int) -> list[dict[str, Any]]:
        """The ``keep`` best starts (correlation, rotation, translation) over the rotation grid."""
        m_arr = ndimage.gaussian_filter(moving.numpy(), SEARCH_MM / np.asarray(moving.spacing) / 2.5)
        phys_to_moving = np.linalg.inv(index_to_phys(moving))
        offset = head_centre - self.centre
        found = []
        for degrees in itertools.product(angles, repeat=3):
            rot = rotation(degrees)
            # grid index -> physical (template frame) -> rotated about the brain centre -> moving index
            about = np.eye(4)
            about[:3, :3] = rot
            about[:3, 3] = self.centre + offset - rot @ self.centre
            to_moving = phys_to_moving @ about @ self.grid_to_phys
            vol = ndimage.affine_transform(m_arr, to_moving[:3, :3], to_moving[:3, 3], output_shape=self.shape,
                                           order=1)
            f_v, f_v2 = fft.rfftn(vol), fft.rfftn(vol * vol)
            num = fft.irfftn(self.fft_t * f_v, self.shape)[self.valid]
            s1 = fft.irfftn(self.fft_m * f_v, self.shape)[self.valid]
            s2 = fft.irfftn(self.fft_m * f_v2, self.shape)[self.valid]
            var = np.maximum(s2 - s1 * s1 / self.n, 1e-6 * max(float(s2.max()), 1e-12))
            ncc = num / (self.norm * np.sqrt(var))
            best = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
            shift = self.step_phys @ (np.asarray(best) - self.margin)
            found.append({"correlation": float(ncc[best]), "rotation_deg": [float(d) for d in degrees],
                          "matrix": rot, "translation": offset + rot @ shift})
        found.sort(key=lambda s: -s["correlation"])
        return found[:keep]


def _write_start(start: dict[str, Any], centre: np.ndarray, path: Path) -> str:
    import ants

    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=start["matrix"],
                                    center=list(centre), translation=list(start["translation"]))
    ants.write_transform(tx, str(path))
    return str(path)


def correlation(fixed, fixed_brain: np.ndarray, moving, transforms: list[str]) -> float:
    """Correlation of the moved scan with the template inside the template's brain."""
    import ants

    moved = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=transforms).numpy()[fixed_brain]
    if moved.std() == 0:
        return 0.0
    return float(np.corrcoef(moved, fixed.numpy()[fixed_brain])[0, 1])


def register(fixed, fixed_brain: np.ndarray, region, search: TemplateSearch, moving, head_centre: np.ndarray,
             kind: str, seed: int, workdir: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """Register ``moving`` to ``fixed`` (both on the registration grid); returns the forward and
    inverse transforms and a record of every search, start and stage (with the correlation each
    reached).

    ``kind`` is rigid, affine or syn; syn adds a deformable stage after the affine one.
    """
    import ants

    common = dict(mask=region, aff_metric="mattes", aff_sampling=32, aff_random_sampling_rate=0.2,
                  aff_iterations=(60, 30), aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                  random_seed=max(1, int(seed)))
    tried: list[dict[str, Any]] = []
    best: tuple[float, list[str]] = (-2.0, [])
    for name, angles, keep, refine in SEARCHES:
        attempt: dict[str, Any] = {"search": name, "rotations": len(angles) ** 3, "starts": []}
        tried.append(attempt)
        for i, start in enumerate(search.starts(moving, head_centre, angles, keep)):
            prefix = str(Path(workdir) / f"{name}{i}-")
            current = [_write_start(start, search.centre, Path(prefix + "start.mat"))]
            score = correlation(fixed, fixed_brain, moving, current)
            stages = [{"stage": "start", "correlation": round(score, 4),
                       "search_correlation": round(start["correlation"], 4),
                       "rotation_deg": start["rotation_deg"]}]
            for stage in refine if kind != "rigid" else ("Rigid",):
                reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=stage,
                                        initial_transform=current, outprefix=f"{prefix}{stage.lower()}-", **common)
                new = correlation(fixed, fixed_brain, moving, reg["fwdtransforms"])
                kept = new >= score - STAGE_TOLERANCE
                stages.append({"stage": stage.lower(), "correlation": round(new, 4), "kept": kept})
                if kept:
                    current, score = reg["fwdtransforms"], new
            attempt["starts"].append({"stages": stages, "correlation": round(score, 4)})
            if score > best[0]:
                best = (score, current)
        if best[0] >= ACCEPT_CORRELATION:
            break
    transforms = inverse = best[1]
    record = {"accepted": best[0] >= ACCEPT_CORRELATION, "correlation": round(best[0], 4),
              "accept_correlation": ACCEPT_CORRELATION, "searches": tried}
    if kind == "syn" and record["accepted"]:
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyNOnly", initial_transform=transforms,
                                reg_iterations=(40, 20, 0), outprefix=str(Path(workdir) / "syn-"), **common)
        transforms, inverse = reg["fwdtransforms"], reg["invtransforms"]
        record["syn_correlation"] = round(correlation(fixed, fixed_brain, moving, transforms), 4)
    return transforms, inverse, record
