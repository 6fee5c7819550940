"""Fine-tuning on its own: model selection, threshold, the probe's readout, the inputs each mode sees
(history, the index scan alone, the time-shuffled control), what a job writes (with its provenance),
and the cells it skips: a diverging training, an encoder with non-finite weights. Real code paths on
a tiny synthetic task (8^3 volumes, a 4-channel ResNet-10)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sslad import finetune, provenance, result_table
from sslad.io import read_tsv, write_tsv
from sslad.metrics import auc
from sslad.networks import build_aggregator, build_encoder, save_encoder
from sslad.results import PREDICTION_COLUMNS
from sslad.visit_time import DAYS_PER_MONTH
from sslad.volumes import open_arrays, read_visits

ARCH = {"depth": 10, "widths": [4, 4, 8, 8], "stem_kernel": 3, "stem_stride": 2, "max_pool": True, "norm": "batch",
        "temporal": "attention", "temporal_layers": 1, "temporal_heads": 2}
SETTINGS = {"device": "cpu", "inputs": "history", "modes": ["full", "probe"], "epochs": 4, "batch_size": 4,
            "lr": 0.01, "probe_lr": 0.05, "probe_epochs": 30, "weight_decay": 0.0, "model": ARCH, "heldout": "",
            "patience": 0}
DAYS = [0, 182, 371]  # about 0, 6 and 12 months: fractional months, never rounded


def _tables(tmp_path, test_labels: list[int]) -> tuple[str, str]:
    rows = [{"participant_id": f"sub-{i:02d}", "index_session": "ses-M000", "input_sessions": "ses-M000",
             "input_days": "0", "n_inputs": 1, "index_months": 0.0, "index_diagnosis": "CN", "label": y, "split": split}
            for i, (y, split) in enumerate([(0, "train"), (1, "train"), (0, "val"), (1, "val")]
                                           + [(y, "test") for y in test_labels])]
    task = pd.DataFrame(rows)
    write_tsv(task, tmp_path / "task.tsv")
    frac = task[task["split"] != "test"][["participant_id", "index_session", "label", "split"]]
    write_tsv(frac, tmp_path / "frac.tsv")
    return str(tmp_path / "task.tsv"), str(tmp_path / "frac.tsv")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, str]:
    """24 subjects (12 train, 6 val, 6 test), three scans each (days 0, 182, 371) whose arrays hold a
    blob that grows with time in positive subjects; two samples per subject (index at the second and
    the third scan, so histories overlap). Returns the paths a job reads."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    visits, samples = [], []
    splits = ["train"] * 12 + ["val"] * 6 + ["test"] * 6
    for i, split in enumerate(splits):
        pid, label = f"sub-{i:02d}", i % 2
        sessions = [f"ses-M{round(d / DAYS_PER_MONTH):03d}" for d in DAYS]
        for k, (session, day) in enumerate(zip(sessions, DAYS)):
            arr = rng.normal(size=(8, 8, 8)).astype(np.float16)
            arr[2:6, 2:6, 2:6] += np.float16(label * (1 + k))
            path = root / f"{pid}_{session}.npy"
            np.save(path, arr)
            visits.append({"participant_id": pid, "session_id": session, "days_from_baseline": day,
                           "array": str(path)})
        for k in (2, 3):
            samples.append({"participant_id": pid, "index_session": sessions[k - 1],
                            "input_sessions": ";".join(sessions[:k]), "input_days": ";".join(map(str, DAYS[:k])),
                            "n_inputs": k, "label": label, "split": split})
    task = pd.DataFrame(samples)
    write_tsv(pd.DataFrame(visits), root / "visits.tsv")
    write_tsv(task, root / "task.tsv")
    write_tsv(task[task["split"] != "test"][["participant_id", "index_session", "label", "split"]], root / "frac.tsv")
    return {"root": str(root), "task": str(root / "task.tsv"), "visits": str(root / "visits.tsv"),
            "frac": str(root / "frac.tsv")}


def _data(cohort: dict[str, str], inputs: str = "history",
          seed: int = 0) -> tuple[finetune.Scans, dict[str, finetune.Samples]]:
    """The scans (streamed from their files) and samples of every split, as a job builds them."""
    table = pd.read_csv(cohort["task"], sep="\t")
    keys = finetune.scan_keys(table, inputs)
    parts = finetune.select_samples(table, cohort["task"], cohort["frac"])
    data = finetune.build_samples(parts, inputs, {k: i for i, k in enumerate(keys)}, seed)
    return finetune.Scans(open_arrays(read_visits(cohort["visits"]), keys, cohort["task"]), torch.device("cpu")), data


