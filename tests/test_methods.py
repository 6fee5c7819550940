"""Self-supervised methods, the temporal aggregator and the batched augmentations, on tiny volumes.

Everything runs on the CPU in seconds: encoders are ResNet-10s a few channels wide on 16^3-20^3
volumes. The one learning test (TOP on simulated progressive atrophy) trains for a few dozen steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslad.augment import AugmentParams, _theta, apply, draw, masked_zscore
from sslad.methods import Batch, build, sequence_embeddings
from sslad.methods.masked_temporal import hidden_sets
from sslad.methods.simclr import nt_xent
from sslad.methods.temporal_contrastive import ordered_pairs, seen_visits
from sslad.methods.temporal_order import OrderHead, order_pairs, undated_pairs
from sslad.networks import TemporalAggregator, build_aggregator, build_encoder, feature_dim
from sslad.pretrain_data import ScanSet, epoch_batches, step_batch, units


def tiny_arch(norm: str = "batch", temporal: str = "attention", stem_stride: int = 2) -> dict:
    return {"depth": 10, "widths": [8, 8, 16, 16], "stem_kernel": 3, "stem_stride": stem_stride,
            "max_pool": False, "norm": norm, "temporal": temporal, "temporal_layers": 1, "temporal_heads": 2}


MILD = {"min_crop": 0.9, "p_rotate": 0.5, "max_rotate_deg": 5, "p_flip": 0.5, "p_gamma": 0.5, "gamma": [0.9, 1.1],
        "p_shift": 0.0, "shift": 0.0}
NONE = {"min_crop": 1.0, "p_rotate": 0.0, "max_rotate_deg": 0, "p_flip": 0.0, "p_gamma": 0.0, "gamma": [1.0, 1.0],
        "p_shift": 0.0, "shift": 0.0}
STRONG = {"min_crop": 0.6, "p_rotate": 1.0, "max_rotate_deg": 15, "p_flip": 0.5, "p_gamma": 1.0, "gamma": [0.7, 1.5],
          "p_shift": 0.0, "shift": 0.0}
HP = {"simclr": {"temperature": 0.5, "projection_dim": 8, "center": True},
      "top": {"n_scans": 3, "hidden": 16},
      "tcl": {"n_scans": 3, "temperature": 0.5, "projection_dim": 8},
      "tmp": {"n_scans": 4, "temperature": 0.2, "projection_dim": 8},
      "topc": {"n_scans": 3, "hidden": 16, "temperature": 0.5, "projection_dim": 8, "spatial_weight": 1.0,
               "center": False}}


def atrophy_scans(n_subjects: int, n_visits: int, size: int, seed: int, growth: float = 0.08) -> ScanSet:
    """Simulated progressive atrophy: a dark sphere ("ventricles", radius r0 + growth * months, r0 ~
    U(2.5, 4)) at the centre of a bright ellipsoid ("brain"), plus noise; masked z-scored with
    background 0 as preprocessing leaves them. Visits at random months in [0, 48]."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    g = np.stack(np.meshgrid(*[np.arange(size) - c] * 3, indexing="ij"))
    semi = size * np.array([0.45, 0.42, 0.40])
    brain = ((g / semi[:, None, None, None]) ** 2).sum(0) <= 1
    dist = np.sqrt((g ** 2).sum(0))
    mask = torch.from_numpy(brain).float()[None, None]
    vols, months, subjects, keys = [], [], [], []
    for s in range(n_subjects):
        r0 = rng.uniform(2.5, 4.0)
        rows = []
        for v, m in enumerate(np.sort(rng.uniform(0, 48, n_visits))):
            r = r0 + growth * m
            img = 1.0 - 0.8 / (1 + np.exp(-(r - dist) / 0.5)) + rng.normal(0, 0.1, dist.shape)
            x = masked_zscore(torch.from_numpy(img * brain).float()[None, None], mask)[0]
            rows.append(len(vols))
            vols.append(x)
            months.append(m)
            keys.append((f"sub-{s:02d}", f"ses-{v}"))
        subjects.append(np.array(rows))
    return ScanSet(torch.stack(vols), np.array(months), subjects, keys)


def method_batch(method, scans: ScanSet, chosen: list[np.ndarray], aug: dict, seed: int, epoch: int = 0,
                 step: int = 0) -> Batch:
    """A Batch built exactly as sslad/pretrain.py builds one (single process), spatial scans from every scan."""
    settings = {"train": {"seed": seed}, "hp": {"augment": "a", "spatial_augment": "a"}, "augment": {"a": aug}}
    return step_batch(scans, scans.volumes, chosen, np.arange(len(scans.keys)), method.sampling, settings, epoch, step)


# ----------------------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("depth,layers", [(10, [1, 1, 1, 1]), (18, [2, 2, 2, 2])])
def test_encoder_is_monai_resnet(depth, layers):
    """Same seed, same weights and outputs as MONAI's ResNet: its checkpoints load unchanged."""
    from monai.networks.nets.resnet import ResNet

    torch.manual_seed(0)
    ours = build_encoder({"depth": depth, "widths": [8, 8, 16, 16], "stem_kernel": 7, "stem_stride": 2,
                          "max_pool": True, "norm": "batch"})
    torch.manual_seed(0)
    ref = ResNet("basic", layers, [8, 8, 16, 16], spatial_dims=3, n_input_channels=1, conv1_t_size=7,
                 conv1_t_stride=2, feed_forward=False)
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.randn(2, 1, 20, 24, 20)
    torch.testing.assert_close(ours(x), ref(x))


def test_encoder_defaults_are_neuro_simclr_resnet18():
    from monai.networks.nets.resnet import resnet18

    from sslad.networks import ResNetEncoder

    ours = ResNetEncoder().state_dict()
    ref = resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=1, feed_forward=False).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}
    assert ours["layer4.1.bn2.weight"].shape == (512,)  # 512-d features


@pytest.mark.parametrize("norm,kind", [("group", torch.nn.GroupNorm), ("instance", torch.nn.InstanceNorm3d)])
def test_encoder_norm_applies_to_every_stage(norm, kind):
    encoder = build_encoder({**tiny_arch(norm)})
    norms = [m for m in encoder.modules() if isinstance(m, (torch.nn.BatchNorm3d, torch.nn.GroupNorm,
                                                            torch.nn.InstanceNorm3d))]
    assert norms and all(isinstance(m, kind) for m in norms)


