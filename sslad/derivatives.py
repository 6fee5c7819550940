"""results/preproc/ as a BIDS-Derivatives dataset: its dataset_description.json.

The preprocessed files already carry BIDS-derivative names (sub-*/ses-*/anat/*_space-*_desc-preproc_T1w);
what makes the folder a dataset that BIDS tools (pybids' ``BIDSLayout(raw, derivatives=...)``) index
is this description, with ``DatasetType: derivative`` and the pipeline that generated it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sslad.io import atomic_path
from sslad.provenance import code_version, job_provenance

BIDS_VERSION = "1.10.0"


def dataset_description(settings: dict[str, Any]) -> dict[str, Any]:
    """The description of the preprocessed dataset; ``settings``: space, registration, voxel_mm. The
    version is the package's with the commit as a local version label (0.1.0+984d85501e03)."""
    for key in ("space", "registration", "voxel_mm"):
        if key not in settings:
            raise ValueError(f"dataset-description settings: missing '{key}'")
    steps = (f"N4 bias correction, {settings['registration']} registration to {settings['space']} (antspyx), "
             f"skull strip with the template's brain mask, intensity normalisation, "
             f"model grid at {settings['voxel_mm']:g} mm")
    code = code_version()
    commit = "" if code["commit"] == "unknown" else f"+{code['commit'][:12]}{'.dirty' if code['dirty'] else ''}"
    return {"Name": "sslad preprocessed T1w", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "sslad", "Version": f"{code['sslad_version']}{commit}", "Description": steps}],
            # which code and libraries wrote this description; each scan's _qc.json has its own
            "provenance": job_provenance()}


def write(settings: dict[str, Any], out: str | Path) -> None:
    """Write the description atomically (sorted keys: identical settings give identical bytes)."""
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(dataset_description(settings), indent=2, sort_keys=True) + "\n")
