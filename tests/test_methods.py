"""Self-supervised methods, the temporal aggregator and the batched augmentations, on tiny volumes.

Everything runs on the CPU in seconds: encoders are ResNet-10s a few channels wide on 16^3-20^3
volumes. The one learning test (TOP on simulated progressive atrophy) trains for a few dozen steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslad.augment import AugmentParams, _theta, apply, draw, masked_zscore
from sslad.methods import Batch, build, sequence_embeddings
from sslad.methods.simclr import nt_xent
from sslad.methods.tcl import ordered_pairs
from sslad.methods.tmp import hidden_sets
from sslad.methods.top import OrderHead, order_pairs
from sslad.networks import TemporalAggregator, build_aggregator, build_encoder, feature_dim
from sslad.pretrain_data import ScanSet, epoch_batches, step_batch, units


def tiny_arch(norm: str = "batch", temporal: str = "attention", stem_stride: int = 2) -> dict:
    return {"depth": 10, "widths": [8, 8, 16, 16], "stem_kernel": 3, "stem_stride": stem_stride,
            "max_pool": False, "norm": norm, "temporal": temporal, "temporal_layers": 1, "temporal_heads": 2}


MILD = {"min_crop": 0.9, "p_rotate": 0.5, "max_rotate_deg": 5, "p_flip": 0.5, "p_gamma": 0.5, "gamma": [0.9, 1.1]}
NONE = {"min_crop": 1.0, "p_rotate": 0.0, "max_rotate_deg": 0, "p_flip": 0.0, "p_gamma": 0.0, "gamma": [1.0, 1.0]}
STRONG = {"min_crop": 0.6, "p_rotate": 1.0, "max_rotate_deg": 15, "p_flip": 0.5, "p_gamma": 1.0, "gamma": [0.7, 1.5]}
HP = {"simclr": {"temperature": 0.5, "projection_dim": 8},
      "top": {"n_scans": 3, "hidden": 16},
      "tcl": {"n_scans": 3, "temperature": 0.5, "projection_dim": 8},
      "tmp": {"n_scans": 4, "temperature": 0.2, "projection_dim": 8},
      "topc": {"n_scans": 3, "hidden": 16, "temperature": 0.5, "projection_dim": 8, "spatial_weight": 1.0}}


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
    # centred on their mean (1/n) sum e_j, two different ones have cosine (-1/n) / (1 - 1/n) = -1/(n-1):
    # each anchor has its positive at similarity 1/T and 2N-2 negatives at -1/((n-1)T)
    neg = -1 / (n - 1)
    expected = math.log(1 + (2 * n - 2) * math.exp(neg / t) / math.exp(1 / t))
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(expected, rel=1e-5)
    # by hand from the definition, as a cross-check of the formula above
    c = torch.cat([z, z]) - torch.cat([z, z]).mean(0)
    c = c / c.norm(dim=1, keepdim=True)
    sim = (c @ c.T / t).exp()
    anchors = [-math.log(sim[i, (i + n) % (2 * n)] / (sim[i].sum() - sim[i, i])) for i in range(2 * n)]
    assert float(nt_xent(z, z.clone(), t)) == pytest.approx(sum(anchors) / (2 * n), rel=1e-5)


def test_nt_xent_centres_a_common_component_away():
    """Nearly parallel projections (a large shared part, as a group-norm encoder's at first) still
    give a loss that tells the right pairing from a wrong one."""
    torch.manual_seed(0)
    z = torch.randn(4, 8) * 0.05 + 3.0
    right, wrong = nt_xent(z, z.clone(), 0.5), nt_xent(z, z[torch.tensor([1, 2, 3, 0])], 0.5)
    assert float(wrong) > float(right) + 1.0


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


def test_order_head_is_antisymmetric():
    torch.manual_seed(0)
    head = OrderHead(16, 8)
    seq = torch.randn(4, 3, 16)
    months = torch.tensor([[0.0, 12.0, 6.0], [5.0, 1.0, 9.0], [3.0, 2.0, 1.0], [0.0, 40.0, 20.0]])
    valid = torch.ones(4, 3, dtype=torch.bool)
    s = head.score(seq).squeeze(-1)
    logit_ij = s[:, :, None] - s[:, None, :]           # logit that the scan at column precedes the row
    assert torch.allclose(logit_ij, -logit_ij.transpose(1, 2))
    # reversing the time axis reverses every label: loss(seq, m) vs loss(seq, -m) at a perfect score
    loss, acc = head(seq, months, valid)
    loss_rev, acc_rev = head(seq, -months, valid)
    assert float(acc) + float(acc_rev) == pytest.approx(1.0)  # no ties in the scores
    # swapping two scans and their times leaves the loss unchanged
    perm = torch.tensor([2, 0, 1])
    loss_p, acc_p = head(seq[:, perm], months[:, perm], valid)
    assert torch.allclose(loss, loss_p, atol=1e-6) and float(acc) == pytest.approx(float(acc_p))


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


def _by_hand(name: str, scans: ScanSet) -> tuple:
    """A tiny method's loss on one batch of ``scans``, the batch, its encodings, the method, and the
    InfoNCE term of one query computed by hand over the candidates it is given."""
    torch.manual_seed(0)
    arch = tiny_arch(norm="group")
    method = build(name, build_encoder(arch), build_aggregator(arch), feature_dim(arch), HP[name])
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
    # from: a seen visit could be ruled out by its content alone, without time
    loss, batch, h, method, term = _by_hand("tmp", atrophy_scans(3, 4, 16, seed=3))
    rows, at, hidden = hidden_sets(batch.valid, batch.months)
    pred = method.predict(sequence_embeddings(h, batch.index)[rows], batch.months[rows], batch.valid[rows],
                          hidden, at)
    terms = []
    for q in range(len(rows)):
        seen = set(batch.index[rows[q]][batch.valid[rows[q]] & ~hidden[q]].tolist())
        terms.append(term(pred[q], [c for c in range(len(h)) if c not in seen], int(batch.index[rows[q], at[q]])))
    assert len(terms) == 3 * 24 and float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


@torch.no_grad()
def test_tcl_never_offers_a_query_its_own_scan_as_candidate():
    # InfoNCE over every scan of the batch but the one the query was carried from
    loss, batch, h, method, term = _by_hand("tcl", atrophy_scans(3, 3, 16, seed=4))
    rows, i, j = ordered_pairs(batch.months, batch.valid)
    seq = sequence_embeddings(h, batch.index)
    q = method.carry(seq[rows, i], batch.months[rows, i], batch.months[rows, j])
    terms = [term(q[n], [c for c in range(len(h)) if c != int(batch.index[rows[n], i[n]])],
                  int(batch.index[rows[n], j[n]])) for n in range(len(rows))]
    assert len(terms) == 3 * 6 and float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)


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


@pytest.mark.parametrize("name", ["top", "tcl", "tmp"])
def test_identity_alone_cannot_meet_a_temporal_objective(name):
    # every visit of a subject is the same scan (identity, no change): whatever the weights, the
    # target visit ties with the subject's other visits, so the loss stays at the within-subject
    # chance level: log 2 (top: per pair; tcl: the two visits other than the query's own scan; tmp:
    # the two hidden visits, its context being no candidate)
    scans = atrophy_scans(6, 3, 16, seed=2)
    for rows in scans.subjects:
        scans.volumes[rows] = scans.volumes[rows[0]].clone()
    torch.manual_seed(0)
    arch = tiny_arch(norm="group")
    method = build(name, build_encoder(arch), build_aggregator(arch), feature_dim(arch), HP[name])
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    for step in range(8):
        loss, _ = method(method_batch(method, scans, scans.subjects, NONE, seed=0, step=step))
        floor = math.log(2)
        assert loss.item() >= floor - 1e-4, (step, loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_nt_xent_never_pushes_away_other_visits_of_the_subject():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    groups = torch.tensor([0, 0, 1, 2])  # scans 0 and 1: two visits of one subject
    with_groups = nt_xent(z1, z2, 0.5, groups)
    # anchor 0's denominator leaves out scan 1's two views, and anchor 1's scan 0's: as if each were
    # alone in the batch with subjects 1 and 2
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    z = F.normalize(z - z.mean(0), dim=1)  # centred over the batch (see nt_xent)
    sim = z @ z.T / 0.5
    losses = []
    for a in range(8):
        pos = (a + 4) % 8
        same = {a % 4} | ({0, 1} if a % 4 in (0, 1) else set())
        keep = [c for c in range(8) if c == pos or c % 4 not in same]
        losses.append(-sim[a, pos] + torch.logsumexp(sim[a, keep], 0))
    torch.testing.assert_close(with_groups, torch.stack(losses).mean())
    assert not torch.isclose(with_groups, nt_xent(z1, z2, 0.5))


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
    aug = {"min_crop": 0.9, "p_rotate": 0.5, "max_rotate_deg": 5, "p_flip": 0.5, "p_gamma": 0.0, "gamma": [1, 1]}
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
    grid = F.affine_grid(_theta(p, vols.device), list(vols.shape), align_corners=False)
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


def test_draw_is_seeded_and_apply_slices_like_ddp():
    vols, _ = _brains(4, seed=3)
    p1 = draw(4, STRONG, torch.Generator().manual_seed(11))
    p2 = draw(4, STRONG, torch.Generator().manual_seed(11))
    for a, b in zip(vars(p1).values(), vars(p2).values()):
        assert torch.equal(a, b)
    assert torch.equal(apply(vols, p1), apply(vols, p2))
    p3 = draw(4, STRONG, torch.Generator().manual_seed(12))
    assert not torch.allclose(apply(vols, p1), apply(vols, p3))
    full = apply(vols, p1)
    assert torch.allclose(apply(vols[:2], p1[:2]), full[:2], atol=1e-6)
    assert torch.allclose(apply(vols[2:], p1[2:]), full[2:], atol=1e-6)


def _params(n=1, scale=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0), angle=0.0, flip=False, gamma=1.0):
    return AugmentParams(torch.tensor([scale] * n), torch.tensor([centre] * n), torch.tensor([angle] * n),
                         torch.tensor([flip] * n), torch.tensor([gamma] * n))


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
