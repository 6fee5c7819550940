"""Subject-level splits and nested label-fraction subsets.

Why: a subject's scans are strongly correlated, so any split below the subject leaks. Splits are
stratified on what the tasks need (every task and class a subject has samples of, and its
diagnostic trajectory), so that small cohorts still get both classes of every task in every split;
label fractions are prefixes of one seeded permutation per stratum, which makes them nested by
construction.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator keyed by seeds and names, independent of call order."""
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys])


def split_subjects(labels: dict[str, set[str]], val: float, test: float, seed: int) -> pd.Series:
    """Assign each subject (key of ``labels``) to train/val/test by iterative stratification.

    ``labels`` gives each subject the strata it belongs to, several at once (e.g. "base:MCI/converter",
    "fut_mci_ad:1", "dx_cn_mci:0": every task and class it has samples of). Plain stratification
    on one combined key cannot serve seven tasks on a small cohort (most combinations hold one
    subject), so the rarest stratum is placed first, each of its subjects going where that stratum
    is most wanted (then where the split as a whole is most wanted), as in multi-label iterative
    stratification (Sechidis et al., 2011). A stratum of at least three subjects wants at least one
    in each split, so that every task's validation and test splits hold both classes whenever the
    cohort allows; a final pass moves a subject where that still failed.
    """
    rng = _rng(seed, "split")
    subjects = sorted(labels)
    shares = {"train": 1.0 - val - test, "val": val, "test": test}
    members: dict[str, list[str]] = {}
    for sub in subjects:
        for lab in labels[sub]:
            members.setdefault(lab, []).append(sub)
    want = {name: {} for name in shares}
    for lab, subs in members.items():
        n = len(subs)
        for name in ("val", "test"):
            want[name][lab] = max(1.0, n * shares[name]) if n >= 3 and shares[name] > 0 else n * shares[name]
        want["train"][lab] = n - want["val"][lab] - want["test"][lab]
    total = {name: len(subjects) * share for name, share in shares.items()}
    out: dict[str, str] = {}
    order = {sub: k for k, sub in enumerate(subjects[i] for i in rng.permutation(len(subjects)))}

    def place(sub: str, name: str) -> None:
        out[sub] = name
        total[name] -= 1
        for lab in labels[sub]:
            want[name][lab] -= 1

    left = set(subjects)
    while left:
        remaining = {lab: [s for s in subs if s in left] for lab, subs in members.items()}
        remaining = {lab: subs for lab, subs in remaining.items() if subs}
        if not remaining:
            for sub in sorted(left, key=order.get):
                place(sub, max(shares, key=lambda name: (total[name], name == "train")))
            break
        lab = min(remaining, key=lambda k: (len(remaining[k]), k))
        for sub in sorted(remaining[lab], key=order.get):
            place(sub, max(shares, key=lambda name: (want[name][lab], total[name], name == "train")))
            left.discard(sub)
    _repair(out, labels, members)
    return pd.Series(out, name="split", dtype=object).rename_axis("participant_id").sort_index()


def _repair(out: dict[str, str], labels: dict[str, set[str]], members: dict[str, list[str]]) -> None:
    """Give val and test one subject of every stratum of >= 3 subjects that they still lack, taken from
    train where train keeps at least one of each of the mover's strata (a swap sends back a subject
    whose strata the split can spare, so that the split sizes hold)."""
    def count(name: str, lab: str) -> int:
        return sum(out[s] == name for s in members[lab])

    for lab in sorted(members):
        if len(members[lab]) < 3:
            continue
        for name in ("test", "val"):
            if count(name, lab):
                continue
            movers = [s for s in members[lab] if out[s] == "train"
                      and all(count("train", other) > 1 for other in labels[s])]
            if not movers:
                continue
            mover = movers[0]
            out[mover] = name
            back = [s for s in sorted(out) if out[s] == name and s != mover
                    and all(count(name, other) > 1 for other in labels[s])]
            if back:
                out[back[0]] = "train"


def label_fractions(samples: pd.DataFrame, fractions: list[float], seed: int, task: str) -> dict[float, set[str]]:
    """Nested subject subsets of ``samples`` (training rows of one task) for each label fraction.

    Subjects are stratified by their labels (negative only, positive only, both); a fraction f takes
    ceil(f * n) subjects of each stratum from one seeded permutation, so smaller fractions are
    subsets of larger ones and every non-empty stratum keeps at least one subject.
    """
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"{task}: label fractions must be in (0, 1], got {bad}")
    per_subject = samples.groupby("participant_id")["label"].agg(
        lambda s: "both" if s.nunique() > 1 else str(s.iloc[0]))
    rng = _rng(seed, "fraction", task)
    chosen: dict[float, set[str]] = {f: set() for f in fractions}
    for stratum in sorted(per_subject.unique()):
        members = sorted(per_subject.index[per_subject == stratum])
        order = [members[i] for i in rng.permutation(len(members))]
        for f in fractions:
            chosen[f].update(order[: math.ceil(f * len(order) - 1e-9)])
    return chosen
