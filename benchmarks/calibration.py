"""Error rates of the study's statistics, measured on synthetic test predictions with a known truth (issue 29).

Why: summary.csv reports p-values, Holm-adjusted p-values and (simultaneous) intervals of AUC
differences from a paired bootstrap over test subjects and seeds; their nominal rates (5% false
positives, 95% coverage) hold only approximately with few seeds and few test subjects. Here each
replicate is a study whose truth is planted, run through the functions that write summary.csv
(:func:`sslad.aggregate.primary_comparison`: the per-seed prediction tables, ``_seed_pairs``,
``paired_auc_diff``, Holm and the simultaneous intervals of ``primary_rows``), and the rates are counted.

The model: a test subject has a latent score (its class shifts it); each sample (index visit, 1-4
per subject) reads it with visit noise; every model's logit is that reading plus its init's own reading
of the subject (the same in all of the init's seeds and runs: :data:`SUBJECT_INIT_SD`, the grid runs it
at 0.75 and at 0), its own subject- and sample-level noise, a global shift, and a class signal whose
strength moves with the seeds: a
pretraining run (the init only), a fine-tuning seed of its own and a fine-tuning seed effect shared by
both inits (the same label subset). The planted difference is that of the study's pretraining runs,
averaged over fine-tuning seeds and test subjects (with normal noise E[AUC] = Phi(d / sqrt(2 V + var))):
what a study with those runs can estimate, as one run's own effect cannot be told from the init's. A
column gives the coverage of the difference over the population of pretraining runs too. Each study
has three tasks with differences 0, 0.05 and 0.10 (reference AUC 0.75), with Holm and the simultaneous
intervals over those three, as summary.md's primary comparison has over its tasks. The init's rows carry
their pretraining run (``pretrain_seed``) as table.csv does, so that with several runs aggregation draws
runs and fine-tuning seeds as crossed factors; the "independent" columns draw the same pairs as if each
(run, seed) were a seed of its own, the method before pretraining runs were crossed.

Second table: coverage of the order probe's intervals (:func:`sslad.diagnostics.summarise`) over
subjects with unequal numbers of scan pairs and subject-to-subject differences in accuracy: one
reader's accuracy, and the paired difference of two readers scored on the same pairs
(:mod:`sslad.order_probe`).

    python benchmarks/calibration.py --jobs 2                  # the full grid (42 settings): ~27 min alone, 2 cores
    python benchmarks/calibration.py --quick --replicates 150  # 4 settings (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from statistics import NormalDist

import numpy as np
import pandas as pd

from sslad import comparison
from sslad.diagnostics import summarise as order_probe_interval

DELTAS = (0.0, 0.05, 0.10)
REFERENCE_AUC = 0.75
LEVEL = 0.95
# noise of a logit around the class signal: latent subject (1), visit (0.5^2), model's own subject and
# sample noise (0.5^2 each); the first two are shared by both inits (correlation 1.25 / 1.75)
NOISE_VAR = 1.0 + 3 * 0.25
# sd of each init's own reading of a subject, the same in all its seeds and runs (a subject x init
# interaction: the subjects one init reads better than the other). It makes the cells' differences share
# more than the test sample: the part of the variance every seed shares. 0.75 puts that part at about 3
# times the seeds' (their ratio in the validation study's primary comparison: 0.3-8, median 3.5); with 0
# the inits read subjects alike up to each model's own noise, and the shared part is near 0.
SUBJECT_INIT_SD = 0.75
# sd of the class-signal strength added by each seed effect; 0.15 moves a model's AUC by about 0.025
PRETRAIN_SD, FINETUNE_SD, SHARED_SD = 0.15, 0.15, 0.15
PRIMARY = {"init": "init", "reference": "ref", "mode": "full", "inputs": "history", "fraction": 1.0,
           "min_test_subjects": 10}
# (pretraining runs, fine-tuning seeds, test subjects per class, subject x init sd); 3 x 3 is the validation
# study's design (config/validation.yaml), 1 x 2 the demo's
DESIGNS = ((1, 2), (1, 3), (1, 5), (2, 2), (3, 2), (3, 3), (3, 5))
GRID = [(p, f, n, tc) for tc in (SUBJECT_INIT_SD, 0.0) for p, f in DESIGNS for n in (10, 20, 50)]
QUICK = [(1, 2, 10, SUBJECT_INIT_SD), (1, 3, 20, SUBJECT_INIT_SD), (3, 2, 50, 0.0), (1, 2, 50, 0.0)]
PROBE_SUBJECTS = (6, 10, 20, 40, 100)


def auc_given(d: float, pretrain: np.ndarray, noise_var: float) -> float:
    """Expected AUC over fine-tuning seeds and test subjects of a model with class signal ``d`` plus each
    pretraining run's effect, averaged over the runs: E[Phi(a + b Z)] = Phi(a / sqrt(1 + b^2))."""
    scale = np.sqrt(2 * noise_var + FINETUNE_SD ** 2 + SHARED_SD ** 2)
    return float(np.mean([NormalDist().cdf((d + e) / scale) for e in pretrain]))


