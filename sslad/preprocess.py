"""Per-scan T1 preprocessing with ANTs: checks, N4, registration, skull strip, resampling, normalisation, QC.

Why this shape: full-resolution N4 and registration dominate the cost of a T1 chain, so both are
estimated on a coarse copy of the scan and applied at full resolution. The brain mask is the
template's, brought to the scan by the inverse transform and then refined on the scan's own
intensities, where an affine registration cannot follow the anatomy. Bad inputs are caught before
ANTs sees them, so that the message names the file and the problem.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from sslad.io import atomic_path, write_json
from sslad.provenance import job_provenance
from sslad.register import TemplateSearch, index_to_phys, register


class InputError(ValueError):
    """The input scan cannot be preprocessed; the message names the file and the problem."""


@dataclass(frozen=True)
class Outputs:
    """Every file one scan produces (BIDS-derivative names, space label from the template)."""

    native_mask: Path
    preproc: Path
    mask: Path
    transform: Path
    array: Path
    qc_json: Path
    qc_png: Path

    @classmethod
    def for_scan(cls, out_dir: str | Path, sub: str, ses: str, space: str) -> "Outputs":
        base = Path(out_dir) / sub / ses / "anat" / f"{sub}_{ses}"
        return cls(
            native_mask=Path(f"{base}_desc-brain_mask.nii.gz"),
            preproc=Path(f"{base}_space-{space}_desc-preproc_T1w.nii.gz"),
            mask=Path(f"{base}_space-{space}_desc-brain_mask.nii.gz"),
            transform=Path(f"{base}_from-T1w_to-{space}_mode-image_xfm.mat"),
            array=Path(f"{base}_space-{space}_desc-preproc_T1w.npy"),
            qc_json=Path(f"{base}_qc.json"),
            qc_png=Path(f"{base}_qc.png"),
        )

    def images(self) -> list[Path]:
        return [self.native_mask, self.preproc, self.mask, self.transform, self.array]


def check_input(path: str | Path, max_voxels: float = float("inf")) -> nib.Nifti1Image:
    """Load a T1 scan and reject what no preprocessing can use, naming the file and the reason. The
    size the header declares is judged before any voxel is read: a small compressed file can declare
    a billion voxels, which reading would decompress whole (config preprocess.max_voxels_million)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(path)  # the header only: voxels are read on access
        shape = tuple(int(d) for d in img.header.get_data_shape())
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise InputError(f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    voxels = float(np.prod(shape, dtype=np.float64))
    if voxels > max_voxels:
        raise InputError(f"{path}: the header declares {'x'.join(map(str, shape))} = {voxels / 1e6:.0f} million "
                         f"voxels ({voxels * 4 / 2**30:.1f} GB as float32), more than the "
                         f"{max_voxels / 1e6:g} million of preprocess.max_voxels_million; not read")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a damaged file
        raise InputError(f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        img = nib.Nifti1Image(data, img.affine)
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D image, got {data.ndim}D with shape {data.shape}")
    if min(data.shape) < 8:
        raise InputError(f"{path}: too few voxels along an axis for a 3D brain scan (shape {data.shape})")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(zooms)) or zooms.min() < 0.2 or zooms.max() > 8.0:
        raise InputError(f"{path}: implausible voxel size {tuple(np.round(zooms, 3))} mm (expected 0.2 to 8 mm)")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise InputError(f"{path}: invalid orientation matrix (affine) in the header")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    if np.ptp(data) == 0:
        raise InputError(f"{path}: image is constant ({float(data.flat[0])}), e.g. all zeros")
    # Reorientation: the closest RAS+ voxel order (a lossless permutation/flip, as Clinica's
    # t1-linear); native-space outputs are written on this grid.
    return nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))


def _to_ants(img: nib.Nifti1Image):
    """nibabel (RAS) -> ANTs (LPS) without a round trip through disk."""
    import ants

    affine = img.affine
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / spacing
    flip = np.diag([-1.0, -1.0, 1.0])
    return ants.from_numpy(np.asarray(img.dataobj, dtype=np.float32), origin=list(flip @ affine[:3, 3]),
                           spacing=list(spacing), direction=flip @ direction)


