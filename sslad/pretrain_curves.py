"""One figure of every pretraining run's loss curve (the report's "Pretraining" page).

A method per panel, one line per pretraining run (``pretrain.seeds``), the loss of each epoch as the
job logged it: a run that learned nothing, or one seed that diverged from the others, shows at a glance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sslad.io import atomic_path


def plot(metrics_paths: list[str], out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, list[tuple[int, list[float]]]] = {}
    for path in metrics_paths:
        m = json.loads(Path(path).read_text())
        runs.setdefault(m["method"], []).append((m["settings"]["train"]["seed"], m["loss"]))
    methods = sorted(runs)
    cols = min(3, len(methods)) or 1
    rows = math.ceil(len(methods) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        for seed, loss in sorted(runs[method]):
            ax.plot(range(1, len(loss) + 1), loss, label=f"seed {seed}")
        ax.set(title=method, xlabel="epoch", ylabel="loss")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