def signal(target: float, pretrain: np.ndarray, noise_var: float) -> float:
    """The class signal whose :func:`auc_given` is ``target`` (bisection: it increases with d)."""
    low, high = -5.0, 5.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if auc_given(mid, pretrain, noise_var) < target else (low, mid)
    return (low + high) / 2


class Memory:
    """Prediction tables held in memory, in the shape aggregation reads from predictions.tsv."""

    def __init__(self) -> None:
        self.frames: dict[str, pd.DataFrame] = {}

    def get(self, source: str, mode: str) -> pd.DataFrame:
        return self.frames[source]


def study(rng: np.random.Generator, n_pretrain: int, n_finetune: int, n_per_class: int,
          subject_init_sd: float = SUBJECT_INIT_SD,
          deltas: tuple[float, ...] = DELTAS) -> tuple[pd.DataFrame, Memory, np.ndarray]:
    """One simulated study: per task (one per planted difference), the reference fine-tuned with each
    fine-tuning seed and the init with each (pretraining, fine-tuning) seed; the table rows and the
    predictions that aggregation reads, and per task the difference over the population of pretraining runs.

    The planted difference is that of these pretraining runs (over fine-tuning seeds and test subjects): the
    one a study with them can estimate; a single run's effect cannot be told from the init's. The init's
    rows are (pretraining run p, fine-tuning seed f); the reference's, one per f (not pretrained), meets
    every run at its seed. ``subject_init_sd``: :data:`SUBJECT_INIT_SD`."""
    preds, rows, population = Memory(), [], []
    noise_var = NOISE_VAR + subject_init_sd ** 2
    d_ref = signal(REFERENCE_AUC, np.zeros(1), noise_var)
    for t, delta in enumerate(deltas):
        pretrain = PRETRAIN_SD * rng.normal(size=n_pretrain)
        spread = np.sqrt(2 * noise_var + PRETRAIN_SD ** 2 + FINETUNE_SD ** 2 + SHARED_SD ** 2)
        d_init = (NormalDist().inv_cdf(REFERENCE_AUC + delta) * spread if n_pretrain > 1
                  else signal(REFERENCE_AUC + delta, pretrain, noise_var))
        population.append(NormalDist().cdf(d_init / spread) - REFERENCE_AUC)
        n_sub = 2 * n_per_class
        visits = rng.integers(1, 5, n_sub)
        sub = np.repeat(np.arange(n_sub), visits)
        y = (sub < n_per_class).astype(np.int64)
        latent = rng.normal(size=n_sub)[sub] + 0.5 * rng.normal(size=sub.size)
        base = pd.DataFrame({"participant_id": np.char.add("sub-", np.char.zfill(sub.astype(str), 3)),
                             "index_session": np.concatenate([np.arange(v) for v in visits]).astype(str),
                             "label": y})

        own_reading = {init: subject_init_sd * rng.normal(size=n_sub)[sub] for init in ("init", "ref")}

        def logits(d: float, init: str) -> np.ndarray:
            return (d * y + latent + own_reading[init] + 0.5 * rng.normal(size=n_sub)[sub]
                    + 0.5 * rng.normal(size=sub.size) + rng.normal())

        shared = SHARED_SD * rng.normal(size=n_finetune)
        own_init, own_ref = FINETUNE_SD * rng.normal(size=(2, n_finetune))
        for f in range(n_finetune):
            preds.frames[f"t{t}/ref/{f}"] = base.assign(logit=logits(d_ref + shared[f] + own_ref[f], "ref"))
            rows.append({"task": f"t{t}", "init": "ref", "pretrain_seed": pd.NA, "seed": f,
                         "source": f"t{t}/ref/{f}"})
            for p in range(n_pretrain):
                preds.frames[f"t{t}/init/{p}/{f}"] = base.assign(
                    logit=logits(d_init + pretrain[p] + shared[f] + own_init[f], "init"))
                rows.append({"task": f"t{t}", "init": "init", "pretrain_seed": p, "seed": f,
                             "source": f"t{t}/init/{p}/{f}"})
    table = pd.DataFrame(rows).astype({"pretrain_seed": "Int64"}).assign(mode="full", inputs="history", fraction=1.0)
    return table, preds, np.array(population)


