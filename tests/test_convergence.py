"""Flags of undertrained cells from the curves each fine-tuning job records."""

from __future__ import annotations

import pandas as pd

from sslad import convergence

PRIMARY = {"init": "topc", "reference": "scratch", "mode": "full", "inputs": "history", "fraction": 1.0}


def _job(init: str, seed: int, loss: list[float], best: int, val: float, task: str = "dx_cn_ad",
         mode: str = "full", budget: int | None = None) -> dict:
    """A job's metrics.json; ``budget``: its settings' epochs (default: the epochs it ran)."""
    return {"task": task, "init": init, "inputs": "history", "fraction": 1.0, "seed": seed, "heldout": "",
            "settings": {"epochs": budget or len(loss)},
            "rows": [{"mode": mode, "best_epoch": best, "val_auc": val}],
            "curves": {mode: {"train_loss": loss, "val_auc": [val] * len(loss)}}}


def _schedule(val: float, seeds: tuple[int, ...] = (0, 1), modes: tuple[str, ...] = ("full",)) -> list[dict]:
    """The schedule-only baseline's jobs: no curves, a validation AUC only."""
    return [{"task": "dx_cn_ad", "init": "schedule", "inputs": "history", "fraction": 1.0, "seed": s, "heldout": "",
             "rows": [{"mode": m, "best_epoch": None, "val_auc": val}], "curves": {}} for s in seeds for m in modes]


def _training(*jobs: dict) -> pd.DataFrame:
    return pd.DataFrame([r for j in jobs for r in convergence.training_rows(j)], columns=convergence.TRAINING_COLUMNS)


FLAT = [0.9, 0.6, 0.5, 0.45, 0.44, 0.44, 0.44, 0.44]
FALLING = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]


def test_converged_cells_are_not_flagged_and_the_section_says_so():
    jobs = [_job("topc", s, FLAT, 4, 0.8) for s in (0, 1)] + [_job("scratch", s, FLAT, 5, 0.75) for s in (0, 1)]
    jobs += _schedule(0.6)
    training = _training(*jobs)
    flagged = convergence.flags(training)
    assert flagged.empty
    assert "No cell of the 2 trained cells" in "\n".join(convergence.section(flagged, training, PRIMARY))


def test_each_sign_of_undertraining_is_flagged_with_its_reason():
    schedule = _schedule(0.7, modes=("full", "probe"))
    training = _training(
        *[_job("scratch", s, FALLING, 8, 0.9) for s in (0, 1)],                  # still improving at the end
        *[_job("simclr", s, FLAT, 1, 0.8) for s in (0, 1)],                      # never improved on epoch 1
        *[_job("top", s, FLAT, 4, 0.65) for s in (0, 1)],                        # below the schedule baseline
        *[_job("tcl", s, FLAT, 1, 1.0, mode="probe") for s in (0, 1)],           # at the ceiling on epoch 1
        *[_job("tmp", s, FALLING, 3, 0.9, mode="probe") for s in (0, 1)],        # separable: loss falls, val done
        *[_job("topc", 0, FALLING, 8, 0.9), _job("topc", 1, FLAT, 4, 0.9)],      # one seed of two: no majority
        *schedule)
    flagged = convergence.flags(training).set_index("init")
    assert set(flagged.index) == {"scratch", "simclr", "top"}
    assert "validation AUC peaked at the last epoch in 2 of 2 seeds" in flagged.loc["scratch", "reasons"]
    assert "training loss still falling in 2 of 2 seeds" in flagged.loc["scratch", "reasons"]
    assert flagged.loc["simclr", "reasons"] == "validation AUC peaked at the first epoch in 2 of 2 seeds"
    assert flagged.loc["top", "reasons"] == "validation AUC 0.650 no better than the schedule baseline's 0.700"
    text = "\n".join(convergence.section(flagged.reset_index(), training, PRIMARY))
    assert "**The primary comparison's scratch may be undertrained** (full, fraction 1) on dx_cn_ad" in text
    assert "primary comparison's topc" not in text and "3 of 6 trained cells **may be undertrained**" in text


def test_the_schedule_reason_names_the_validation_subjects_it_rests_on():
    """On the validation study's fut_cn_mci, 12 validation subjects: the reader should see how few."""
    jobs = [_job("scratch", s, FLAT, 4, 0.40) for s in (0, 1)]
    jobs += _schedule(0.44)
    for job in jobs:
        job["rows"][0]["n_val_subjects"] = 12
    reasons = convergence.flags(_training(*jobs)).iloc[0]["reasons"]
    assert reasons == "validation AUC 0.400 no better than the schedule baseline's 0.440 on 12 validation subjects"


def test_the_schedule_reason_cites_the_true_volumes_and_says_when_the_split_lacks_the_signal():
    """The validation study's fut_cn_mci: a reader of the simulation's true volumes, fitted on the same
    26 training subjects, reads validation at 0.31, below the schedule's 0.44 too: the flag stays and
    says why a longer budget would not clear it; where the truth reads better, only its value."""
    training = _training(*[_job("scratch", s, FLAT, 4, 0.40) for s in (0, 1)], *_schedule(0.44))
    lacking = convergence.flags(training, truth={"dx_cn_ad": 0.31}).iloc[0]
    assert lacking["reasons"] == ("validation AUC 0.400 no better than the schedule baseline's 0.440 (true volumes: "
                                  "0.310, no better either: likely the data, not the budget)")
    assert lacking["truth_val_auc"] == 0.31
    text = "\n".join(convergence.section(pd.DataFrame([lacking]), training, PRIMARY))
    assert "a longer budget is not the remedy there" in text
    learnable = convergence.flags(training, truth={"dx_cn_ad": 0.9})
    assert learnable.iloc[0]["reasons"].endswith("0.440 (true volumes: 0.900)")
    assert "not the remedy" not in "\n".join(convergence.section(learnable, training, PRIMARY))
    # another task's truth, or a cell outside the reader's setting (a held-out fold, fewer labels, other
    # inputs): the reason as before
    assert convergence.flags(training, truth={"fut_cn_mci": 0.31}).iloc[0]["reasons"].endswith("0.440")
    for other in ({"heldout": "SiteB"}, {"fraction": 0.5}, {"inputs": "index"}):
        cell = training.assign(**other)
        assert convergence.flags(cell, truth={"dx_cn_ad": 0.31}).iloc[0]["reasons"].endswith("0.440"), other


def test_a_run_that_early_stopping_ended_is_not_flagged_for_its_falling_loss():
    """The loss still falls and validation peaked in the last quarter, but the run stopped 2 epochs
    after that peak, 12 short of its budget: validation had stopped improving, which is convergence
    by definition of the stop. The same curves at the end of the budget are flagged."""
    stopped = _training(*[_job("scratch", s, FALLING, 7, 0.9, budget=20) for s in (0, 1)])
    assert stopped["stopped_early"].all() and convergence.flags(stopped).empty
    ran_out = _training(*[_job("scratch", s, FALLING, 7, 0.9) for s in (0, 1)])
    assert not ran_out["stopped_early"].any()
    assert "training loss still falling in 2 of 2" in convergence.flags(ran_out).iloc[0]["reasons"]


def test_loss_drop_reads_the_last_quarter():
    assert convergence.loss_drop([1.0]) == 0.0
    assert abs(convergence.loss_drop(FALLING) - (0.45 - 0.25) / 0.9) < 1e-12
    assert convergence.loss_drop(FLAT) == 0.0
