"""The per-task figures: AUC and balanced accuracy against the label fraction, one line per init and mode."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sslad.io import atomic_path
from sslad.registry import colours
from sslad.result_table import sorted_rows

# fixed colours, so that a method looks the same in every figure and every run
COLOURS = colours()


SPARE_COLOURS = ["tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def init_colours(inits: list[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * (1 + len(inits)))
    return {i: COLOURS[i] if i in COLOURS else next(spare) for i in sorted(inits)}


def plot_task(table: pd.DataFrame, task: str, out_png: str | Path, colours: dict[str, str]) -> None:
    """AUC and balanced accuracy against label fraction, one line per init and mode.

    The x axis is logarithmic: label fractions are usually spaced by factors (0.1, 0.2, 0.5, 1), and
    a log axis keeps their true ratios while giving each the same room (a categorical axis would
    hide uneven spacing). Lines of different inits are nudged sideways so error bars do not overlap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = table[table["task"] == task]
    fractions = sorted(df["fraction"].unique())
    inits = list(dict.fromkeys(sorted_rows(df[["task", "init"]].drop_duplicates(), ["init"])["init"]))
    show_inputs = df["inputs"].nunique() > 1
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, metric, name in zip(axes, ("auc", "balanced_accuracy"), ("test AUC", "test balanced accuracy")):
        bottom = 0.4
        for k, init in enumerate(inits):
            nudge = math.exp(0.04 * (k - (len(inits) - 1) / 2))
            for (inputs, mode), g in df[df["init"] == init].groupby(["inputs", "mode"], sort=True):
                stats = g.groupby("fraction")[metric].agg(["mean", "std"]).sort_index()
                bottom = min(bottom, float((stats["mean"] - stats["std"].fillna(0)).min()))
                label = f"{init} ({mode})" + (f" [{inputs}]" if show_inputs else "")
                ax.errorbar(stats.index.to_numpy() * nudge, stats["mean"], yerr=stats["std"].fillna(0).to_numpy(),
                            color=colours[init], linestyle="-" if mode == "full" else "--", marker="o",
                            markersize=4, capsize=2, linewidth=1.2, label=label)
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("label fraction (log scale)")
        ax.set_ylabel(name)
        ax.set_ylim(max(0.0, bottom - 0.03), 1.02)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                   title="mean ± sd over seeds", title_fontsize=7)
    fig.suptitle(task)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100, metadata={"Software": None})
    plt.close(fig)