def replicate(rng: np.random.Generator, setting: tuple[int, int, int, float], n_boot: int,
              seed: int) -> dict[str, float]:
    """One study's outcomes: per task its p < 0.05, coverage, and the claims and simultaneous coverage."""
    table, preds, population = study(rng, *setting)
    rows = comparison.primary_comparison(table, PRIMARY, n_boot, seed, LEVEL, preds)
    truth = population if setting[0] > 1 else np.array(DELTAS)
    covered = (rows["auc_diff_low"] <= truth) & (truth <= rows["auc_diff_high"])
    covered_population = (rows["auc_diff_low"] <= population) & (population <= rows["auc_diff_high"])
    adj = (rows["auc_diff_adj_low"] <= truth) & (truth <= rows["auc_diff_adj_high"])
    wrong_way = rows["favours_reference"].to_numpy()
    out = {"reject0": float(rows.at[0, "auc_diff_p"] < 1 - LEVEL), "claim0": float(rows.at[0, "favours"]
                                                                                     or wrong_way[0]),
           "cover": float(covered.mean()), "cover0": float(covered[0]),
           "cover_population": float(covered_population.mean()), "simultaneous": float(adj.all())}
    for i, delta in enumerate(DELTAS[1:], 1):
        out[f"power{delta:g}"] = float(rows.at[i, "auc_diff_p"] < 1 - LEVEL)
        out[f"claim{delta:g}"] = float(rows.at[i, "favours"])
    if setting[0] > 1:  # the same pairs, each (run, seed) drawn as an independent seed
        independent = {}
        for task, g in table.groupby("task"):
            cells = comparison.matched_cells(g[g["init"] == "init"], g[g["init"] == "ref"])
            independent[task] = comparison.paired_auc_diff(comparison.seed_pairs(cells, "full", preds), n_boot, seed)
        rows = comparison.primary_rows(independent, LEVEL, min_subjects=PRIMARY["min_test_subjects"])
        out["independent_reject0"] = float(rows.at[0, "auc_diff_p"] < 1 - LEVEL)
        out["independent_cover"] = float(((rows["auc_diff_low"] <= truth) & (truth <= rows["auc_diff_high"])).mean())
    return out


def _setting(setting: tuple[int, int, int, float], replicates: int, n_boot: int, seed: int) -> dict[str, object]:
    """One setting's error rates over ``replicates`` studies, drawn from its own seeded generator (so that
    the table does not depend on how the settings are spread over workers)."""
    start = time.perf_counter()
    rng = np.random.default_rng([seed, *setting[:3], round(100 * setting[3])])
    res = pd.DataFrame([replicate(rng, setting, n_boot, seed * 100_003 + r) for r in range(replicates)])
    print(f"{setting}: {replicates} replicates in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return {"subject x init sd": f"{setting[3]:g}", "pretrain seeds": setting[0], "finetune seeds": setting[1],
            "subjects/class": setting[2], "replicates": replicates, **res.mean().to_dict(),
            "s": time.perf_counter() - start}


def calibrate(settings: list[tuple[int, int, int, float]], replicates: int, n_boot: int, seed: int = 0,
              large: int | None = None, jobs: int = 1) -> pd.DataFrame:
    """The error rates of each setting over ``replicates`` simulated studies (``large`` of them for the
    settings with 15 or more seed pairs, the slowest), and the wall time each took; ``jobs`` processes."""
    n = [replicates if large is None or p * f < 15 else large for p, f, *_ in settings]
    args = (settings, n, [n_boot] * len(settings), [seed] * len(settings))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            out = list(pool.map(_setting, *args))
    else:
        out = list(map(_setting, *args))
    df = pd.DataFrame(out)
    return df[[c for c in df.columns if c != "s"] + ["s"]]