def _run(cohort, tmp_path, init: str, encoder: str | None, **settings) -> pd.DataFrame:
    """One job of one cell; returns its predictions.tsv."""
    cell = finetune.Cell(1.0, cohort["frac"], str(tmp_path / f"{init}.json"), str(tmp_path / f"{init}.tsv"))
    finetune.run({**SETTINGS, **settings}, "det_mci_ad", init, 0, [cell], cohort["task"], cohort["visits"], encoder, 1)
    return pd.read_csv(cell.predictions, sep="\t", dtype={"logit": np.float64})


def test_task_without_both_classes_is_skipped_with_its_reason(tmp_path):
    task_tsv, frac_tsv = _tables(tmp_path, [1, 1, 1])  # test: 3 positives, 0 negatives
    settings = {"device": "cpu", "inputs": "history", "modes": ["full"], "heldout": ""}
    cell = finetune.Cell(1.0, frac_tsv, str(tmp_path / "metrics.json"), str(tmp_path / "predictions.tsv"))
    [metrics] = finetune.run(settings, "fut_mci_ad", "scratch", 0, [cell], task_tsv, "unused.tsv", None, 1)
    assert metrics["rows"] == []
    assert "test samples of the task table need both classes, got 3 positive and 0 negative" in metrics["skipped"]
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped"] == metrics["skipped"]
    assert (tmp_path / "predictions.tsv").read_text().strip() == "\t".join(PREDICTION_COLUMNS)


def test_logits_round_trip_and_keep_their_order(tmp_path):
    """Sigmoids of large logits saturate to 1.0 and tie (AUC 0.5 here); the logits keep the ranking."""
    logits = np.array([40.0, 40.5, 41.0, 39.0, 45.25, 44.1 + 1e-12])
    labels = np.array([1, 0, 1, 0, 1, 0])
    assert auc(labels, 1 / (1 + np.exp(-logits.astype(np.float32)))) == 0.5
    preds = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(6)], "index_session": "ses-M000",
                          "mode": "full", "label": labels, "logit": logits})
    finetune.write_outputs({"rows": []}, preds, str(tmp_path / "metrics.json"), str(tmp_path / "predictions.tsv"))
    back = pd.read_csv(tmp_path / "predictions.tsv", sep="\t")
    assert (back["logit"].to_numpy() == logits).all()
    assert auc(back["label"], back["logit"]) == auc(labels, logits) != 0.5


def test_threshold_is_the_youden_point_on_validation_scores(cohort):
    _, data = _data(cohort)
    yv, yt = data["val"].labels.numpy(), data["test"].labels.numpy()
    rng = np.random.default_rng(1)
    scores = {"train": rng.normal(size=len(data["train"].labels)),
              "val": rng.normal(size=len(yv)) + yv, "test": rng.normal(size=len(yt)) + yt}
    row = finetune.evaluate(scores, data)
    t = row["threshold"]

    def youden(s, y, thr):
        pred = s >= thr
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    # no threshold does better on validation (every cut between two scores, and below all of them)
    cuts = np.concatenate([[scores["val"].min() - 1], (np.sort(scores["val"])[1:] + np.sort(scores["val"])[:-1]) / 2])
    assert youden(scores["val"], yv, t) == pytest.approx(max(youden(scores["val"], yv, c) for c in cuts))
    # and the test metrics are read at that threshold, not at one fitted on test
    pred = scores["test"] >= t
    assert row["sensitivity"] == pred[yt == 1].mean() and row["specificity"] == (~pred[yt == 0]).mean()
    assert row["val_auc"] == auc(yv, scores["val"])


def test_full_finetuning_keeps_the_epoch_of_best_validation_auc(cohort):
    volumes, data = _data(cohort)
    torch.manual_seed(0)
    model = finetune.Classifier(build_encoder(ARCH), build_aggregator(ARCH), 8)
    model, curves = finetune.train_full(model, volumes, data, {**SETTINGS, "epochs": 6}, seed=0)
    val = curves["val_auc"]
    assert len(val) == 6 and len(set(val)) > 1  # the epochs differ, so the choice matters
    assert curves["best_epoch"] == int(np.argmax(val)) + 1  # the first of the best
    # the returned model is that epoch's: it scores validation as it did then
    assert auc(data["val"].labels.numpy(), finetune.predict(model, volumes, data["val"])) == max(val)