@pytest.mark.parametrize("n", [2, 3])
def test_nt_xent_hand_computed(n):
    t = 0.5
    z = torch.eye(n, 4)  # orthogonal unit vectors
    # as they are (the standard loss): each anchor has its positive at similarity 1/T, 2N-2 negatives at 0
    plain = math.log(1 + (2 * n - 2) * math.exp(0.0) / math.exp(1 / t))
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(plain, rel=1e-5)
    # centred on their mean (1/n) sum e_j, two different ones have cosine (-1/n) / (1 - 1/n) = -1/(n-1):
    # each anchor has its positive at similarity 1/T and 2N-2 negatives at -1/((n-1)T)
    neg = -1 / (n - 1)
    expected = math.log(1 + (2 * n - 2) * math.exp(neg / t) / math.exp(1 / t))
    assert float(nt_xent(z, z.clone(), t, center=True)) == pytest.approx(expected, rel=1e-5)
    # by hand from the definition, as a cross-check of the formula above
    c = torch.cat([z, z]) - torch.cat([z, z]).mean(0)
    c = c / c.norm(dim=1, keepdim=True)
    sim = (c @ c.T / t).exp()
    anchors = [-math.log(sim[i, (i + n) % (2 * n)] / (sim[i].sum() - sim[i, i])) for i in range(2 * n)]
    assert float(nt_xent(z, z.clone(), t, center=True)) == pytest.approx(sum(anchors) / (2 * n), rel=1e-5)


@pytest.mark.parametrize("n,t", [(2, 0.5), (6, 0.1), (24, 0.5), (64, 0.07)])
def test_nt_xent_without_centring_is_the_library_ntxent(n, t):
    """Uncentred, nt_xent is SimCLR's NT-Xent as pytorch-metric-learning computes it (each view's
    positive the other view of its scan, every other view a negative, mean over the 2N anchors); and
    with ``groups``, the same loss with a subject's other scans taken out of its negatives."""
    from pytorch_metric_learning.losses import NTXentLoss

    gen = torch.Generator().manual_seed(n)
    z1 = torch.randn(n, 16, generator=gen)
    z2 = z1 + 0.7 * torch.randn(n, 16, generator=gen)  # correlated views: a loss well below chance
    reference = NTXentLoss(temperature=t)
    labels = torch.arange(n).repeat(2)
    ours = nt_xent(z1, z2, t)
    assert abs(float(ours) - float(reference(torch.cat([z1, z2]), labels))) < 1e-5
    assert abs(float(nt_xent(z1, z2, t, center=True)) - float(ours)) > 1e-3  # centring is really off
    # groups: pairs spelled out for the library (a1, p: positives; a2, n: negatives), leaving out
    # every view of another scan of the anchor's subject
    groups = torch.randint(0, max(2, n // 2), (n,), generator=gen)
    g = groups.repeat(2)
    a1 = torch.arange(2 * n)
    p = (a1 + n) % (2 * n)
    a2, neg = (g[:, None] != g[None, :]).nonzero(as_tuple=True)
    expected = reference(torch.cat([z1, z2]), indices_tuple=(a1, p, a2, neg))
    assert abs(float(nt_xent(z1, z2, t, groups)) - float(expected)) < 1e-5


def test_nt_xent_centres_a_common_component_away():
    """Nearly parallel projections (a large shared part, as a group-norm encoder's at first) still
    give a loss that tells the right pairing from a wrong one when centred; uncentred, every logit
    is alike and both pairings cost about log(2N - 1)."""
    torch.manual_seed(0)
    z = torch.randn(4, 8) * 0.05 + 3.0
    wrong_order = z[torch.tensor([1, 2, 3, 0])]
    right, wrong = nt_xent(z, z.clone(), 0.5, center=True), nt_xent(z, wrong_order, 0.5, center=True)
    assert float(wrong) > float(right) + 1.0
    right, wrong = nt_xent(z, z.clone(), 0.5), nt_xent(z, wrong_order, 0.5)
    assert abs(float(wrong) - float(right)) < 0.01 and float(right) == pytest.approx(math.log(7), abs=0.01)


@pytest.mark.parametrize("name", ["simclr", "topc"])
def test_simclr_center_setting_reaches_nt_xent(name, small_scans):
    """``center`` (simclr's and topc's settings, required) decides nt_xent's centring, whatever the norm."""
    vols = small_scans.volumes[:6]
    subjects = torch.arange(6)
    views = [draw(6, MILD, torch.Generator().manual_seed(k)) for k in (1, 2)]
    losses = {}
    for norm in ("group", "batch"):
        for center in (True, False):
            torch.manual_seed(0)
            arch = tiny_arch(norm)
            hp = {**HP[name], "center": center}
            method = build(name, build_encoder(arch), build_aggregator(arch), feature_dim(arch), hp)
            spatial = method if name == "simclr" else method.spatial
            assert spatial.center == center, (norm, center)
            spatial.eval()  # batch norm with running statistics: the same encodings on every call
            with torch.no_grad():
                z1 = spatial.projector(spatial.encoder(apply(vols, views[0])))
                z2 = spatial.projector(spatial.encoder(apply(vols, views[1])))
                loss = spatial.spatial_loss(vols, views[0], views[1], subjects)
                assert float(loss) == pytest.approx(float(nt_xent(z1, z2, HP[name]["temperature"], subjects,
                                                                  center=center)), rel=1e-6)
                losses[norm, center] = float(loss)
    assert losses["group", True] != pytest.approx(losses["group", False], rel=1e-3)


def test_nt_xent_wrong_pairing_costs_more_and_scale_is_irrelevant():
    torch.manual_seed(0)
    n, t = 3, 0.5
    z = torch.eye(n, 5)
    good = nt_xent(z, z.clone(), t)
    perm = torch.tensor([1, 2, 0])
    assert float(nt_xent(z, z[perm], t)) > float(good) + 1.0
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    base = nt_xent(z1, z2, 0.3)
    s1, s2 = torch.rand(6, 1) * 10 + 0.1, torch.rand(6, 1) * 10 + 0.1
    assert torch.allclose(nt_xent(z1 * s1, z2 * s2, 0.3), base, atol=1e-5)
    # symmetric in the two views
    assert torch.allclose(nt_xent(z2, z1, 0.3), base, atol=1e-5)


# ------------------------------------------------------------------------------------ order pairs


def _pairs(months, valid):
    rows, i, j, label = order_pairs(torch.tensor(months, dtype=torch.float32), torch.tensor(valid))
    return sorted(zip(rows.tolist(), i.tolist(), j.tolist(), label.tolist()))


def test_order_pairs_all_valid():
    assert _pairs([[0.0, 12.0, 6.0]], [[True, True, True]]) == [(0, 0, 1, 1.0), (0, 0, 2, 1.0), (0, 1, 2, 0.0)]


def test_order_pairs_skip_padding_and_ties():
    months = [[0.0, 12.0, 6.0, 99.0], [30.0, 5.0, 5.0, 0.0], [7.0, 0.0, 3.0, 3.0]]
    valid = [[True, False, True, True], [True, True, True, False], [False, True, True, True]]
    got = _pairs(months, valid)
    assert got == [(0, 0, 2, 1.0), (0, 0, 3, 1.0), (0, 2, 3, 1.0),
                   (1, 0, 1, 0.0), (1, 0, 2, 0.0),             # (1, 2) tied at 5 months
                   (2, 1, 2, 1.0), (2, 1, 3, 1.0)]             # (2, 3) tied, position 0 padding
    for r, i, j, _ in got:
        assert valid[r][i] and valid[r][j] and i < j


@pytest.mark.parametrize("kind", ["attention", "mean"])
def test_order_head_is_antisymmetric_and_reads_the_pair_by_content_alone(kind):
    # each pair is scored in its sequence with both scans undated: which came first can only come
    # from their contents, never from their own times or their positions in the sequence
    agg, head = _aggregator(kind), OrderHead(16, 8)
    gen = torch.Generator().manual_seed(3)
    seq = torch.randn(4, 4, 16, generator=gen)
    months = torch.tensor([[0.0, 12.0, 6.0, 30.0], [5.0, 1.0, 9.0, 0.0], [3.0, 2.0, 1.0, 7.0], [0.0, 40.0, 20.0, 0.0]])
    valid = torch.tensor([[True] * 4, [True, True, True, False], [True] * 4, [True, True, True, False]])
    rows, i, j, _ = order_pairs(months, valid)
    p = torch.arange(len(rows))

    def scores(seq_, months_):
        first, second = undated_pairs(agg, seq_[rows], months_[rows], valid[rows], i, j)
        return head.score(first).squeeze(-1), head.score(second).squeeze(-1)

    s_i, s_j = scores(seq, months)
    # the pair's two times swapped: nothing changes (its own times never reach its scores)
    swapped_times = months[rows].clone()
    swapped_times[p, i], swapped_times[p, j] = months[rows, j], months[rows, i]
    first, second = undated_pairs(agg, seq[rows], swapped_times, valid[rows], i, j)
    assert torch.allclose(head.score(first).squeeze(-1), s_i, atol=1e-5)
    assert torch.allclose(head.score(second).squeeze(-1), s_j, atol=1e-5)
    # the pair's two contents swapped: the scores swap, the logit s_j - s_i flips sign
    swapped = seq[rows].clone()
    swapped[p, i], swapped[p, j] = seq[rows, j], seq[rows, i]
    first, second = undated_pairs(agg, swapped, months[rows], valid[rows], i, j)
    assert torch.allclose(head.score(first).squeeze(-1), s_j, atol=1e-5)
    assert torch.allclose(head.score(second).squeeze(-1), s_i, atol=1e-5)
    # two identical scans: logit 0, whatever the weights and the other scans' times
    same = seq[rows].clone()
    same[p, j] = same[p, i]
    first, second = undated_pairs(agg, same, months[rows], valid[rows], i, j)
    assert torch.allclose(head.score(first), head.score(second), atol=1e-6)
    # the other scans' content and times do reach the pair's scores (attention across scans, time
    # encoding): a third scan changed, the scores of the pairs without it change
    other = seq.clone()
    other[:, 3] += torch.randn(4, 16, generator=gen)
    moved = scores(other, months)[0] - s_i
    moved_t = scores(seq, months + 7.0 * (torch.arange(4) == 3))[0] - s_i
    third = valid[rows, 3] & (i != 3) & (j != 3)
    assert third.any() and (moved[third].abs() > 1e-6).all() and (moved_t[third].abs() > 1e-6).all()
    # reversing the time axis reverses every label; permuting positions (with their times) changes nothing
    loss, acc = head(agg, seq, months, valid)
    _, acc_rev = head(agg, seq, -months, valid)
    assert float(acc) + float(acc_rev) == pytest.approx(1.0)
    perm = torch.tensor([2, 0, 3, 1])
    loss_p, acc_p = head(agg, seq[:, perm], months[:, perm], valid[:, perm])
    assert torch.allclose(loss, loss_p, atol=1e-5) and float(acc) == pytest.approx(float(acc_p))


# ----------------------------------------------------------------------------------- TMP helpers


def test_hidden_sets_leave_context_and_hide_two_or_more_visits_at_different_times():
    valid = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, False, False],
                          [True, True, True, False]])
    months = torch.tensor([[0.0, 6, 12, 18], [0, 6, 12, 0], [0, 6, 0, 0], [0, 6, 6, 0]])
    rows, at, hidden = hidden_sets(valid, months)
    real = valid[rows]
    assert hidden.dtype == torch.bool and hidden[torch.arange(len(at)), at].all()
    assert not (hidden & ~real).any() and (hidden.sum(1) >= 2).all() and (real & ~hidden).any(1).all()
    # per sequence: 4 visits, splits hiding 2 (6, 2 queries each) or 3 (4, 3 each); 3 visits: 3 splits
    # of 2; 2 visits: none; 3 visits of which two share a time: none (a hidden one of the two would
    # have its twin hidden too, or in the context, where its content gives the hidden one away)
    assert torch.bincount(rows, minlength=4).tolist() == [24, 6, 0, 0]
    # at most two hidden (the diagnostic's retrieval): 6 and 3 splits of 2 queries
    assert torch.bincount(hidden_sets(valid, months, most=2)[0], minlength=4).tolist() == [12, 6, 0, 0]
    for q in range(len(rows)):
        t = months[rows[q]][hidden[q]]
        assert len(t.unique()) == len(t)
    # every split's queries are each of its hidden visits once
    splits = {(int(r), tuple(h.tolist())) for r, h in zip(rows, hidden)}
    assert sum(sum(h) for _, h in splits) == len(rows)


