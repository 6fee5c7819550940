"""One picture of the preprocessed scans, to spot failed registrations and odd intensities at a glance.

Why a mosaic of middle axial slices: a misregistered or badly normalised scan stands out among its
neighbours far faster than in per-scan QC pages. Failed scans are always shown (framed in red, with
the reason, first) because they are the ones a reader needs to check; a scan that failed after
registration still shows its slice, so a misregistration is seen, not only read.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from sslad.io import atomic_path, read_tsv


def select(qc: pd.DataFrame, max_scans: int) -> pd.DataFrame:
    """Every failed scan first (top left), then passed scans, each in participant/session order, up
    to ``max_scans`` in all."""
    qc = qc.sort_values(["participant_id", "session_id"], kind="mergesort").reset_index(drop=True)
    failed = ~qc["qc_pass"].astype(str).str.strip().str.lower().eq("true")
    keep = failed | ((~failed).cumsum() <= max(0, max_scans - int(failed.sum())))
    shown = qc[keep].assign(failed=failed[keep])
    return shown.sort_values("failed", ascending=False, kind="mergesort").reset_index(drop=True)


def middle_axial(path: str) -> np.ndarray:
    """The middle z slice of an (x, y, z) array, read without loading the whole volume."""
    arr = np.load(path, mmap_mode="r")
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D array, got shape {arr.shape}")
    return np.asarray(arr[:, :, arr.shape[2] // 2], dtype=np.float32)


def run(qc_tsv: str, out_png: str, max_scans: int = 64) -> None:
    """Draw the QC mosaic of ``qc_tsv`` (participant_id, session_id, qc_pass, qc_reason, array) to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qc = read_tsv(qc_tsv, keep_default_na=False)
    missing = {"participant_id", "session_id", "qc_pass", "qc_reason", "array"} - set(qc.columns)
    if missing:
        raise ValueError(f"{qc_tsv}: missing column(s) {sorted(missing)}")
    shown = select(qc, max_scans)
    n_failed = int((~qc["qc_pass"].astype(str).str.strip().str.lower().eq("true")).sum())
    n = max(1, len(shown))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(4.0, 1.6 * cols), 1.8 * rows + 0.4), squeeze=False,
                             facecolor="black")
    for ax in axes.ravel():
        ax.set_facecolor("black")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax, r in zip(axes.ravel(), shown.itertuples(index=False)):
        colour = "red" if r.failed else "white"
        message = str(r.qc_reason) if r.failed else ""
        image = None
        if str(r.array).strip():
            try:
                image = middle_axial(str(r.array))
            except (OSError, ValueError) as exc:
                colour, message = "red", f"unreadable array: {exc}"
        if image is not None:
            finite = image[np.isfinite(image)]
            low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
            # transposed with origin lower: array x runs left to right, y (towards anterior) runs up
            ax.imshow(image.T, origin="lower", cmap="gray", vmin=low, vmax=high if high > low else low + 1,
                      interpolation="nearest")
        if message:
            ax.text(0.5, 0.5 if image is None else 0.08, "\n".join(textwrap.wrap(message, 28)[:6]),
                    transform=ax.transAxes, ha="center", va="center" if image is None else "bottom",
                    color=colour, fontsize=4.5)
        if r.failed or colour == "red":
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("red")
                spine.set_linewidth(2)
        ax.set_title(f"{r.participant_id} {r.session_id}", color=colour, fontsize=6, pad=2)
    if qc.empty:
        axes[0, 0].text(0.5, 0.5, "no scans", color="white", ha="center", va="center", transform=axes[0, 0].transAxes)
    fig.suptitle(f"{len(qc)} scans, {n_failed} failed QC (red); showing {len(shown)}; middle axial slice",
                 color="white", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, facecolor="black", metadata={"Software": None})
    plt.close(fig)