def test_early_stopping_ends_patience_epochs_after_the_best_and_keeps_it(cohort):
    """With patience p, training stops p epochs after the last improvement of the validation AUC, and
    returns that best epoch's model: the same epochs as the run without it, up to the stop."""
    volumes, data = _data(cohort)
    runs = {}
    for patience in (0, 2):
        torch.manual_seed(0)
        model = finetune.Classifier(build_encoder(ARCH), build_aggregator(ARCH), 8)
        runs[patience] = finetune.train_full(model, volumes, data, {**SETTINGS, "epochs": 12, "patience": patience},
                                             seed=0)
    full, (model, stopped) = runs[0][1], runs[2]
    val = stopped["val_auc"]
    assert val == full["val_auc"][:len(val)]  # the same training until it stops
    # it stopped 2 epochs after its best, before the last of its 12 epochs
    assert len(val) == stopped["best_epoch"] + 2 < 12
    assert all(v <= max(val[:stopped["best_epoch"]]) for v in val[stopped["best_epoch"]:])
    assert auc(data["val"].labels.numpy(), finetune.predict(model, volumes, data["val"])) == max(val)
    assert len(full["val_auc"]) == 12


def test_probe_keeps_its_best_epoch_and_leaves_the_encoder_unchanged(cohort):
    volumes, data = _data(cohort)
    torch.manual_seed(0)
    encoder = build_encoder(ARCH).train()  # in training mode, batch norm would move its statistics
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    scores, curves = finetune.fit_probe(encoder, volumes, data, SETTINGS, seed=0)
    after = encoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any("running_mean" in k for k in before)
    assert curves["best_epoch"] == int(np.argmax(curves["val_auc"])) + 1
    assert auc(data["val"].labels.numpy(), scores["val"]) == max(curves["val_auc"])


def test_probe_rows_use_the_same_readout_for_every_init(cohort, tmp_path):
    """scratch, an init whose encoder.pt carries a pretrained aggregator (tmp, top, topc, tcl) and one
    without (simclr, external): with the same encoder weights, the probe's logits are identical,
    so a probe row measures the encoder alone. Full fine-tuning does start from the pretrained
    aggregator (its logits differ)."""
    torch.manual_seed(0)  # what a scratch job draws: encoder, then aggregator, from the job's seed
    encoder, aggregator = build_encoder(ARCH), build_aggregator(ARCH)
    with torch.no_grad():
        for p in aggregator.parameters():
            p.add_(torch.randn_like(p))  # "pretrained": anything but the scratch draw
    save_encoder(tmp_path / "with.pt", ARCH, encoder, aggregator, "tmp")
    save_encoder(tmp_path / "without.pt", ARCH, encoder, None, "simclr")
    runs = {init: _run(cohort, tmp_path, init, path, epochs=1)
            for init, path in (("scratch", None), ("tmp", str(tmp_path / "with.pt")),
                               ("simclr", str(tmp_path / "without.pt")))}
    probe = {init: p[p["mode"] == "probe"].reset_index(drop=True) for init, p in runs.items()}
    assert probe["scratch"].equals(probe["tmp"]) and probe["scratch"].equals(probe["simclr"])
    full = {init: p.loc[p["mode"] == "full", "logit"].to_numpy() for init, p in runs.items()}
    assert not np.array_equal(full["tmp"], full["simclr"])
    # the readout is the mean over the real scans: padding (a shorter history) does not enter it
    seq = torch.tensor([[[1.0, 2.0], [3.0, 6.0], [0.0, 0.0]], [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]])
    s = finetune.Samples(pd.DataFrame(), torch.zeros(2), torch.tensor([[0, 1, -1], [2, -1, -1]]), torch.zeros(2, 3),
                         torch.tensor([[True, True, False], [True, False, False]]))
    assert torch.equal(finetune.frozen_features(s, seq), torch.tensor([[2.0, 4.0], [5.0, 5.0]]))