def _by_hand(name: str, scans: ScanSet, **hp) -> tuple:
    """A tiny method's loss on one batch of ``scans``, the batch, its encodings, the method, and the
    InfoNCE term of one query computed by hand over the candidates it is given (``hp``: settings
    other than HP's)."""
    torch.manual_seed(0)
    arch = tiny_arch(norm="group")
    method = build(name, build_encoder(arch), build_aggregator(arch), feature_dim(arch), {**HP[name], **hp})
    batch = method_batch(method, scans, scans.subjects, NONE, seed=0)
    loss, _ = method(batch)
    h = method.encoder(apply(batch.volumes, batch.views[0]))
    keys = F.normalize(method.key(h), dim=1)

    def term(query: torch.Tensor, candidates: list[int], right: int) -> torch.Tensor:
        sims = F.normalize(query, dim=0) @ keys[candidates].T / HP[name]["temperature"]
        return torch.logsumexp(sims, 0) - sims[candidates.index(right)]

    return loss, batch, h, method, term


@torch.no_grad()
def test_tmp_never_offers_a_query_its_own_context_as_candidate():
    # the loss equals InfoNCE over every scan of the batch except the visits the query was predicted
    # from: a seen visit could be ruled out by its content alone, without time. Its subject's
    # candidates are exactly the visits hidden with it (two or three of four), the target among them
    loss, batch, h, method, term = _by_hand("tmp", atrophy_scans(3, 4, 16, seed=3))
    rows, at, hidden = hidden_sets(batch.valid, batch.months)
    pred = method.predict(sequence_embeddings(h, batch.index)[rows], batch.months[rows], batch.valid[rows],
                          hidden, at)
    terms, with_context = [], []
    for q in range(len(rows)):
        seq = batch.index[rows[q]]
        seen = set(seq[batch.valid[rows[q]] & ~hidden[q]].tolist())
        candidates = [c for c in range(len(h)) if c not in seen]
        own = [c for c in candidates if c in set(seq.tolist())]  # its subject's candidates
        assert own == sorted(seq[hidden[q]].tolist()) and len(own) in (2, 3)
        target = int(seq[at[q]])
        terms.append(term(pred[q], candidates, target))
        with_context.append(term(pred[q], list(range(len(h))), target))
    assert len(terms) == 3 * 24 and float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    # the test tells the two apart: with the context among the candidates the loss would differ
    assert abs(float(torch.stack(with_context).mean()) - float(loss)) > 1e-3


