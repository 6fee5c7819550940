"""Has each init learned its task? Flags for the cells whose training had not converged.

Why: a comparison with a baseline that has not learned favours the pretrained inits by construction.
A fixed epoch budget cannot know that; the curves each fine-tuning job records can. Three signs, each
judged per init, task, mode, inputs and fraction over its seeds:

- the best validation epoch is the last one in most seeds (the model was still improving when the
  budget ended), or the first one short of a validation AUC of 1 (validation never improved on one
  epoch: the training learned nothing that generalises, e.g. a learning rate wrong for the budget);
- the training loss was still falling over the last quarter of the epochs by more than
  ``LOSS_STILL_FALLING`` of its first value while the best validation epoch lay in that quarter, in
  most seeds (a loss that keeps falling after validation stopped improving is separable training
  data, not undertraining); a run that early stopping ended (``finetune.patience`` epochs without a
  better validation AUC, before its last epoch) stopped because validation had, and does not count;
- the mean validation AUC is below the schedule-only baseline's on the same cells, or equal to it
  short of 1 (what the images added is nothing the visit schedule does not already give).

On a simulated cohort that last sign has a second reference on the same validation samples: the
reader of the simulation's true volumes (sslad.ground_truth), fitted on the same training samples.
Where it too reads no better than the schedule baseline, the flag says so: the data are the likely
cause, not the budget (the flag stays: the comparison there is still unsettled).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

LOSS_STILL_FALLING = 0.05
CELL = ["heldout", "task", "init", "mode", "inputs", "fraction"]
TRAINING_COLUMNS = [*CELL, "seed", "epochs", "stopped_early", "best_epoch", "loss_drop_last_quarter", "val_auc",
                    "val_subjects"]
FLAG_COLUMNS = [*CELL, "seeds", "best_last", "best_first", "loss_falling", "val_auc", "schedule_val_auc",
                "truth_val_auc", "reasons"]


def loss_drop(loss: list[float]) -> float:
    """How much the training loss fell over the last quarter of the epochs (the mean of the last
    quarter against the quarter before), as a fraction of its first value; 0 for fewer than 2 epochs."""
    if len(loss) < 2:
        return 0.0
    k = max(1, len(loss) // 4)
    late, early = np.mean(loss[-k:]), np.mean(loss[-2 * k:-k])
    return float((early - late) / max(abs(loss[0]), 1e-12))


def training_rows(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per mode of an evaluated fine-tuning job's metrics.json: epochs run, whether early
    stopping ended the run (fewer epochs than its settings' budget: full mode only, the probe runs
    them all), best epoch, the loss drop over the last quarter and the best validation AUC (the
    schedule baseline, which trains no epochs, gives its validation AUC only) and the number of validation
    subjects it was read on."""
    rows = []
    for row in job.get("rows", []):
        curve = job.get("curves", {}).get(row["mode"], {})
        loss = list(curve.get("train_loss", []))
        rows.append({"heldout": job.get("heldout", ""), "task": job["task"], "init": job["init"],
                     "mode": row["mode"], "inputs": job["inputs"], "fraction": float(job["fraction"]),
                     "seed": job["seed"], "epochs": len(loss),
                     "stopped_early": row["mode"] == "full" and 0 < len(loss) < job["settings"]["epochs"],
                     "best_epoch": row.get("best_epoch"),
                     "loss_drop_last_quarter": loss_drop(loss), "val_auc": row.get("val_auc"),
                     "val_subjects": row.get("n_val_subjects")})
    return rows