def _to_nib(image, dtype=np.float32) -> nib.Nifti1Image:
    """ANTs (LPS) -> nibabel (RAS)."""
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = flip @ np.asarray(image.direction) * np.asarray(image.spacing)
    affine[:3, 3] = flip @ np.asarray(image.origin)
    img = nib.Nifti1Image(image.numpy().astype(dtype), affine)
    img.header.set_xyzt_units("mm")
    return img


def _coarse(image, voxel_mm: float):
    """A copy resampled to ``voxel_mm`` when that is coarser than the image, for fast estimation."""
    import ants

    if min(image.spacing) >= voxel_mm - 1e-6:
        return image
    return ants.resample_image(image, [voxel_mm] * 3, use_voxels=False, interp_type=0)


def n4(image, head_mask, settings: dict[str, Any]):
    """N4 bias correction. The field is smooth, so it is fitted on the image shrunk to about
    ``n4_voxel_mm`` voxels (ANTs' shrink factor) and evaluated at full resolution."""
    import ants

    shrink = max(1, int(round(settings["n4_voxel_mm"] / min(image.spacing))))
    return ants.n4_bias_field_correction(image, mask=head_mask, shrink_factor=shrink,
                                         convergence={"iters": [30, 30, 20], "tol": 1e-3})


def head_mask(image):
    """Foreground (head) mask: Otsu on the log intensity, largest component, holes filled."""
    arr = image.numpy()
    pos = arr[arr > 0]
    p99 = np.percentile(pos, 99)
    logv = np.log1p(pos / p99)
    hist, edges = np.histogram(logv, bins=128)
    centers = (edges[:-1] + edges[1:]) / 2
    w = np.cumsum(hist)
    mu = np.cumsum(hist * centers)
    between = (mu[-1] * w / w[-1] - mu) ** 2 / np.maximum(w * (w[-1] - w), 1)
    thr = np.expm1(centers[np.argmax(between)]) * p99
    mask = arr > thr
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    box = _box(mask, 3)  # closing (2 voxels) and hole filling on the head's box: a wide field of view is mostly air
    head = np.zeros(mask.shape, dtype=np.float32)
    head[box] = np.stack([ndimage.binary_fill_holes(s) for s in ndimage.binary_closing(mask[box], iterations=2)])
    return image.new_image_like(head)


# The band must span this many voxels (refine_mm / voxel size) for band_threshold's mixture; below,
# a fixed fraction between CSF and tissue. Measured: the mixture lifts Colin27 at 1 mm from Dice 0.969
# to 0.972 but costs simulated scans 0.9929 -> 0.9906 at 3 mm and 0.9919 -> 0.9904 at 4 mm.
MIXTURE_MIN_VOXELS = 1.5


def refine_mask(image, prior, voxel_mm: float, settings: dict[str, Any]) -> np.ndarray:
    """Refine the template mask brought to the scan on the scan's own intensities.

    Within a band of ``refine_mm`` either side of the prior boundary (how far the boundary may
    move), a voxel is brain if it is brighter than :func:`band_threshold` (or, where the band is
    too few voxels deep, than a fixed ``refine_threshold`` fraction from CSF to tissue) and
    connected to the brain. The work is done on the prior's bounding box: at 1 mm the whole head volume is several
    times larger, and the morphology costs in proportion.
    """
    inside = prior.numpy() > 0.5
    if not inside.any():
        raise ValueError("the template's brain mask, brought back by the registration, lies outside the image")
    steps = max(1, int(round(settings["refine_mm"] / voxel_mm)))
    box = _box(inside, steps + 3)  # the smoothing and morphology below reach 2 voxels beyond the band
    arr = ndimage.gaussian_filter(image.numpy()[box], 0.5)
    inside = inside[box]
    core = ndimage.binary_erosion(inside, iterations=steps)
    outer = ndimage.binary_dilation(inside, iterations=steps)
    if settings["refine_mm"] / voxel_mm >= MIXTURE_MIN_VOXELS:
        thr = band_threshold(arr[outer & ~core], settings["refine_tissue_probability"], settings["seed"])
    else:  # a band of about one voxel is mostly partial volume: no CSF class for a mixture to find
        shell = outer & ~ndimage.binary_erosion(inside, iterations=1)
        tissue = np.median(arr[core]) if core.any() else np.median(arr[inside])
        csf = np.percentile(arr[shell], 20)
        thr = csf + settings["refine_threshold"] * (tissue - csf)
    mask = core | (outer & (arr > thr))
    mask = ndimage.binary_opening(mask, iterations=1) | core
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    mask = ndimage.binary_closing(mask, iterations=1)
    full = np.zeros(prior.shape, dtype=bool)
    full[box] = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    return full