def _tcl_queries(batch: Batch) -> list[tuple[int, int, int, list[int]]]:
    """tcl's queries by their definition, independently of the code under test: (sequence, i, j, the
    batch rows of its subject it may pick from) for each ordered pair of real visits at different
    times whose subject has a candidate besides the target (its visits at other times than i's)."""
    out = []
    for r in range(batch.index.shape[0]):
        real = [p for p in range(batch.index.shape[1]) if batch.valid[r, p]]
        for i in real:
            own = [p for p in real if batch.months[r, p] != batch.months[r, i]]
            if len(own) >= 2:
                out += [(r, i, j, [int(batch.index[r, p]) for p in own]) for j in own]
    return out


def _mixed_visits(seed: int) -> ScanSet:
    """Four subjects: four visits; two; four of which the middle two share a day; three."""
    scans = atrophy_scans(4, 4, 16, seed=seed)
    scans.subjects[1], scans.subjects[3] = scans.subjects[1][:2], scans.subjects[3][:3]
    twin = scans.subjects[2]
    scans.months[twin[2]] = scans.months[twin[1]]
    return scans


def test_tcl_queries_have_a_candidate_of_their_subject_besides_the_target():
    # identity alone must not pick the target: a query needs another visit of its subject among its
    # candidates, which are its subject's visits at other times than its own scan's (the scan, or one
    # of the same day, could be ruled out by its content)
    months = torch.tensor([[0.0, 12, 0, 0], [0, 12, 24, 0], [0, 12, 12, 0], [0, 0, 12, 0], [0, 6, 6, 12],
                           [5, 0, 9, 0]])
    valid = torch.tensor([[True, True, False, False], [True, True, True, False], [True, True, True, False],
                          [True, True, True, False], [True, True, True, True], [True, False, True, False]])
    rows, i, j = ordered_pairs(months, valid)
    got = sorted(zip(rows.tolist(), i.tolist(), j.tolist()))
    assert got == [(1, a, b) for a in range(3) for b in range(3) if a != b] + [
        (2, 0, 1), (2, 0, 2),                        # visits 1 and 2 share a day: only 0 makes queries
        (3, 2, 0), (3, 2, 1),                        # 0 and 1 share a day: only 2
        (4, 0, 1), (4, 0, 2), (4, 0, 3), (4, 1, 0), (4, 1, 3), (4, 2, 0), (4, 2, 3), (4, 3, 0), (4, 3, 1),
        (4, 3, 2)]                                   # two visits (rows 0 and 5): none
    q, position = seen_visits(months, valid, rows, i)  # no candidates: the visits at the query's time
    seen = {n: sorted(position[q == n].tolist()) for n in range(len(rows))}
    for n, (r, a, b) in enumerate(zip(rows.tolist(), i.tolist(), j.tolist())):
        assert seen[n] == [p for p in range(4) if valid[r, p] and months[r, p] == months[r, a]]
        own = [p for p in range(4) if valid[r, p] and p not in seen[n]]
        assert b in own and len(own) >= 2 and a not in own
    # the diagnostic's retrieval asks the same queries of a subject, among the same candidates
    torch.manual_seed(0)
    arch = tiny_arch(norm="group")
    method = build("tcl", build_encoder(arch), build_aggregator(arch), feature_dim(arch), HP["tcl"])
    h = torch.randn(4, feature_dim(arch))
    assert method.retrieval(h[:2], torch.tensor([0.0, 12])) == []
    out = method.retrieval(h, torch.tensor([0.0, 6, 6, 12]))
    assert [len(sims) for sims, _ in out] == [3, 3, 3, 2, 2, 2, 2, 3, 3, 3]
    assert [target for _, target in out] == [0, 1, 2, 0, 1, 0, 1, 0, 1, 2]


@torch.no_grad()
def test_tcl_never_offers_a_query_its_own_scan_as_candidate():
    # InfoNCE over every scan of the batch but its subject's scans at the query's time (its own scan,
    # and a scan of the same day), for exactly the queries with a candidate of the subject besides the
    # target: of four visits 12 (3 candidates of the subject each), of two none, of four with two on
    # one day 10 (those two's queries: 2 candidates, their twin none), of three 6 (2 candidates)
    loss, batch, h, method, term = _by_hand("tcl", _mixed_visits(seed=4), n_scans=4)
    queries = _tcl_queries(batch)
    assert sorted(len(own) for *_, own in queries) == [2] * (4 + 6) + [3] * (12 + 6)
    assert len(queries) == 12 + 0 + 10 + 6 == len(ordered_pairs(batch.months, batch.valid)[0])
    seq = sequence_embeddings(h, batch.index)
    terms, with_own = [], []
    for r, i, j, own in queries:
        q = method.carry(seq[r:r + 1, i], batch.months[r:r + 1, i], batch.months[r:r + 1, j])[0]
        subject = set(batch.index[r][batch.valid[r]].tolist())
        candidates = [c for c in range(len(h)) if c not in subject or c in own]
        terms.append(term(q, candidates, int(batch.index[r, j])))
        with_own.append(term(q, [c for c in range(len(h)) if c not in subject or c in own
                                 or c == int(batch.index[r, i])], int(batch.index[r, j])))
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    # the test tells the two apart: with its own scan among the candidates the loss would differ
    assert abs(float(torch.stack(with_own).mean()) - float(loss)) > 1e-3


# ---------------------------------------------------------------------------- temporal aggregator


def _aggregator(kind: str) -> TemporalAggregator:
    torch.manual_seed(0)
    agg = TemporalAggregator(16, kind, layers=1, heads=2)
    with torch.no_grad():  # zeros at init would make the CLS / mask-token checks vacuous
        agg.mask_token.normal_()
        if kind == "attention":
            agg.cls.normal_()
    return agg