def flags(training: pd.DataFrame, schedule: str = "schedule", truth: dict[str, float] | None = None) -> pd.DataFrame:
    """The cells that may be undertrained (FLAG_COLUMNS), each with its reasons in words. ``truth``: per
    task, the true-volume reader's validation AUC (sslad.ground_truth: all labels, the pooled split), cited
    beside the schedule baseline's for the cells it applies to."""
    out = []
    trained = training[training["epochs"] > 0]
    base = (training[training["init"] == schedule].groupby([c for c in CELL if c != "init"], dropna=False)["val_auc"]
            .mean())
    for key, g in trained.groupby(CELL, dropna=False, sort=True):
        cell = dict(zip(CELL, key))
        n = len(g)
        best = pd.to_numeric(g["best_epoch"], errors="coerce")
        ceiling = pd.to_numeric(g["val_auc"], errors="coerce") >= 1  # nothing left to improve on validation
        best_last, best_first = int((best == g["epochs"]).sum()), int(((best == 1) & ~ceiling).sum())
        late = (best > g["epochs"] - np.maximum(1, g["epochs"] // 4)) & ~g["stopped_early"].astype(bool)
        falling = int(((g["loss_drop_last_quarter"] > LOSS_STILL_FALLING) & late).sum())
        val = float(pd.to_numeric(g["val_auc"], errors="coerce").mean())
        ref = base.get(tuple(cell[c] for c in CELL if c != "init"), np.nan)
        # the reader's own setting: the pooled split, all labels, the history inputs (it reads their change)
        same_setting = (not cell["heldout"] and abs(float(cell["fraction"]) - 1.0) < 1e-9
                        and cell["inputs"] == "history")
        known = float((truth or {}).get(cell["task"], np.nan)) if same_setting else np.nan
        reasons = []
        if best_last > n / 2:
            reasons.append(f"validation AUC peaked at the last epoch in {best_last} of {n} seeds")
        if best_first > n / 2 and g["epochs"].min() > 1:
            reasons.append(f"validation AUC peaked at the first epoch in {best_first} of {n} seeds")
        if falling > n / 2:
            reasons.append(f"training loss still falling in {falling} of {n} seeds (by more than "
                           f"{LOSS_STILL_FALLING:.0%} of its first value over the last quarter, validation "
                           "peaking in it)")
        if np.isfinite(ref) and (val < ref or (val == ref and ref < 1)):
            # how many subjects that reading rests on: a handful leaves the comparison to chance
            n_val = pd.to_numeric(g["val_subjects"], errors="coerce").max()
            on = f" on {int(n_val)} validation subjects" if np.isfinite(n_val) else ""
            reason = f"validation AUC {val:.3f} no better than the schedule baseline's {ref:.3f}{on}"
            if np.isfinite(known):
                reason += (f" (true volumes: {known:.3f}, no better either: likely the data, not the budget)"
                           if known <= ref else f" (true volumes: {known:.3f})")
            reasons.append(reason)
        if reasons:
            out.append({**cell, "seeds": n, "best_last": best_last, "best_first": best_first, "loss_falling": falling,
                        "val_auc": val, "schedule_val_auc": ref, "truth_val_auc": known, "reasons": "; ".join(reasons)})
    return pd.DataFrame(out, columns=FLAG_COLUMNS)


def section(flagged: pd.DataFrame, training: pd.DataFrame, primary: dict[str, Any]) -> list[str]:
    """summary.md's "Training convergence" section: every flagged cell, or that none is; first, in
    bold, whether the primary comparison's init or reference is among them at its mode and fraction."""
    lines = ["## Training convergence", ""]
    at = flagged[(flagged["mode"] == primary["mode"]) & (flagged["inputs"] == primary["inputs"])
                 & ((flagged["fraction"] - float(primary["fraction"])).abs() < 1e-9)]
    for name in dict.fromkeys((primary["init"], primary["reference"])):
        tasks = sorted(at.loc[at["init"] == name, "task"])
        if tasks:
            lines += [f"**The primary comparison's {name} may be undertrained** ({primary['mode']}, fraction "
                      f"{float(primary['fraction']):g}) on {', '.join(tasks)}: read its comparisons there as "
                      "unsettled.", ""]
    cells = training[training["epochs"] > 0].drop_duplicates(CELL)
    if flagged.empty:
        return lines + [f"No cell of the {len(cells)} trained cells shows a sign of undertraining (validation AUC "
                        "peaking at the last or the first epoch, training loss still falling, or validation AUC no "
                        "better than the schedule baseline's, in most seeds).", ""]
    no_signal = (flagged["truth_val_auc"] <= flagged["schedule_val_auc"]).any()
    lines += [f"{len(flagged)} of {len(cells)} trained cells **may be undertrained**: a comparison with such a cell "
              "(as reference or as init) is tilted towards the other side. Set finetune.epochs and lr "
              "(on validation data only) until no cell that matters is listed"
              + (", except where the true volumes read no better than the schedule baseline either: a longer "
                 "budget is not the remedy there." if no_signal else "."), "",
              "| task | init | mode | inputs | fraction | seeds | why |", "|---|---|---|---|---|---|---|"]
    for r in flagged.itertuples():
        fold = f" (held out {r.heldout})" if r.heldout else ""
        lines.append(f"| {r.task}{fold} | {r.init} | {r.mode} | {r.inputs} | {r.fraction:g} | {r.seeds} "
                     f"| {r.reasons} |")
    return lines + [""]
