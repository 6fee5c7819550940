"""The registration template: nilearn's MNI152 2009a by default, or the files a study names.

Why a stage: per-scan jobs then read two plain NIfTI files, and the space label in every output
name follows the template that was really used.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from sslad.io import atomic_path

NILEARN_SPACE = "MNI152NLin2009aSym"


def write_template(image_out: str | Path, mask_out: str | Path, image: str = "", mask: str = "") -> None:
    """Copy the configured template (or nilearn's, when ``image`` is empty) as float32 NIfTI."""
    if image:
        if not mask:
            raise ValueError("preprocess.template_mask: required when preprocess.template is set")
        t1, brain = nib.load(image), nib.load(mask)
        if t1.shape[:3] != brain.shape[:3] or not np.allclose(t1.affine, brain.affine, atol=1e-3):
            raise ValueError(f"{mask}: brain mask grid differs from template {image}")
    else:
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        t1, brain = load_mni152_template(resolution=1), load_mni152_brain_mask(resolution=1)
    for img, out, dtype in ((t1, image_out, np.float32), (brain, mask_out, np.uint8)):
        data = np.asarray(img.get_fdata(dtype=np.float32))
        data = (data > 0.5) if dtype is np.uint8 else data
        with atomic_path(out) as tmp:
            nib.save(nib.Nifti1Image(data.astype(dtype), img.affine), tmp)
