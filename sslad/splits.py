"""Subject-level splits and nested label-fraction subsets.

Why: a subject's scans are strongly correlated, so any split below the subject leaks. Splits are
stratified so that small cohorts still get every diagnosis and trajectory in every split; label
fractions are prefixes of one seeded permutation per stratum, which makes them nested by construction.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pandas as pd


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator keyed by seeds and names, independent of call order."""
    return np.random.default_rng([k if isinstance(k, int) else zlib.crc32(k.encode()) for k in keys])


def split_subjects(strata: pd.Series, val: float, test: float, seed: int) -> pd.Series:
    """Assign each subject (index of ``strata``) to train/val/test, stratified by the series values.

    Quotas carry over from one stratum to the next (largest-remainder style), so the totals match the
    requested fractions even when every stratum is small.
    """
    rng = _rng(seed, "split")
    out = pd.Series("train", index=strata.index, name="split", dtype=object)
    want = {"test": 0.0, "val": 0.0}
    got = {"test": 0, "val": 0}
    for _, members in sorted(strata.groupby(strata).groups.items(), key=lambda kv: str(kv[0])):
        members = sorted(members)
        order = [members[i] for i in rng.permutation(len(members))]
        pos = 0
        for name, frac in (("test", test), ("val", val)):
            want[name] += len(members) * frac
            n = max(0, min(len(order) - pos, int(math.floor(want[name] + 0.5)) - got[name]))
            out.loc[order[pos:pos + n]] = name
            got[name] += n
            pos += n
    return out.sort_index()


def label_fractions(samples: pd.DataFrame, fractions: list[float], seed: int, task: str) -> dict[float, set[str]]:
    """Nested subject subsets of ``samples`` (training rows of one task) for each label fraction.

    Subjects are stratified by their labels (negative only, positive only, both); a fraction f takes
    ceil(f * n) subjects of each stratum from one seeded permutation, so smaller fractions are
    subsets of larger ones and every non-empty stratum keeps at least one subject.
    """
    per_subject = samples.groupby("participant_id")["label"].agg(lambda s: "both" if s.nunique() > 1 else str(s.iloc[0]))
    rng = _rng(seed, "fraction", task)
    chosen: dict[float, set[str]] = {f: set() for f in fractions}
    for stratum in sorted(per_subject.unique()):
        members = sorted(per_subject.index[per_subject == stratum])
        order = [members[i] for i in rng.permutation(len(members))]
        for f in fractions:
            chosen[f].update(order[: math.ceil(f * len(order) - 1e-9)])
    return chosen