def test_history_finetuning_starts_from_the_aggregator_top_trained(cohort, tmp_path, monkeypatch):
    """top trains attention across a subject's scans and the time encoding (sine and cosine halves)
    on sequences with their times; encoder.pt carries that aggregator, as sslad.pretrain saves it,
    and full fine-tuning on histories starts from exactly that state and feeds it multi-scan
    sequences with their times."""
    from sslad.augment import draw
    from sslad.methods import Batch, build

    visits = read_visits(cohort["visits"])
    visits = visits[visits["participant_id"].isin([f"sub-{i:02d}" for i in range(4)])]
    volumes = torch.stack([torch.from_numpy(np.load(p).astype(np.float32))[None] for p in visits["array"]])
    months = torch.tensor(visits["days_from_baseline"].to_numpy() / DAYS_PER_MONTH, dtype=torch.float32).reshape(4, 3)
    torch.manual_seed(0)
    encoder, aggregator = build_encoder(ARCH), build_aggregator(ARCH)
    initial = {k: v.clone() for k, v in aggregator.state_dict().items()}
    method = build("top", encoder, aggregator, 8, {"n_scans": 3, "hidden": 8})
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    plain = {"min_crop": 1.0, "p_rotate": 0.0, "max_rotate_deg": 0, "p_flip": 0.0, "p_gamma": 0.0, "gamma": [1.0, 1.0],
             "p_shift": 0.0, "shift": 0.0}
    for _ in range(3):
        batch = Batch(volumes, torch.arange(12).reshape(4, 3), months, torch.ones(4, 3, dtype=torch.bool),
                      [draw(12, plain, gen)], gen, torch.arange(4).repeat_interleave(3))
        loss, _ = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = {k: v.detach().clone() for k, v in aggregator.state_dict().items()}
    for key, cols in (("time.proj.weight", slice(0, 8)), ("time.proj.weight", slice(8, 16)),
                      ("transformer.layers.0.self_attn.in_proj_weight", slice(None)),
                      ("transformer.layers.0.self_attn.out_proj.weight", slice(None))):
        assert not torch.equal(trained[key][:, cols], initial[key][:, cols]), (key, cols)  # top moved them
    # the hand-over as sslad.pretrain writes it: a temporal method's aggregator beside its encoder
    save_encoder(tmp_path / "top.pt", ARCH, encoder, aggregator if method.sampling.seq_len > 1 else None, "top")
    started, fed = [], []

    class Recording(finetune.Classifier):
        def __init__(self, encoder, aggregator, dim):
            super().__init__(encoder, aggregator, dim)
            started.append({k: v.detach().clone() for k, v in aggregator.state_dict().items()})
            aggregator.register_forward_pre_hook(lambda _m, args: fed.append((int(args[2].sum(1).max()),
                                                                              float(args[1].abs().max()))))

    monkeypatch.setattr(finetune, "Classifier", Recording)
    _run(cohort, tmp_path, "top", str(tmp_path / "top.pt"), modes=["full"], epochs=1)
    assert len(started) == 1 and started[0].keys() == trained.keys()
    assert [k for k in trained if not torch.equal(started[0][k], trained[k])] == []
    assert max(n for n, _ in fed) == 3 and max(m for _, m in fed) > 0  # histories: several scans, their times


def test_predictions_cover_exactly_the_test_split(cohort, tmp_path):
    preds = _run(cohort, tmp_path, "scratch", None)
    test = pd.read_csv(cohort["task"], sep="\t").query("split == 'test'")
    expected = sorted(zip(test["participant_id"], test["index_session"], test["label"]))
    for mode in ("full", "probe"):
        p = preds[preds["mode"] == mode]
        assert sorted(zip(p["participant_id"], p["index_session"], p["label"])) == expected, mode
        assert np.isfinite(p["logit"]).all()
    assert set(preds["mode"]) == {"full", "probe"}