def probe_hits(rng: np.random.Generator, n_subjects: int, accuracy: float = 0.75,
               spread: float = 8.0) -> list[np.ndarray]:
    """Held-out subjects' pair hits: 2-5 visits each (1-10 pairs), each subject's accuracy drawn from
    Beta with mean ``accuracy`` and concentration ``spread`` (pairs of a subject share its brain)."""
    visits = rng.integers(2, 6, n_subjects)
    p = rng.beta(accuracy * spread, (1 - accuracy) * spread, n_subjects)
    return [(rng.random(v * (v - 1) // 2) < q).astype(np.float64) for v, q in zip(visits, p)]


def paired_probe_hits(rng: np.random.Generator, n_subjects: int, accuracy: tuple[float, float] = (0.8, 0.75),
                      spread: float = 8.0) -> list[np.ndarray]:
    """Per subject, per pair, reader a's hit minus reader b's on the same pairs: each subject's accuracy
    for each reader from a Beta (means ``accuracy``), and one easiness per pair that both readers share
    (a pair one gets right the other tends to: the readers are correlated, as on the same scans)."""
    visits = rng.integers(2, 6, n_subjects)
    qa = rng.beta(accuracy[0] * spread, (1 - accuracy[0]) * spread, n_subjects)
    qb = rng.beta(accuracy[1] * spread, (1 - accuracy[1]) * spread, n_subjects)
    out = []
    for v, a, b in zip(visits, qa, qb):
        u = rng.random(v * (v - 1) // 2)
        out.append((u < a).astype(np.float64) - (u < b).astype(np.float64))
    return out


def probe_coverage(sizes: tuple[int, ...], replicates: int, n_boot: int, seed: int = 0,
                   accuracy: float = 0.75, pair: tuple[float, float] = (0.8, 0.75)) -> pd.DataFrame:
    """Coverage of the order probe's 95% intervals: of the population accuracy (pair counts are independent
    of a subject's accuracy, so it is the mean accuracy), and of the difference between two readers on the
    same pairs; and how often there is none."""
    out = []
    for n in sizes:
        rng = np.random.default_rng([seed, 29, n])
        covered = missing = covered_diff = 0
        for r in range(replicates):
            _, _, interval = order_probe_interval(probe_hits(rng, n, accuracy), n_boot, r)
            _, _, diff = order_probe_interval(paired_probe_hits(rng, n, pair), n_boot, r, bounds=(-1.0, 1.0))
            if interval is None or diff is None:
                missing += 1
            else:
                covered += interval[0] <= accuracy <= interval[1]
                covered_diff += diff[0] <= pair[0] - pair[1] <= diff[1]
        kept = max(replicates - missing, 1)
        out.append({"subjects": n, "replicates": replicates, "coverage": covered / kept,
                    "coverage, paired difference": covered_diff / kept, "no interval": missing / replicates})
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame) -> str:
    cells = [["–" if isinstance(v, float) and np.isnan(v) else f"{v:.3f}" if isinstance(v, float) else str(v)
              for v in row] for row in df.itertuples(index=False)]
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns),
                      *("| " + " | ".join(c) + " |" for c in cells)])


COLUMNS = {"reject0": "type-I (p<0.05, Δ=0)", "claim0": "false claim (Holm+simult., Δ=0)",
           "cover": "coverage 95%", "cover0": "coverage 95% at Δ=0",
           "cover_population": "coverage 95% of Δ over pretraining runs", "simultaneous": "simult. coverage (3 tasks)",
           "power0.05": "power Δ=0.05", "power0.1": "power Δ=0.10", "claim0.05": "claimed Δ=0.05",
           "claim0.1": "claimed Δ=0.10",
           "independent_reject0": "type-I, runs as independent seeds",
           "independent_cover": "coverage 95%, runs as independent seeds"}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=_positive, default=1000, help="simulated studies per setting")
    parser.add_argument("--large-replicates", type=_positive, help="replicates of the settings with 15 or more seed "
                        "pairs (the slowest; default: --replicates)")
    parser.add_argument("--n-boot", type=_positive, default=300, help="bootstrap resamples per comparison")
    parser.add_argument("--quick", action="store_true",
                        help=f"only {QUICK} (pretrain runs, finetune seeds, subjects per class, subject x init sd)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=_positive, default=1, help="settings run in parallel processes (same table)")
    args = parser.parse_args()
    start = time.perf_counter()
    settings = QUICK if args.quick else GRID
    table = calibrate(settings, args.replicates, args.n_boot, args.seed, args.large_replicates,
                      args.jobs).rename(columns=COLUMNS)
    print(f"## AUC difference: paired bootstrap over test subjects and seeds, n_boot {args.n_boot}, "
          f"nominal 5% / 95%, reference AUC {REFERENCE_AUC}\n")
    print(markdown(table))
    probe = probe_coverage(PROBE_SUBJECTS, args.replicates, args.n_boot, args.seed)
    print(f"\n## Order probe: 95% intervals over subjects, n_boot {args.n_boot}\n")
    print(markdown(probe))
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
