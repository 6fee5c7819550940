"""A real-anatomy test set: Colin27 (one real T1 head) in random poses, fields of view, bias and noise.

Why: the simulated heads are built around the registration template, so they never start a
registration in the wrong basin. Colin27 is a real scan with its own brain mask (Debian's
``mricron-data`` ships both); moving the head and its mask by the same random transform gives scans
whose true native brain mask is known. Fields of view vary as in real cohorts: a long neck, the top
of the head cut, a large empty field of view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from sslad.io import atomic_path
from sslad.register import rotation

COLIN27_DIR = Path("/usr/share/mricron/templates")
FIELDS_OF_VIEW = ("full", "neck", "top", "wide")  # scan ``seed`` gets FIELDS_OF_VIEW[seed % 4]


def available(directory: Path = COLIN27_DIR) -> bool:
    """Whether ``mricron-data`` (Colin27 head and brain) is installed."""
    return (directory / "ch2.nii.gz").is_file() and (directory / "ch2bet.nii.gz").is_file()


def make_scan(seed: int, out_t1w: str | Path, out_mask: str | Path, max_degrees: float = 25.0,
              max_mm: float = 25.0, noise: float = 0.02, bias: float = 0.2, voxel_mm: float = 1.0,
              directory: Path = COLIN27_DIR) -> dict[str, Any]:
    """Write one posed Colin27 scan (``voxel_mm`` voxels) and its true brain mask; returns the pose
    and field of view.

    Rotation (each axis uniform in +-``max_degrees``) about the head centre and translation (each
    axis uniform in +-``max_mm``); a smooth multiplicative bias field of about +-``bias``; Rician-like
    noise of ``noise`` x the head's 99th percentile. The mask is moved by the same transform.
    """
    rng = np.random.default_rng(seed)
    fov = FIELDS_OF_VIEW[seed % len(FIELDS_OF_VIEW)]
    head_img = nib.load(directory / "ch2.nii.gz")
    head = np.asarray(head_img.dataobj, dtype=np.float32)
    brain = np.asarray(nib.load(directory / "ch2bet.nii.gz").dataobj) > 0
    src_affine = head_img.affine.copy()
    if fov == "neck":  # Colin27 stops below the cerebellum: extend its lowest slices into a tapering neck
        extra = int(rng.integers(50, 80))
        taper = np.linspace(1.0, 0.6, extra, dtype=np.float32)[::-1]
        neck = ndimage.binary_erosion(head[:, :, 0] > 0.2 * head.max(), iterations=8)
        column = np.where(neck, head[:, :, :3].mean(axis=2), 0)[:, :, None] * taper[None, None, :]
        head = np.concatenate([column.astype(np.float32), head], axis=2)
        brain = np.concatenate([np.zeros(brain.shape[:2] + (extra,), bool), brain], axis=2)
        src_affine[:3, 3] -= src_affine[:3, 2] * extra
    degrees = rng.uniform(-max_degrees, max_degrees, 3)
    shift = rng.uniform(-max_mm, max_mm, 3)
    rot = rotation(degrees)
    centre = src_affine[:3, :3] @ (np.array(np.nonzero(brain)).mean(axis=1)) + src_affine[:3, 3]
    pose = np.eye(4)  # source world -> scan world
    pose[:3, :3] = rot
    pose[:3, 3] = centre + shift - rot @ centre

    # the scan's grid: axis-aligned box around the posed head, cut as the field of view says
    fg = np.array(np.nonzero(head > 0.05 * head.max()))[:, ::50]
    pts = (pose @ np.vstack([src_affine[:3, :3] @ fg + src_affine[:3, 3:4], np.ones(fg.shape[1])]))[:3]
    lo, hi = pts.min(axis=1) - 4, pts.max(axis=1) + 4
    if fov == "wide":
        lo, hi = lo - rng.uniform(20, 40, 3), hi + rng.uniform(20, 40, 3)
    if fov == "top":  # cut the top of the head a little above the brain
        bv = np.array(np.nonzero(brain))[:, ::20]
        bpts = pose[:3, :3] @ (src_affine[:3, :3] @ bv + src_affine[:3, 3:4]) + pose[:3, 3:4]
        hi[2] = min(hi[2], bpts[2].max() + rng.uniform(6, 15))
    shape = np.ceil((hi - lo) / voxel_mm).astype(int)
    out_affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    out_affine[:3, 3] = lo
    # voxel of the scan -> voxel of the source
    to_src = np.linalg.inv(src_affine) @ np.linalg.inv(pose) @ out_affine
    moved = ndimage.affine_transform(head, to_src[:3, :3], to_src[:3, 3], output_shape=tuple(shape), order=1)
    mask = ndimage.affine_transform(brain.astype(np.float32), to_src[:3, :3], to_src[:3, 3],
                                    output_shape=tuple(shape), order=1) > 0.5

    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij", sparse=True)
    coef = rng.uniform(-1, 1, (3, 2))
    field = sum(c[0] * g + c[1] * (g ** 2 - 1 / 3) for c, g in zip(coef, grid))
    field = np.exp(bias * field / max(float(np.abs(field).max()), 1e-6))
    scale = float(np.percentile(moved[moved > 0], 99))
    sigma = noise * scale
    noisy = np.hypot(moved * field + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)).astype(np.float32)
    for data, path, dtype in ((noisy, out_t1w, np.float32), (mask.astype(np.uint8), out_mask, np.uint8)):
        img = nib.Nifti1Image(data.astype(dtype), out_affine)
        img.header.set_xyzt_units("mm")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
    return {"seed": seed, "field_of_view": fov, "rotation_deg": [round(float(d), 1) for d in degrees],
            "translation_mm": [round(float(t), 1) for t in shift], "shape": [int(s) for s in shape]}