@pytest.mark.parametrize("kind", ["attention", "mean"])
@pytest.mark.parametrize("mode", ["train", "eval", "eval_no_grad"])
def test_aggregator_padding_invariance(kind, mode):
    agg = _aggregator(kind)
    agg.train(mode == "train")
    gen = torch.Generator().manual_seed(1)
    b, k, pad = 4, 2, 3
    emb = torch.randn(b, k, 16, generator=gen)
    months = torch.rand(b, k, generator=gen) * 48
    valid = torch.ones(b, k, dtype=torch.bool)
    garbage = torch.randn(b, pad, 16, generator=gen) * 10
    garbage_months = torch.rand(b, pad, generator=gen) * 400 - 100
    emb_p = torch.cat([emb, garbage], 1)
    months_p = torch.cat([months, garbage_months], 1)
    valid_p = torch.cat([valid, torch.zeros(b, pad, dtype=torch.bool)], 1)
    # and the same padding interleaved with the real scans
    perm = torch.tensor([3, 0, 4, 2, 1])
    real_at = [int((perm == i).nonzero()) for i in range(k)]
    ctx = torch.no_grad() if mode == "eval_no_grad" else torch.enable_grad()
    with ctx:
        pooled, tok = agg.tokens(emb, months, valid)
        pooled_p, tok_p = agg.tokens(emb_p, months_p, valid_p)
        pooled_i, tok_i = agg.tokens(emb_p[:, perm], months_p[:, perm], valid_p[:, perm])
        fwd = agg(emb_p, months_p, valid_p)
    assert torch.isfinite(pooled_p).all() and torch.isfinite(tok_p[:, :k]).all()
    assert torch.allclose(pooled_p, pooled, atol=1e-5)
    assert torch.allclose(pooled_i, pooled, atol=1e-5)
    assert torch.allclose(fwd, pooled, atol=1e-5)
    assert torch.allclose(tok_p[:, :k], tok, atol=1e-5)
    assert torch.allclose(tok_i[:, real_at], tok, atol=1e-5)
    # shifting all real times by a constant changes nothing (times are relative to the last scan)
    with ctx:
        shifted = agg(emb_p, months_p + 17.0 * valid_p, valid_p)
    assert torch.allclose(shifted, pooled, atol=1e-4)


@pytest.mark.parametrize("kind", ["attention", "mean"])
def test_aggregator_masked_content_cannot_leak(kind):
    agg = _aggregator(kind)
    gen = torch.Generator().manual_seed(2)
    emb = torch.randn(3, 4, 16, generator=gen)
    months = torch.rand(3, 4, generator=gen) * 48
    valid = torch.tensor([[True, True, True, False], [True, True, True, True], [True, False, True, True]])
    masked = torch.tensor([[False, True, False, False], [True, False, False, False], [False, False, False, True]])
    other = torch.where(masked.unsqueeze(-1), torch.randn(3, 4, 16, generator=gen) * 5, emb)
    for train in (True, False):
        agg.train(train)
        p1, t1 = agg.tokens(emb, months, valid, masked)
        p2, t2 = agg.tokens(other, months, valid, masked)
        assert torch.allclose(p1, p2, atol=1e-6) and torch.allclose(t1, t2, atol=1e-6)
    # the masked position's content did reach the output without the mask (the test has teeth)
    p3, _ = agg.tokens(emb, months, valid)
    p4, _ = agg.tokens(other, months, valid)
    assert not torch.allclose(p3, p4, atol=1e-3)


# ------------------------------------------------------------------------------- method forwards


@pytest.fixture(scope="module")
def small_scans() -> ScanSet:
    scans = atrophy_scans(4, 3, 16, seed=5)
    # one subject with only two scans, so TOP/TMP/TOPC batches carry padding
    scans.subjects[3] = scans.subjects[3][:2]
    return scans


@pytest.mark.parametrize("name", ["simclr", "top", "tcl", "tmp", "topc"])
def test_method_forward_backward_and_step(name, small_scans):
    torch.manual_seed(0)
    arch = tiny_arch(norm="group" if name == "simclr" else "batch")
    encoder, aggregator = build_encoder(arch), build_aggregator(arch)
    method = build(name, encoder, aggregator, feature_dim(arch), HP[name])
    method.train()
    pool = units(small_scans, method.sampling)
    batch = method_batch(method, small_scans, pool[:4], MILD, seed=0)
    if name in ("top", "tmp", "topc"):
        assert not batch.valid.all()  # padding present
    loss, stats = method(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(math.isfinite(v) for v in stats.values())
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    opt.zero_grad()
    loss.backward()
    for p in method.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    first = encoder.conv1.weight
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
    if name != "simclr":  # every temporal method trains the aggregator's readout that fine-tuning reads
        grads = {k: p.grad for k, p in aggregator.named_parameters()}
        for key in ("cls", "norm.weight", "time.proj.bias"):
            assert grads[key] is not None and float(grads[key].abs().sum()) > 0, key
    before = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    opt.step()
    after = encoder.state_dict()
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])
    # everything trainable in the encoder moved
    for k, p in encoder.named_parameters():
        assert not torch.equal(before[k], p.detach()), k