def band_threshold(values: np.ndarray, tissue_probability: float, seed: int) -> float:
    """Intensity above which a voxel of the boundary band is brain, estimated on this scan.

    A fixed fraction between CSF and tissue cannot be right on every scan: how dark the CSF is
    and how blurred the brain's edge is differ between scanners and subjects. A two-class
    Gaussian mixture of the band's intensities (CSF and dura below, brain tissue above) adapts
    to both; the threshold is the lowest intensity above the CSF class's mean where the tissue
    class's posterior reaches ``tissue_probability``, so that only what is clearly CSF is cut and
    partial-volume voxels stay brain.
    """
    from sklearn.mixture import GaussianMixture

    sample = values[:: max(1, values.size // 20_000)].reshape(-1, 1)  # fixed stride: same voxels every run
    gmm = GaussianMixture(2, random_state=seed).fit(sample)
    csf, tissue = np.argsort(gmm.means_.ravel())
    levels = np.linspace(gmm.means_[csf, 0], gmm.means_[tissue, 0], 512).reshape(-1, 1)
    reached = gmm.predict_proba(levels)[:, tissue] >= tissue_probability
    return float(levels[np.argmax(reached) if reached.any() else -1, 0])


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` widened by ``pad`` voxels, within the image."""
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(axis=0) - pad, 0), idx.max(axis=0) + pad + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@functools.lru_cache(maxsize=2)
def _template(template_t1: str, template_mask: str, reg_mm: float, voxel_mm: float,
              crop: tuple[tuple[float, float], ...]) -> tuple:
    """Everything a scan needs from the template, prepared once per process (a job's scans share
    it): template and mask, their registration copies, the start search, the model grid and the
    template on it."""
    import ants

    fixed, fixed_mask = ants.image_read(template_t1), ants.image_read(template_mask)
    fixed_small = _coarse(fixed, reg_mm)
    small_mask = ants.resample_image_to_target(fixed_mask, fixed_small, interp_type="nearestNeighbor")
    region = ants.iMath(small_mask, "MD", max(1, int(round(8 / reg_mm))))
    search = TemplateSearch(fixed_small, small_mask)  # the registration copies: cheap to prepare
    grid = template_grid(fixed, voxel_mm, dict(zip("xyz", crop)))
    grid_t1 = ants.resample_image_to_target(fixed, grid, interp_type="linear").numpy()
    grid_mask = ants.resample_image_to_target(fixed_mask, grid, interp_type="nearestNeighbor").numpy() > 0.5
    return fixed_mask, fixed_small, small_mask.numpy() > 0.5, region, search, grid, grid_t1, grid_mask


def template_grid(template, voxel_mm: float, crop_mm: dict[str, list[float]]):
    """The model grid: template space at ``voxel_mm`` over the crop box (MNI mm, RAS)."""
    import ants

    lo = np.array([crop_mm[a][0] for a in "xyz"], dtype=float)
    hi = np.array([crop_mm[a][1] for a in "xyz"], dtype=float)
    shape = np.maximum(np.round((hi - lo) / voxel_mm).astype(int), 1)
    # ANTs/LPS: origin is the first voxel's centre; x and y axes run towards -RAS.
    origin = [-lo[0] - voxel_mm / 2, -lo[1] - voxel_mm / 2, lo[2] + voxel_mm / 2]
    direction = np.diag([-1.0, -1.0, 1.0])
    return ants.make_image(tuple(int(s) for s in shape), voxval=0.0, spacing=[voxel_mm] * 3,
                           origin=origin, direction=direction)


def normalise(arr: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Masked intensity normalisation: z-score over the brain, or WhiteStripe-like (white-matter mode)."""
    vals = arr[mask]
    if method == "zscore":
        mu, sd = vals.mean(), vals.std()
    else:  # whitestripe: centre on the white-matter peak (highest mode), scale by its width
        hist, edges = np.histogram(vals, bins=200, range=tuple(np.percentile(vals, [1, 99.5])))
        smooth = ndimage.gaussian_filter1d(hist.astype(float), 2)
        peaks = [i for i in range(1, 199) if smooth[i] >= smooth[i - 1] and smooth[i] >= smooth[i + 1]
                 and smooth[i] > 0.1 * smooth.max()]
        mode = (edges[peaks[-1]] + edges[peaks[-1] + 1]) / 2 if peaks else np.median(vals)
        stripe = vals[np.abs(vals - mode) < 0.05 * mode]
        mu, sd = mode, stripe.std() if stripe.size > 10 else vals.std()
    out = (arr - mu) / max(sd, 1e-6)
    return np.where(mask, out, 0.0).astype(np.float32)


def preprocess_scan(path: str | Path, template_t1: str, template_mask: str, outputs: Outputs,
                    settings: dict[str, Any], workdir: str, record: dict[str, Any]) -> None:
    """Run the chain on one scan, write its outputs, and fill ``record`` with the QC measures (and,
    as it goes, the stage it is in, so that a failure can name it)."""
    import ants

    times: dict[str, float] = {}
    clock = time.perf_counter()
    steps = iter(("n4", "registration", "skull_strip", "resample_normalise", "write", "qc"))
    record["stage"] = "load"

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name] = round(now - clock, 3)
        clock = now
        record["stage"] = next(steps, "done")

    img = check_input(path, settings["max_voxels_million"] * 1e6)
    native = _to_ants(img)
    lap("load")
    head = head_mask(native)
    corrected = n4(native, head, settings)
    lap("n4")

    crop = tuple(tuple(settings["crop_mm"][a]) for a in "xyz")
    fixed_mask, fixed_small, small_brain, region, search, grid, grid_t1, grid_mask = _template(
        template_t1, template_mask, settings["registration_voxel_mm"], settings["voxel_mm"], crop)
    moving_small = _coarse(corrected * head, settings["registration_voxel_mm"])
    head_centre = (index_to_phys(native) @ np.append(np.argwhere(head.numpy() > 0).mean(axis=0), 1))[:3]
    fwd, inv, record["registration"] = register(fixed_small, small_brain, region, search, moving_small,
                                                head_centre, settings["registration"], settings["seed"], workdir)
    lap("registration")

    prior = ants.apply_transforms(fixed=corrected, moving=fixed_mask, transformlist=inv,
                                  whichtoinvert=[True] if len(inv) == 1 else [True, False],  # affine [+ warp]
                                  interpolator="linear")
    voxel = float(min(native.spacing))
    native_mask = refine_mask(corrected, prior, voxel, settings) if settings["refine_mask"] else prior.numpy() > 0.5
    lap("skull_strip")

    warped = ants.apply_transforms(fixed=grid, moving=corrected, transformlist=fwd,
                                   interpolator="linear")
    mask_img = corrected.new_image_like(native_mask.astype(np.float32))
    warped_mask = ants.apply_transforms(fixed=grid, moving=mask_img, transformlist=fwd,
                                        interpolator="linear").numpy() > 0.5
    model = normalise(warped.numpy(), warped_mask, settings["normalisation"])
    lap("resample_normalise")

    record.update(measure(warped.numpy(), grid_t1, grid_mask, native_mask, float(np.prod(corrected.spacing))))
    with atomic_path(outputs.transform) as tmp:
        Path(fwd[-1]).replace(tmp)
    _save(_to_nib(mask_img, np.uint8), outputs.native_mask)
    _save(_to_nib(warped.new_image_like(model)), outputs.preproc)
    _save(_to_nib(warped.new_image_like(warped_mask.astype(np.float32)), np.uint8), outputs.mask)
    with atomic_path(outputs.array) as tmp:  # same voxel order as the NIfTI above
        np.save(tmp, model.astype(np.float16))
    lap("write")
    record["outputs"] = {k: str(v) for k, v in vars(outputs).items() if k not in ("qc_json", "qc_png")}
    if not record["registration"]["accepted"]:  # outputs kept, so that the pictures show what went wrong
        record["failed_stage"] = "registration"
        record["reason"] = registration_failure(record["registration"])
    qc_png(corrected, native_mask, warped, warped_mask, grid_mask, outputs.qc_png, record)
    lap("qc")
    record["seconds"] = times
    record["seconds_total"] = round(sum(times.values()), 3)


def registration_failure(reg: dict[str, Any]) -> str:
    """What a registration that was not accepted tried, in words."""
    tried = ", ".join(f"{a['search']} search ({a['rotations']} rotations, {len(a['starts'])} start(s) refined)"
                      for a in reg["searches"])
    return (f"registration: best template correlation {reg['correlation']:.3f} below the acceptance "
            f"{reg['accept_correlation']} after {tried}")


def _save(img: nib.Nifti1Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def measure(moved: np.ndarray, template: np.ndarray, template_mask: np.ndarray, native_mask: np.ndarray,
            voxel_ml: float) -> dict[str, Any]:
    """QC measures (the verdict is :func:`verdict`'s, in the QC table).

    Similarity is the correlation of the registered scan with the template inside the template's
    brain (on the model grid); plausibility is the native brain volume, one connected component and
    a mask that the field of view does not cut.
    """
    corr = float(np.corrcoef(moved[template_mask], template[template_mask])[0, 1])
    edge = native_mask[[0, -1]].any() or native_mask[:, [0, -1]].any() or native_mask[:, :, [0, -1]].any()
    volume_ml = float(native_mask.sum() * voxel_ml / 1000.0)
    return {"template_correlation": round(corr, 4), "brain_volume_ml": round(volume_ml, 1),
            "mask_components": int(ndimage.label(native_mask)[1]), "mask_touches_border": bool(edge)}


def verdict(record: dict[str, Any], thresholds: dict[str, Any]) -> tuple[bool, str]:
    """Pass/fail of one scan's QC record under ``thresholds`` (config ``preprocess.qc``), with every
    failed criterion as a reason. Applied when the QC table is built, so that editing a threshold
    reruns no registration."""
    reasons = []
    if record.get("failed_stage"):
        reasons.append(record.get("reason") or f"failed at stage {record['failed_stage']}")
    if "template_correlation" in record:
        corr, (lo, hi) = record["template_correlation"], thresholds["brain_volume_ml"]
        if corr < thresholds["min_template_correlation"]:
            reasons.append(f"template correlation {corr:.3f} below {thresholds['min_template_correlation']}")
        if not lo <= record["brain_volume_ml"] <= hi:
            reasons.append(f"brain volume {record['brain_volume_ml']:.0f} ml outside [{lo}, {hi}]")
        if record["mask_components"] != 1:
            reasons.append(f"brain mask in {record['mask_components']} pieces")
        if record["mask_touches_border"]:
            reasons.append("brain mask touches the image border (brain cut by the field of view)")
    elif not reasons:
        reasons.append("no QC measures in the record")
    return not reasons, "; ".join(reasons)


def qc_png(corrected, native_mask: np.ndarray, warped, warped_mask: np.ndarray, template_mask: np.ndarray,
           out: Path, record: dict[str, Any]) -> None:
    """Three planes in native space and in template space: the scan's brain mask in red, and in
    template space the template's brain in green, so that a misregistration shows as two outlines
    that disagree. A failed registration gets a red title that says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(9, 6), facecolor="black")
    for row, (arr, mask, title) in enumerate(((corrected.numpy(), native_mask, "native"),
                                              (warped.numpy(), warped_mask, "template"))):
        centre = [int(c) for c in np.round(ndimage.center_of_mass(mask))] if mask.any() else [s // 2 for s in arr.shape]
        for col, axis in enumerate((0, 1, 2)):
            sl = [slice(None)] * 3
            sl[axis] = centre[axis]
            ax = axes[row, col]
            ax.imshow(arr[tuple(sl)].T, origin="lower", cmap="gray",
                      vmax=np.percentile(arr[mask], 99) if mask.any() else None, vmin=min(0, arr.min()))
            ax.contour(mask[tuple(sl)].T.astype(float), levels=[0.5], colors="red", linewidths=0.6, origin="lower")
            if row == 1:
                ax.contour(template_mask[tuple(sl)].T.astype(float), levels=[0.5], colors="lime", linewidths=0.6,
                           origin="lower")
            ax.set_axis_off()
            ax.set_title(f"{title} {'xyz'[axis]}", color="white", fontsize=8)
    failed = bool(record.get("failed_stage"))
    text = (f"corr {record['template_correlation']}  brain {record['brain_volume_ml']} ml  "
            f"registration corr {record['registration']['correlation']}")
    fig.suptitle(f"FAILED: {record['reason']}\n{text}" if failed else text, color="red" if failed else "white",
                 fontsize=9, wrap=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80, facecolor="black")
    plt.close(fig)


def failure_png(out: Path, message: str) -> None:
    """A QC picture for a scan that could not be processed, so that every scan has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 2))
    fig.text(0.02, 0.5, "FAILED\n" + message, fontsize=8, va="center", wrap=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def run(path: str, sub: str, ses: str, template_t1: str, template_mask: str, out_dir: str,
        settings: dict[str, Any], space: str, threads: int = 1) -> dict[str, Any]:
    """Preprocess one scan and write its QC record (measures, registration tries, timings).

    A bad input or a failed step marks the scan failed (``failed_stage`` and ``reason`` in qc.json),
    removes any output it had written, and returns normally, so the study goes on. A registration
    that is not accepted keeps its outputs, for the QC pictures, and is marked failed the same way.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    outputs = Outputs.for_scan(out_dir, sub, ses, space)
    outputs.qc_json.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"participant_id": sub, "session_id": ses, "input": str(path), "space": space,
                              "settings": {k: v for k, v in settings.items() if k != "qc"},
                              "failed_stage": None, "reason": ""}
    try:
        with tempfile.TemporaryDirectory(prefix="sslad-preprocess-") as workdir:
            preprocess_scan(path, template_t1, template_mask, outputs, settings, workdir, record)
    except Exception as exc:  # any failure marks this scan, never the study
        stage = record.get("stage", "load")
        message = (str(exc) if isinstance(exc, InputError)
                   else f"{path}: preprocessing failed ({type(exc).__name__}: {exc})")
        _mark_failed(outputs, record, "input" if isinstance(exc, InputError) else stage, f"{stage}: {message}")
    record.pop("stage", None)
    record["provenance"] = job_provenance(threads=threads)
    write_json(record, outputs.qc_json)
    return record


def job_failure(path: str, sub: str, ses: str, out_dir: str, space: str, stage: str, reason: str) -> dict[str, Any]:
    """The QC record of a scan whose process died or whose time ran out: no outputs, the failure
    named, so that the QC table and the manifest list it and the study goes on."""
    outputs = Outputs.for_scan(out_dir, sub, ses, space)
    outputs.qc_json.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"participant_id": sub, "session_id": ses, "input": str(path), "space": space}
    _mark_failed(outputs, record, stage, f"{stage}: {reason}")
    record["provenance"] = job_provenance()
    write_json(record, outputs.qc_json)
    return record


def _mark_failed(outputs: Outputs, record: dict[str, Any], stage: str, reason: str) -> None:
    """A failed scan: no outputs left behind, its stage and reason in the record, a picture saying why."""
    for f in outputs.images():
        f.unlink(missing_ok=True)
    record.pop("outputs", None)
    record.update(failed_stage=stage, reason=reason)
    failure_png(outputs.qc_png, reason)


def _death(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (killed: out of memory, or by the scheduler?)" if name == "SIGKILL" else ""
        return f"the preprocessing process died of {name}{hint} while on this scan"
    return f"the preprocessing process exited with code {returncode} while on this scan (see the job's log)"


def run_participant(worker: list[str], sub: str, scans: list[tuple[str, str]], out_dir: str, space: str,
                    budget_s: float | None) -> list[dict[str, Any]]:
    """Preprocess one participant's scans (session, path) in a worker process (the command ``worker``
    followed by ``--sessions ... --t1w ...``), within ``budget_s`` seconds, and give every scan a QC
    record whatever happens to the worker.

    Why a second process: a scan that crashes ANTs, exhausts memory (the kernel kills the largest
    process: the worker) or outlasts the job's time must fail that scan, never the participant's
    other scans nor the study; only a process that survives the worker can write that record. A
    worker that dies is replaced for the scans after the one it was on; when the budget runs out,
    the scan in progress and those left are recorded as out of time before the scheduler's limit.
    """
    deadline = None if budget_s is None else time.monotonic() + budget_s
    left = list(scans)
    while left:
        cmd = [*worker, "--sessions", *(ses for ses, _ in left), "--t1w", *(raw for _, raw in left)]
        proc = subprocess.Popen(cmd)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
            proc.wait()
        done = [(ses, raw) for ses, raw in left if Outputs.for_scan(out_dir, sub, ses, space).qc_json.is_file()]
        pending = [scan for scan in left if scan not in done]
        if not pending:
            break
        if code is None:  # out of time: the scan in progress and every one after it
            for ses, raw in pending:
                job_failure(raw, sub, ses, out_dir, space, "time_limit",
                            f"the participant's job used its {budget_s:.0f} s before this scan was done "
                            "(resources.runtime of rule preprocess)")
            break
        ses, raw = pending[0]
        job_failure(raw, sub, ses, out_dir, space, "crash", _death(code))
        left = pending[1:]
    return [json.loads(Outputs.for_scan(out_dir, sub, ses, space).qc_json.read_text()) for ses, _ in scans]


def qc_table(scans_tsv: str | Path, preproc_dir: str | Path, space: str, out: str | Path,
             thresholds: dict[str, Any]) -> None:
    """Collect every scan's qc.json into one table for the manifest, with the verdict under
    ``thresholds`` (a missing or unreadable record is a failure)."""
    import pandas as pd

    from sslad.io import read_tsv, write_tsv

    rows = []
    for r in read_tsv(scans_tsv).itertuples():
        path = Outputs.for_scan(preproc_dir, r.participant_id, r.session_id, space).qc_json
        try:
            qc = json.loads(path.read_text())
            passed, reason = verdict(qc, thresholds)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            qc, passed, reason = {}, False, f"{path}: no readable QC record ({type(exc).__name__}: {exc})"
        rows.append({"participant_id": r.participant_id, "session_id": r.session_id, "qc_pass": passed,
                     "qc_reason": reason, "failed_stage": qc.get("failed_stage") or "",
                     "template_correlation": qc.get("template_correlation"),
                     "brain_volume_ml": qc.get("brain_volume_ml"), "seconds": qc.get("seconds_total"),
                     "array": qc.get("outputs", {}).get("array", ""), "file": str(path)})
    write_tsv(pd.DataFrame(rows), out)