def test_index_inputs_feed_one_scan_the_index_scan(cohort):
    volumes, data = _data(cohort, "index")
    table = pd.read_csv(cohort["task"], sep="\t")
    assert finetune.scan_keys(table, "index") == list(zip(table["participant_id"], table["index_session"]))
    for s in data.values():
        assert s.index.shape[1] == 1 and bool(s.valid.all())
        assert torch.equal(s.months[:, 0], torch.tensor([d / DAYS_PER_MONTH for d in (182, 371)] * (len(s.labels) // 2),
                                                        dtype=torch.float32))
    seen = []
    model = finetune.Classifier(build_encoder(ARCH), build_aggregator(ARCH), 8)
    model.aggregator.register_forward_pre_hook(lambda _m, args: seen.append(args[2].sum(1)))
    finetune.predict(model, volumes, data["test"])
    assert seen and all(bool((v == 1).all()) for v in seen)  # the aggregator gets one real scan per sample


def test_history_times_are_fractional_months_and_the_shuffled_control_permutes_them(cohort):
    _, data = _data(cohort)
    months = torch.tensor([d / DAYS_PER_MONTH for d in DAYS], dtype=torch.float32)
    train = data["train"]
    assert torch.equal(train.months[1], months)  # days 0, 182, 371: months 0, 5.98, 12.19 (not 0, 6, 12)
    assert torch.equal(train.months[0, :2], months[:2]) and not train.valid[0, 2]
    _, shuffled = _data(cohort, "time_shuffled")
    _, again = _data(cohort, "time_shuffled")
    _, other_seed = _data(cohort, "time_shuffled", seed=1)
    changed = 0
    for name, s in shuffled.items():
        h = data[name]
        assert torch.equal(s.index, h.index) and torch.equal(s.valid, h.valid)  # the same scans, in place
        assert torch.equal(s.months, again[name].months)  # seeded: the same every time (and for every init)
        for i in range(len(s.labels)):
            n = int(h.valid[i].sum())
            assert sorted(s.months[i, :n].tolist()) == sorted(h.months[i, :n].tolist())  # the same times
            assert torch.equal(s.months[i, n:], h.months[i, n:])
            changed += not torch.equal(s.months[i], h.months[i])
    assert changed >= len(DAYS) * 3  # most samples get another order (1/2 and 5/6 of them by chance)
    assert any(not torch.equal(s.months, other_seed[n].months) for n, s in shuffled.items())  # a seed shuffles anew
    with pytest.raises(ValueError, match="inputs must be one of"):
        finetune.scan_keys(pd.read_csv(cohort["task"], sep="\t"), "shuffled")


def test_a_job_is_bit_identical_when_rerun(cohort, tmp_path):
    first = _run(cohort, tmp_path / "a", "scratch", None, inputs="time_shuffled", modes=["full"])
    again = _run(cohort, tmp_path / "b", "scratch", None, inputs="time_shuffled", modes=["full"])
    assert first.equals(again)
    metrics = json.loads(Path(tmp_path / "a" / "scratch.json").read_text())
    assert metrics["inputs"] == "time_shuffled"
    # the job's provenance: the checkout's commit and the torch it ran
    git = subprocess.run(["git", "-C", str(Path(finetune.__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    assert metrics["provenance"]["commit"] == (git.stdout.strip() if git.returncode == 0 else "unknown")
    # the installed distribution's version (PyPI's CUDA wheel says 2.13.0 where torch.__version__ adds +cu130)
    assert metrics["provenance"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert metrics["provenance"]["device"] == "cpu" and set(metrics["provenance"]) == set(provenance.PROVENANCE_KEYS)


@pytest.mark.parametrize("init", ["scratch", "schedule"])
def test_an_empty_task_table_is_skipped(tmp_path, init):
    """A task left without samples (the schedule matching can empty a small cohort's): skipped with
    its reason, for an image init and the schedule baseline alike."""
    task_tsv, frac_tsv = _tables(tmp_path, [0, 1])
    write_tsv(read_tsv(task_tsv).iloc[:0], task_tsv)
    write_tsv(read_tsv(frac_tsv).iloc[:0], frac_tsv)
    settings = {"device": "cpu", "inputs": "history", "modes": ["full"], "heldout": ""}
    cell = finetune.Cell(1.0, frac_tsv, str(tmp_path / "metrics.json"), str(tmp_path / "predictions.tsv"))
    [metrics] = finetune.run(settings, "dx_cn_ad", init, 0, [cell], task_tsv, "unused.tsv", None, 1)
    assert metrics["rows"] == [] and "need both classes, got 0 positive and 0 negative" in metrics["skipped"]


def test_schedule_init_scores_the_schedule_alone(tmp_path):
    """The schedule baseline's job: one fit, a row for every mode with the same test logits, no image read."""
    task_tsv, frac_tsv = _tables(tmp_path, [0, 1, 0, 1])
    task = read_tsv(task_tsv).assign(span_months=0.0, index_age=[70.0, 75.0, 71.0, 76.0, 70.0, 75.0, 72.0, 77.0],
                                     sex="F", cohort="A")
    write_tsv(task, task_tsv)
    settings = {"inputs": "history", "modes": ["full", "probe"], "heldout": ""}
    cell = finetune.Cell(1.0, frac_tsv, str(tmp_path / "metrics.json"), str(tmp_path / "predictions.tsv"))
    [metrics] = finetune.run(settings, "dx_cn_ad", "schedule", 0, [cell], task_tsv, "unused.tsv", None, 1)
    assert [r["mode"] for r in metrics["rows"]] == ["full", "probe"]
    assert metrics["rows"][0]["auc"] == metrics["rows"][1]["auc"] == 1.0  # age separates these classes
    preds = read_tsv(tmp_path / "predictions.tsv")
    full, probe = (preds.loc[preds["mode"] == m, "logit"].to_numpy() for m in ("full", "probe"))
    assert (full == probe).all()


def _job(cohort, tmp_path, init: str, encoder: str | None, fractions: tuple[float, ...] = (1.0,),
         **settings) -> list[Path]:
    """One job of ``fractions`` cells (all on the cohort's subset), in the workflow's layout; returns
    the cells' directories."""
    dirs = [tmp_path / init / f"frac-{f:g}" for f in fractions]
    cells = [finetune.Cell(f, cohort["frac"], str(d / "metrics.json"), str(d / "predictions.tsv"))
             for f, d in zip(fractions, dirs)]
    for d in dirs:
        d.mkdir(parents=True)
    finetune.run({**SETTINGS, **settings}, "det_mci_ad", init, 0, cells, cohort["task"], cohort["visits"], encoder, 1)
    return dirs


def _skipped(cell: Path) -> str:
    """The reason a cell's metrics.json gives for skipping it; its predictions.tsv has no rows."""
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["rows"] == [] and metrics["curves"] == {} and "commit" in metrics["provenance"]
    assert (cell / "predictions.tsv").read_text().strip() == "\t".join(PREDICTION_COLUMNS)
    return metrics["skipped"]


def test_an_encoder_with_non_finite_weights_skips_every_cell_and_the_study_goes_on(cohort, tmp_path):
    """It once died with 'scores contain NaN'. The skipped cells reach the table as skipped."""
    torch.manual_seed(0)
    encoder = build_encoder(ARCH)
    with torch.no_grad():
        encoder.conv1.weight[0, 0, 0, 0, 0] = float("nan")
    save_encoder(tmp_path / "encoder.pt", ARCH, encoder, None, "simclr")
    cells = _job(cohort, tmp_path, "simclr", str(tmp_path / "encoder.pt"), (0.5, 1.0))
    for cell in cells:
        assert _skipped(cell) == f"encoder {tmp_path / 'encoder.pt'} has non-finite weights (conv1.weight)"
    [evaluated] = _job(cohort, tmp_path, "scratch", None, modes=["probe"])
    table, skipped = result_table.build_table([str(c / "metrics.json") for c in (*cells, evaluated)], n_boot=20)
    assert set(table["init"]) == {"scratch"} and list(table["mode"]) == ["probe"]
    assert list(skipped["init"]) == ["simclr"] * 2 and list(skipped["fraction"]) == [0.5, 1.0]
    assert set(skipped["reason"]) == {f"encoder {tmp_path / 'encoder.pt'} has non-finite weights (conv1.weight)"}


def _exploding_encoder(tmp_path: Path) -> str:
    """Finite weights whose features overflow to inf and NaN."""
    torch.manual_seed(0)
    encoder = build_encoder(ARCH)
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(1e30)
    save_encoder(tmp_path / "encoder.pt", ARCH, encoder, None, "simclr")
    return str(tmp_path / "encoder.pt")


@pytest.mark.parametrize("exploding, settings, reason", [
    (False, {"modes": ["full", "probe"], "lr": 1e20},
     "full fine-tuning diverged at epoch 1, step 2 of 6 (lr 1e+20): the loss is nan"),
    # one step an epoch: the broken weights show in the validation scores before any loss
    (False, {"modes": ["full"], "lr": 1e20, "batch_size": 64},
     "full fine-tuning diverged at epoch 1 (lr 1e+20): validation scores are not finite (nan)"),
    (True, {"modes": ["probe"]}, "linear probe diverged at epoch 1, step 1 of 1 (lr 0.05): the loss is nan")],
    ids=["full-loss", "full-validation", "probe-loss"])
def test_a_diverging_cell_is_skipped_with_its_reason(cohort, tmp_path, exploding, settings, reason):
    encoder = _exploding_encoder(tmp_path) if exploding else None
    [cell] = _job(cohort, tmp_path, "simclr" if exploding else "scratch", encoder, **settings)
    assert _skipped(cell) == reason