@pytest.mark.parametrize("name", ["tcl", "tmp"])
def test_identity_alone_cannot_meet_a_temporal_objective(name):
    # every visit of a subject is the same scan (identity, no change): whatever the weights, the
    # target visit ties with its subject's other candidate visits. In a batch of one subject of three
    # visits the loss is then exactly the within-subject chance level, log 2 (tcl: the two visits
    # other than the query's own scan; tmp: the two hidden visits, its context being no candidate),
    # and log 3 if a scan the query was computed from were a candidate. A subject of two visits makes
    # no query (tcl: its target would be its subject's only candidate; tmp: no split). In batches of
    # every subject, other subjects' scans only add candidates: the loss stays at or above log 2.
    # top and topc: test_identity_alone_cannot_meet_top_order.
    scans = atrophy_scans(6, 3, 16, seed=2)
    scans.subjects[4], scans.subjects[5] = scans.subjects[4][:2], scans.subjects[5][:2]
    for rows in scans.subjects:
        scans.volumes[rows] = scans.volumes[rows[0]].clone()
    torch.manual_seed(0)
    arch = tiny_arch(norm="group")
    method = build(name, build_encoder(arch), build_aggregator(arch), feature_dim(arch), HP[name])
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    for step in range(8):
        loss, _ = method(method_batch(method, scans, scans.subjects, NONE, seed=0, step=step))
        assert loss.item() >= math.log(2) - 1e-4, (step, loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # the trained weights, one subject at a time
        for rows in scans.subjects:
            batch = method_batch(method, scans, [rows], NONE, seed=0)
            loss, stats = method(batch)
            if len(rows) == 3:
                assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
            else:
                assert loss.item() == 0.0
                if name == "tcl":  # no query at all (one with a single candidate would also cost 0)
                    assert stats["mean_interval_months"] == 0.0 and stats["batch_retrieval"] == 0.0


def test_nt_xent_never_pushes_away_other_visits_of_the_subject():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    groups = torch.tensor([0, 0, 1, 2])  # scans 0 and 1: two visits of one subject
    with_groups = nt_xent(z1, z2, 0.5, groups, center=True)
    # anchor 0's denominator leaves out scan 1's two views, and anchor 1's scan 0's: as if each were
    # alone in the batch with subjects 1 and 2
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    z = F.normalize(z - z.mean(0), dim=1)  # centred over the batch (center=True)
    sim = z @ z.T / 0.5
    losses = []
    for a in range(8):
        pos = (a + 4) % 8
        same = {a % 4} | ({0, 1} if a % 4 in (0, 1) else set())
        keep = [c for c in range(8) if c == pos or c % 4 not in same]
        losses.append(-sim[a, pos] + torch.logsumexp(sim[a, keep], 0))
    torch.testing.assert_close(with_groups, torch.stack(losses).mean())
    assert not torch.isclose(with_groups, nt_xent(z1, z2, 0.5, center=True))


def test_sequence_embeddings_zero_at_padding():
    h = torch.randn(5, 4)
    index = torch.tensor([[0, 1, -1], [4, 2, 3]])
    seq = sequence_embeddings(h, index)
    assert torch.equal(seq[0, 2], torch.zeros(4))
    assert torch.equal(seq[1], h[[4, 2, 3]]) and torch.equal(seq[0, :2], h[[0, 1]])


# --------------------------------------------------------------------- TOP learns temporal order


def order_accuracy(method, scans: ScanSet) -> float:
    """Pairwise order accuracy over every held-out subject's scans, no augmentation, eval mode."""
    method.eval()
    batch = method_batch(method, scans, scans.subjects, NONE, 123)
    with torch.no_grad():
        _, stats = method(batch)
    method.train()
    return stats["order_accuracy"]


def test_top_learns_order_of_progressive_atrophy():
    train_scans = atrophy_scans(24, 3, 20, seed=0)
    held_out = atrophy_scans(8, 3, 20, seed=1)
    torch.manual_seed(0)
    arch = tiny_arch(norm="batch")
    encoder, aggregator = build_encoder(arch), build_aggregator(arch)
    method = build("top", encoder, aggregator, feature_dim(arch), {"n_scans": 3, "hidden": 16})
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    aug = {"min_crop": 0.9, "p_rotate": 0.5, "max_rotate_deg": 5, "p_flip": 0.5, "p_gamma": 0.0, "gamma": [1, 1],
           "p_shift": 0.0, "shift": 0.0}
    before = order_accuracy(method, held_out)
    pool = units(train_scans, method.sampling)
    losses = []
    method.train()
    for epoch in range(3):  # 3 steps each: 24 subjects, 8 per batch
        for step, chosen in enumerate(epoch_batches(len(pool), 8, 0, epoch)):
            batch = method_batch(method, train_scans, [pool[i] for i in chosen], aug, 0, epoch, step)
            loss, _ = method(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    after = order_accuracy(method, held_out)
    assert after > 0.75, (before, after, losses)
    assert after > before
    assert np.mean(losses[-3:]) < min(math.log(2), np.mean(losses[:3]))


@pytest.mark.parametrize("name", ["top", "topc"])
def test_top_trains_attention_across_scans_and_the_time_encoding(name):
    # the order term runs the aggregator over the subject's sampled scans with their times (the
    # scored pair undated): attention across scans and both halves of the time encoding (sine and
    # cosine) get gradients and move. Scoring each scan alone at time 0 (the earlier design) gave
    # the sine half no gradient (sin 0 = 0) and the batch's times none at all.
    scans = atrophy_scans(6, 4, 16, seed=3)
    torch.manual_seed(0)
    arch = tiny_arch(norm="group")
    encoder, aggregator = build_encoder(arch), build_aggregator(arch)
    method = build(name, encoder, aggregator, feature_dim(arch), HP[name])
    real_scans = []  # real scans of each sequence the aggregator's transformer attends over
    aggregator.transformer.register_forward_pre_hook(
        lambda _m, _args, kw: real_scans.append(int((~kw["mask"][:, 0, 1:]).sum(1).max())), with_kwargs=True)
    attention = aggregator.transformer.layers[0].self_attn
    watched = {"time sine": lambda: aggregator.time.proj.weight[:, :8],
               "time cosine": lambda: aggregator.time.proj.weight[:, 8:],
               "attention in_proj": lambda: attention.in_proj_weight,
               "attention out_proj": lambda: attention.out_proj.weight}
    initial = {k: f().detach().clone() for k, f in watched.items()}
    pool = units(scans, method.sampling)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    for step in range(3):
        batch = method_batch(method, scans, pool, MILD, seed=0, step=step)
        batch.months = batch.months.clone().requires_grad_()
        loss, _ = method(batch)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert max(real_scans) == 3, real_scans  # n_scans of each subject, not one scan at a time
            assert batch.months.grad is not None and float(batch.months.grad.abs().sum()) > 0  # times reach the loss
            grads = {"time sine": aggregator.time.proj.weight.grad[:, :8],
                     "time cosine": aggregator.time.proj.weight.grad[:, 8:],
                     "attention in_proj": attention.in_proj_weight.grad,
                     "attention out_proj": attention.out_proj.weight.grad}
            norms = {k: 0.0 if g is None else float(g.norm()) for k, g in grads.items()}
            assert all(v > 1e-6 for v in norms.values()), norms
        opt.step()
    for k, f in watched.items():
        assert not torch.allclose(f(), initial[k]), k


@pytest.mark.parametrize("name", ["top", "topc"])
def test_identity_alone_cannot_meet_top_order(name):
    # every visit of a subject is the same scan: the scored pair's two scans are identical, so their
    # logit is 0 and the order loss stays at log 2 whatever the weights, though the aggregator sees
    # the other scans' times. Control (the test has teeth): the same training with the pair's own
    # times left in (a leak) falls well below log 2 in the same steps.
    scans = atrophy_scans(6, 3, 16, seed=2)
    for rows in scans.subjects:
        scans.volumes[rows] = scans.volumes[rows[0]].clone()

    def order_losses(leak: bool) -> list[float]:
        torch.manual_seed(0)
        arch = tiny_arch(norm="group")
        aggregator = build_aggregator(arch)
        if leak:
            tokens = aggregator.tokens
            aggregator.tokens = lambda *args, undated=None, **kw: tokens(*args, **kw)
        method = build(name, build_encoder(arch), aggregator, feature_dim(arch), HP[name])
        opt = torch.optim.Adam(method.parameters(), lr=3e-3)
        losses = []
        for step in range(8):
            loss, stats = method(method_batch(method, scans, scans.subjects, NONE, seed=0, step=step))
            losses.append(stats.get("order_loss", loss.item()))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return losses

    honest = order_losses(leak=False)
    assert min(honest) >= math.log(2) - 1e-4, honest
    leaky = order_losses(leak=True)
    assert leaky[-1] < math.log(2) - 0.05, leaky


# ---------------------------------------------------------------------------------- augmentations


def _brains(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked z-scored random volumes inside off-centre, asymmetric ellipsoid masks."""
    gen = torch.Generator().manual_seed(seed)
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    x, y, z = torch.meshgrid(ax, ax, ax, indexing="ij")
    mask = (((x - 1.5) / 6.5) ** 2 + ((y + 1) / 5.0) ** 2 + (z / 4.0) ** 2 <= 1).float()
    mask = mask.expand(n, 1, size, size, size)
    smooth = F.avg_pool3d(torch.randn(n, 1, size, size, size, generator=gen), 3, 1, 1) + 0.05 * x
    return masked_zscore(smooth * mask, mask), mask


def test_apply_shape_background_and_zscore():
    vols, mask = _brains(4)
    p = draw(4, STRONG, torch.Generator().manual_seed(0))
    out = apply(vols, p)
    assert out.shape == vols.shape and out.dtype == torch.float32
    grid = F.affine_grid(_theta(p, vols.shape[2:], vols.device), list(vols.shape), align_corners=False)
    warped = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.5
    assert (out[~warped] == 0).all()
    assert (out[warped] != 0).float().mean() > 0.99
    for i in range(4):
        inside = out[i][warped[i]].double()
        assert warped[i].sum() > 100
        assert abs(float(inside.mean())) < 1e-4
        assert float(inside.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)
    # float16 input (how the pretraining scans are stored) works the same
    assert torch.allclose(apply(vols.half(), p), apply(vols.half().float(), p))


@pytest.mark.parametrize("recipe", [STRONG, {**STRONG, "p_shift": 0.8, "shift": 0.5}], ids=["strong", "shift"])
def test_draw_is_seeded_and_apply_slices_like_ddp(recipe):
    vols, _ = _brains(4, seed=3)
    p1 = draw(4, recipe, torch.Generator().manual_seed(11))
    p2 = draw(4, recipe, torch.Generator().manual_seed(11))
    for a, b in zip(vars(p1).values(), vars(p2).values()):
        assert torch.equal(a, b)
    assert torch.equal(apply(vols, p1), apply(vols, p2))
    p3 = draw(4, recipe, torch.Generator().manual_seed(12))
    assert not torch.allclose(apply(vols, p1), apply(vols, p3))
    full = apply(vols, p1)
    assert torch.allclose(apply(vols[:2], p1[:2]), full[:2], atol=1e-6)
    assert torch.allclose(apply(vols[2:], p1[2:]), full[2:], atol=1e-6)


def _params(n=1, scale=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0), angle=0.0, flip=False, gamma=1.0, shift=0.0):
    return AugmentParams(torch.tensor([scale] * n), torch.tensor([centre] * n), torch.tensor([angle] * n),
                         torch.tensor([flip] * n), torch.tensor([gamma] * n), torch.tensor([shift] * n))


def test_apply_identity_and_axis_conventions():
    vols, _ = _brains(2, seed=4)
    # no augmentation reproduces the (already z-scored) input; so does draw() with p = 0 everywhere
    assert torch.allclose(apply(vols, _params(2)), vols, atol=1e-5)
    assert torch.allclose(apply(vols, draw(2, NONE, torch.Generator().manual_seed(0))), vols, atol=1e-5)
    # flip is left-right: the first spatial axis
    assert torch.allclose(apply(vols, _params(2, flip=True)), vols.flip(2), atol=1e-5)
    # a 90 degree rotation turns the first two axes into each other
    rot = apply(vols, _params(2, angle=math.pi / 2))
    assert any(torch.allclose(rot, torch.rot90(vols, k, dims=(2, 3)), atol=1e-4) for k in (1, -1))
    # a crop centre shifted along the first axis moves content along the first axis
    shifted = apply(vols, _params(2, centre=(0.5, 0.0, 0.0)))  # 0.25 of the width = 4 voxels
    assert torch.equal(shifted[:, :, :12] != 0, vols[:, :, 4:] != 0)
    # a centred half-size crop zooms in by two about the centre
    zoom = apply(vols, _params(2, scale=(0.5, 0.5, 0.5)))
    assert int((zoom != 0).sum()) > 4 * int((vols != 0).sum())
    # gamma changes intensities but not the brain
    g = apply(vols, _params(2, gamma=1.4))
    assert torch.equal(g != 0, vols != 0) and not torch.allclose(g, vols, atol=1e-2)


def _head(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """(1, 1, X, Y, Z) masked z-scored random volume in an off-centre ellipsoid filling most of a
    box whose sides differ (as the paper's 152 x 192 x 152 grid)."""
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    mask = (((x - 1.5) / (0.4 * shape[0])) ** 2 + ((y + 1) / (0.35 * shape[1])) ** 2
            + (z / (0.35 * shape[2])) ** 2 <= 1).float()[None, None]
    smooth = F.avg_pool3d(torch.randn(1, 1, *shape, generator=gen), 3, 1, 1) + 0.05 * x
    return masked_zscore(smooth * mask, mask)


def _sampled(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """What apply's affine reads from ``x`` (bilinear), before masking, gamma and z-score."""
    grid = F.affine_grid(_theta(p, x.shape[2:], x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_crop_resize_is_monai_crop_then_resize():
    # 3D-Neuro-SimCLR's RandSpatialCropd + Resized: a box of (5, 8, 10) voxels of a 20 x 26 x 16
    # volume (shares 0.25, 0.31, 0.63) zoomed back to the whole grid, per axis. Inside the box ours
    # reads exactly what MONAI's crop and trilinear resize give; in the outer half voxel, where the
    # resize repeats the box's edge, ours reads the scan beyond it
    from monai.transforms import Resize, SpatialCrop

    shape, start, size = (20, 26, 16), (3, 6, 2), (5, 8, 10)
    vol = _head(shape)
    crop = SpatialCrop(roi_start=start, roi_end=[a + m for a, m in zip(start, size)])
    theirs = Resize(spatial_size=shape, mode="trilinear")(crop(vol[0])).as_tensor()[None]
    p = _params(scale=tuple(m / n for m, n in zip(size, shape)),
                centre=tuple((2 * a + m) / n - 1 for a, m, n in zip(start, size, shape)))
    ours = _sampled(vol, p)
    src = [(torch.arange(n) + 0.5) * m / n - 0.5 for m, n in zip(size, shape)]  # in box voxels
    inner = [(x >= 0) & (x <= m - 1) for x, m in zip(src, size)]
    inner = inner[0][:, None, None] & inner[1][None, :, None] & inner[2][None, None, :]
    assert float(inner.float().mean()) > 0.5
    torch.testing.assert_close(ours[0, 0][inner], theirs[0, 0][inner], atol=1e-5, rtol=0)
    # it really zooms: the box's brain fills 1 / (0.25 x 0.31 x 0.63) = 21 times as many voxels, and
    # nothing outside the box shows (but in that outer half voxel)
    out = apply(vol, p)
    box = torch.zeros_like(vol)
    box[..., start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]] = 1
    zoom = math.prod(n / m for m, n in zip(size, shape))
    assert out.shape == vol.shape
    assert int((out != 0).sum()) == pytest.approx(zoom * int((vol * box != 0).sum()), rel=0.1)
    assert torch.equal((apply(vol * box, p) != 0)[0, 0][inner], (out != 0)[0, 0][inner])


def test_rotation_is_monai_rotate_on_a_non_square_plane():
    # RandRotated's turn in the axial plane (MONAI's Rotate about the third axis), rigid in voxels on a
    # 20 x 26 plane: a turn of normalised coordinates would also stretch it (by 10% at 45 degrees here)
    from monai.transforms import Rotate

    vol = _head((20, 26, 16), seed=1)
    for angle in (math.pi / 4, -math.pi / 6):
        ours = _sampled(vol, _params(angle=angle))
        theirs = [Rotate(angle=(0, 0, sign * angle), keep_size=True, mode="bilinear", padding_mode="zeros",
                         align_corners=False)(vol[0]).as_tensor()[None] for sign in (1, -1)]
        assert min(float((ours - t).abs().max()) for t in theirs) < 1e-4, angle
    # apply's output is then the masked z-score of that turn
    out = apply(vol, _params(angle=math.pi / 4))
    mask = (_sampled((vol != 0).float(), _params(angle=math.pi / 4)) > 0.5).float()
    torch.testing.assert_close(out, masked_zscore(_sampled(vol, _params(angle=math.pi / 4)) * mask, mask),
                               atol=1e-4, rtol=0)


def test_shift_moves_the_brain_and_nothing_else():
    vols, _ = _brains(2, seed=5)
    base = apply(vols, _params(2, angle=0.3, gamma=1.3))
    for offset in (0.4, -0.25):
        out = apply(vols, _params(2, angle=0.3, gamma=1.3, shift=offset))
        brain = base != 0
        assert out.shape == vols.shape and torch.equal(out != 0, brain)  # background stays 0
        torch.testing.assert_close(out[brain], base[brain] + offset, atol=1e-5, rtol=0)
        for i in range(2):
            inside = out[i][brain[i]].double()
            assert float(inside.mean()) == pytest.approx(offset, abs=1e-4)
            assert float(inside.std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)


def test_draw_shift_leaves_the_other_draws_and_recipes_without_it_unchanged():
    shifted = {**MILD, "p_shift": 0.8, "shift": 0.5}
    a = draw(4000, MILD, torch.Generator().manual_seed(3))
    b = draw(4000, shifted, torch.Generator().manual_seed(3))
    for name in ("scale", "centre", "angle", "flip", "gamma"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.shift, torch.zeros(4000))
    assert float(b.shift.abs().max()) <= 0.5 and float(b.shift.abs().max()) > 0.49
    assert float((b.shift != 0).float().mean()) == pytest.approx(0.8, abs=0.03)
    assert float(b.shift.mean()) == pytest.approx(0.0, abs=0.02)
    # a recipe without a shift takes the numbers it took before shifts existed (n x 10, then n):
    # runs without one (config.yaml's) draw the same views as before
    gen, before = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    draw(7, MILD, gen)
    torch.rand(7, 10, generator=before, dtype=torch.float64)
    torch.rand(7, generator=before, dtype=torch.float64)
    assert torch.equal(gen.get_state(), before.get_state())


def _paper_recipe() -> dict:
    """config/paper.yaml's spatial recipe, merged over config.yaml's as the workflow merges them."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    default = yaml.safe_load((root / "config.yaml").read_text())["pretrain"]["augment"]["spatial"]
    return {**default, **yaml.safe_load((root / "config/paper.yaml").read_text())["pretrain"]["augment"]["spatial"]}


def test_paper_recipe_draws_neuro_simclr_views():
    # 3D-Neuro-SimCLR's main.py: crops of 20-100% per axis (independently), flips p 0.5, turns of up
    # to 45 degrees p 0.5, gamma 0.5-1.5 p 0.8; no shift (its shift is undone by its z-score: below)
    p = draw(20000, _paper_recipe(), torch.Generator().manual_seed(0))
    assert float(p.scale.min()) >= 0.2 - 1e-6 and float(p.scale.min()) < 0.21 and float(p.scale.max()) > 0.99
    assert float(p.scale.mean()) == pytest.approx(0.6, abs=0.01)
    assert abs(float(torch.corrcoef(p.scale.T)[0, 1])) < 0.03  # each axis its own size
    assert ((p.centre.abs() <= 1 - p.scale + 1e-6).all())      # the box stays in the volume
    assert float((p.flip.float()).mean()) == pytest.approx(0.5, abs=0.02)
    turned = p.angle != 0
    assert float(turned.float().mean()) == pytest.approx(0.5, abs=0.02)
    assert float(p.angle.abs().max()) <= math.radians(45) + 1e-6 and float(p.angle.abs().max()) > math.radians(44)
    changed = p.gamma != 1
    assert float(changed.float().mean()) == pytest.approx(0.8, abs=0.02)
    assert float(p.gamma.min()) >= 0.5 - 1e-6 and float(p.gamma.max()) <= 1.5 + 1e-6
    assert float(p.gamma[changed].min()) < 0.51 and float(p.gamma[changed].max()) > 1.49
    assert torch.equal(p.shift, torch.zeros(20000))


def test_neuro_simclr_intensity_shift_is_undone_by_its_zscore():
    # why config/paper.yaml has no shift: 3D-Neuro-SimCLR's RandShiftIntensityd(offsets=0.5, prob=0.8)
    # adds an offset to every voxel of the raw scan before RandAdjustContrastd, whose gamma works on
    # the whole box's min-max range (so carries a common offset through), and each view is then
    # z-scored inside its mask (its t1_datasets.py standardize): the network sees the same view
    from monai.transforms import AdjustContrast, ShiftIntensity

    def standardize(images, masks, eps=1e-12):  # 3D-Neuro-SimCLR's CSVPairBase.standardize
        images = images.mul(masks)
        n = masks.sum(dim=(2, 3, 4), keepdims=True).clamp_min(1.0)
        means = images.sum(dim=(2, 3, 4), keepdims=True) / n
        stds = torch.sqrt(images.pow(2).sum(dim=(2, 3, 4), keepdims=True) / n - means.pow(2) + eps)
        return images.sub(means).div(stds).mul(masks)

    vol = _head((20, 26, 16), seed=2)
    mask = (vol != 0).float()
    raw = (vol * 120 + 600) * mask  # raw-like intensities, background 0
    for gamma in (0.5, 1.0, 1.5):
        plain = standardize(AdjustContrast(gamma)(raw[0]).as_tensor()[None], mask)
        for offset in (0.5, -0.37):
            shifted = standardize(AdjustContrast(gamma)(ShiftIntensity(offset)(raw[0])).as_tensor()[None], mask)
            torch.testing.assert_close(shifted, plain, atol=1e-3, rtol=0)
        # the gamma itself does change the view
        if gamma != 1.0:
            assert float((standardize(raw, mask) - plain).abs().max()) > 0.05
