"""Batched 3D augmentations in the spirit of 3D-Neuro-SimCLR, run on whatever device holds the batch.

Random crop-and-resize, left-right flip and an in-plane rotation are one affine per volume, applied
to the whole batch by a single ``grid_sample`` call; gamma works on the brain's min-max range and the
masked z-score is redone afterwards; an intensity shift, last, adds an offset to the z-scored brain
(background stays 0). Parameters are drawn first (``draw``) and applied second (``apply``), so a
data-parallel rank can take its slice of the global batch's draws and match a single-process run
exactly.

3D-Neuro-SimCLR's views (its ``main.py``, MONAI): ``RandSpatialCropd`` (random size per axis, at
least (30, 40, 40) of its (150, 192, 192) voxels: 20-100%) then ``Resized`` to the grid, ``RandFlipd``
(p 0.5, left-right), ``RandRotated`` (up to 0.785 rad = 45 degrees in the axial plane, p 0.5),
``RandShiftIntensityd`` (offset of up to +-0.5, p 0.8) and ``RandAdjustContrastd`` (gamma 0.5-1.5,
p 0.8), then a masked z-score of each view. Here the crop, flip and rotation are one affine (the
rotation turns the crop box in the scan rather than the resized crop), gamma works on the brain's
range rather than the whole box's, and the shift comes after the z-score: before it, as there, the
z-score takes it out again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AugmentParams:
    """Per-volume draws: crop size and centre (fractions of the volume), angle, flip, gamma, shift."""

    scale: torch.Tensor   # (N, 3) crop size / full size per axis
    centre: torch.Tensor  # (N, 3) crop centre, normalised coordinates
    angle: torch.Tensor   # (N,) radians, rotation in the first two axes' plane
    flip: torch.Tensor    # (N,) bool, flip the first axis (left-right)
    gamma: torch.Tensor   # (N,) exponent, 1 = unchanged
    shift: torch.Tensor   # (N,) offset added to the z-scored brain, 0 = unchanged

    def __getitem__(self, idx: slice) -> "AugmentParams":
        return AugmentParams(self.scale[idx], self.centre[idx], self.angle[idx], self.flip[idx], self.gamma[idx],
                             self.shift[idx])


def draw(n: int, cfg: dict[str, Any], generator: torch.Generator) -> AugmentParams:
    """Draw parameters for ``n`` volumes on the CPU generator (same numbers on any device).

    cfg: min_crop (fraction of each axis), p_rotate, max_rotate_deg, p_flip, p_gamma, gamma [lo, hi],
    p_shift and shift (largest offset). The shift's numbers are drawn only when the recipe shifts
    (p_shift > 0), so a recipe without one draws exactly the numbers it drew before the shift existed.
    """
    u = torch.rand(n, 10, generator=generator, dtype=torch.float64)
    lo = cfg["min_crop"]
    scale = lo + (1 - lo) * u[:, 0:3]
    centre = (2 * u[:, 3:6] - 1) * (1 - scale)
    max_angle = math.radians(cfg["max_rotate_deg"])
    angle = torch.where(u[:, 6] < cfg["p_rotate"], (2 * u[:, 7] - 1) * max_angle, torch.zeros(n, dtype=u.dtype))
    flip = u[:, 8] < cfg["p_flip"]
    g_lo, g_hi = cfg["gamma"]
    u9 = torch.rand(n, generator=generator, dtype=torch.float64)
    gamma = torch.where(u[:, 9] < cfg["p_gamma"], g_lo + (g_hi - g_lo) * u9, torch.ones(n, dtype=u.dtype))
    shift = torch.zeros(n, dtype=u.dtype)
    if cfg["p_shift"] > 0:
        v = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        shift = torch.where(v[:, 0] < cfg["p_shift"], (2 * v[:, 1] - 1) * cfg["shift"], shift)
    return AugmentParams(scale.float(), centre.float(), angle.float(), flip, gamma.float(), shift.float())


def _theta(p: AugmentParams, size: Sequence[int], device: torch.device) -> torch.Tensor:
    """Affines from output to input normalised coordinates, in grid_sample's (W, H, D) axis order, for
    volumes of ``size`` (X, Y, Z) voxels. The rotation is rigid in voxels (isotropic: in mm), as
    MONAI's ``Rotate``: normalised coordinates run over each axis's own length, so the in-plane turn
    is conjugated by the first two axes' lengths (a plain rotation matrix on normalised coordinates
    would also stretch a non-square plane, the 152 x 192 of 1-mm grids by 18% at 45 degrees)."""
    n = p.scale.shape[0]
    cos, sin = p.angle.cos(), p.angle.sin()
    aspect = size[1] / size[0]  # Y over X length
    rot = torch.eye(3).repeat(n, 1, 1)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin * aspect, sin / aspect, cos
    lin = rot * p.scale.unsqueeze(1)  # rotate the crop box: R @ diag(scale)
    lin[:, :, 0] *= torch.where(p.flip, -1.0, 1.0).unsqueeze(1)
    rev = [2, 1, 0]  # tensor axes (X, Y, Z) are grid components (z, y, x)
    theta = torch.cat([lin[:, rev][:, :, rev], p.centre[:, rev].unsqueeze(-1)], dim=2)
    return theta.to(device)


def masked_zscore(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Z-score each volume inside its mask; background 0 (the preprocessing convention)."""
    dims = tuple(range(1, x.dim()))
    n = mask.sum(dims, keepdim=True).clamp_min(1)
    mean = (x * mask).sum(dims, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(dims, keepdim=True) / n
    return (x - mean) / (var.sqrt() + 1e-6) * mask


def apply(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Augment a batch (N, 1, X, Y, Z) of masked z-scored volumes (brain = non-zero voxels): crop,
    resize, flip and rotate (one affine), gamma, masked z-score, shift."""
    x = x.float()
    mask = (x != 0).float()
    grid = F.affine_grid(_theta(p, x.shape[2:], x.device), list(x.shape), align_corners=False)
    both = F.grid_sample(torch.cat([x, mask], dim=1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
    mask = (both[:, 1:] > 0.5).float()
    x = both[:, :1] * mask
    dims = (1, 2, 3, 4)
    big = torch.finfo(x.dtype).max
    lo = torch.where(mask > 0, x, big).amin(dims, keepdim=True)
    hi = torch.where(mask > 0, x, -big).amax(dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-6)
    gamma = p.gamma.to(x.device).view(-1, 1, 1, 1, 1)
    x = ((x - lo) / span).clamp(0, 1) ** gamma * span + lo
    return masked_zscore(x, mask) + p.shift.to(x.device).view(-1, 1, 1, 1, 1) * mask
