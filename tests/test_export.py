"""Exports (sslad/export.py) and the leak check of predictions (sslad/predict.py), on small files made
here; tests/test_workflow.py runs them on the tiny study (export_all, predict, reuse as an init)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from sslad import export  # noqa: E402
from sslad.networks import build_aggregator, build_encoder, load_encoder, save_encoder  # noqa: E402
from sslad.predict import LeakError, leak_check, samples  # noqa: E402

ARCH = {"depth": 10, "widths": [8, 8, 16, 16], "stem_kernel": 5, "stem_stride": 2, "max_pool": True,
        "norm": "group", "temporal": "attention", "temporal_layers": 1, "temporal_heads": 4}
PREPROCESS = {"voxel_mm": 6.0, "crop_mm": {"x": [-48, 48], "y": [-68, 36], "z": [-36, 48]},
              "normalisation": "zscore", "registration": "affine", "qc": {}}
GRID = export.grid_shape(6.0, PREPROCESS["crop_mm"])


@pytest.fixture
def encoder_export(tmp_path: Path) -> tuple[Path, Path]:
    """A pretraining run's files (encoder.pt with a trained aggregator, metrics, pretrain set, digests,
    an array, a template) exported; returns (encoder.pt, export directory)."""
    torch.manual_seed(0)
    pt = tmp_path / "run/encoder.pt"
    save_encoder(pt, ARCH, build_encoder(ARCH), build_aggregator(ARCH), "top")
    (tmp_path / "run/metrics.json").write_text(json.dumps(
        {"settings": {"method": "top", "train": {"seed": 0}}, "loss": [0.7, 0.6], "provenance": {"commit": "x"}}))
    np.save(tmp_path / "a.npy", np.zeros(GRID, dtype=np.float16))
    keys = pd.DataFrame({"participant_id": ["sub-A1", "sub-A1", "sub-A2"], "session_id": ["ses-M000", "ses-M012",
                                                                                          "ses-M000"]})
    keys.to_csv(tmp_path / "pretrain.tsv", sep="\t", index=False)
    keys.assign(sha256=["d1", "d2", "d3"]).to_csv(tmp_path / "digests.tsv", sep="\t", index=False)
    keys.assign(array=str(tmp_path / "a.npy")).to_csv(tmp_path / "visits.tsv", sep="\t", index=False)
    for name in ("tpl.nii.gz", "mask.nii.gz"):
        (tmp_path / name).write_bytes(name.encode())
    out = tmp_path / "export/encoders/top/seed-0"
    export.export_encoder(str(pt), str(tmp_path / "run/metrics.json"), str(tmp_path / "pretrain.tsv"),
                          str(tmp_path / "digests.tsv"), str(tmp_path / "visits.tsv"), str(tmp_path / "tpl.nii.gz"),
                          str(tmp_path / "mask.nii.gz"),
                          {"preprocess": PREPROCESS, "space": "MNI152NLin2009aSym", "max_inputs": 3}, str(out))
    return pt, out


def test_an_encoder_export_loads_without_pickle_and_gives_the_encoders_outputs(encoder_export, monkeypatch):
    pt, out = encoder_export
    assert sorted(p.name for p in out.iterdir()) == sorted([export.WEIGHTS, export.DESCRIPTION, export.TRAINING,
                                                            export.CARD])
    desc = json.loads((out / export.DESCRIPTION).read_text())
    assert desc["input"]["grid"] == GRID and desc["input"]["normalisation"] == "zscore"
    assert desc["weights"]["aggregator_trained"] and desc["method"]["name"] == "top"
    training = pd.read_csv(out / export.TRAINING, sep="\t")
    assert training["sha256"].tolist() == ["d1", "d2", "d3"] and set(training["role"]) == {"pretrain"}
    encoder, aggregator, _, _ = load_encoder(pt)

    def refuse(*args, **kwargs):
        raise AssertionError("an export must load without pickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = export.load(out)
    x = torch.randn(2, 1, *GRID)
    with torch.no_grad():
        assert torch.equal(loaded.encoder.eval()(x), encoder.eval()(x))
        seq, months, valid = torch.randn(2, 3, 16), torch.tensor([[0.0, 6, 12]] * 2), torch.ones(2, 3, dtype=bool)
        assert torch.equal(loaded.aggregator(seq, months, valid), aggregator.eval()(seq, months, valid))
    with pytest.raises(ValueError, match="no classification head"):
        loaded.classifier()


def test_a_changed_weights_file_is_refused(encoder_export):
    _, out = encoder_export
    data = bytearray((out / export.WEIGHTS).read_bytes())
    data[-1] ^= 1
    (out / export.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 is not the one description.json records"):
        export.load(out)


@pytest.mark.parametrize("key, value, named", [("voxel_mm", 4.0, "voxel_mm 6.0 in the export, 4.0 here"),
                                               ("normalisation", "whitestripe", "normalisation zscore"),
                                               ("crop_mm", {"x": [-48, 48], "y": [-68, 36], "z": [-36, 60]},
                                                "grid")])
def test_an_exported_encoder_as_an_init_needs_the_same_inputs(encoder_export, tmp_path, key, value, named):
    pt, out = encoder_export
    with pytest.raises(ValueError, match=named):
        export.import_encoder(out, tmp_path / "ext/encoder.pt", {**PREPROCESS, key: value}, "MNI152NLin2009aSym")
    with pytest.raises(ValueError, match="space MNI152NLin2009aSym in the export"):
        export.import_encoder(out, tmp_path / "ext/encoder.pt", PREPROCESS, "MNI152NLin2009cSym")
    assert not (tmp_path / "ext/encoder.pt").exists()
    export.import_encoder(out, tmp_path / "ext/encoder.pt", PREPROCESS, "MNI152NLin2009aSym")
    (enc, agg, arch, trained), (enc0, agg0, _, _) = load_encoder(tmp_path / "ext/encoder.pt"), load_encoder(pt)
    assert trained and arch == ARCH
    x, seq, months = torch.randn(1, 1, *GRID), torch.randn(1, 2, 16), torch.tensor([[0.0, 12.0]])
    with torch.no_grad():
        assert torch.equal(enc.eval()(x), enc0.eval()(x))
        valid = torch.ones(1, 2, dtype=torch.bool)
        assert torch.equal(agg.eval()(seq, months, valid), agg0.eval()(seq, months, valid))


def test_the_image_digest_ignores_name_and_compression(tmp_path):
    raw = np.arange(1000, dtype=np.uint8).tobytes()
    (tmp_path / "a.nii").write_bytes(raw)
    with gzip.open(tmp_path / "b.nii.gz", "wb", compresslevel=1) as f:
        f.write(raw)
    with gzip.open(tmp_path / "c.nii.gz", "wb", compresslevel=9) as f:
        f.write(raw[:-1] + b"\x00")
    assert export.image_digest(tmp_path / "a.nii") == export.image_digest(tmp_path / "b.nii.gz")
    assert export.image_digest(tmp_path / "c.nii.gz") != export.image_digest(tmp_path / "a.nii")


def test_the_leak_check_names_trained_participants_and_copied_images(encoder_export):
    _, out = encoder_export
    new = pd.DataFrame({"participant_id": ["sub-A2", "sub-N1", "sub-N2"], "session_id": ["ses-M000"] * 3,
                        "sha256": ["x", "d2", "y"]})
    with pytest.raises(LeakError) as err:
        leak_check(new, out, allow=False)
    msg = str(err.value)
    assert "2 participants" in msg and "sub-A2: id in the pretrain data" in msg
    assert "sub-N1: ses-M000 is the image of sub-A1 ses-M012 (pretrain)" in msg and "sub-N2" not in msg
    flags = leak_check(new, out, allow=True)
    assert flags[0] and flags[1] and flags[2] == ""
    assert leak_check(new.iloc[2:], out, allow=False) == [""]


def test_prediction_samples_are_the_task_tables_inputs():
    from sslad.labels import task_samples

    scans = pd.DataFrame({"participant_id": ["sub-B"] * 5 + ["sub-C"],
                          "session_id": ["ses-M024", "ses-M000", "ses-M006", "ses-M012", "ses-M036", "ses-M000"],
                          "days_from_baseline": [731, 0, 190, 370, 1100, 0],
                          "qc_pass": [True, True, True, False, True, True]})
    got = samples(scans, max_inputs=3)
    record = scans.assign(diagnosis="AD")
    usable = set(zip(scans.loc[scans["qc_pass"], "participant_id"], scans.loc[scans["qc_pass"], "session_id"]))
    want = task_samples(record, usable, "dx_cn_ad", 36, 3, False)
    cols = ["participant_id", "index_session", "input_sessions", "input_days", "n_inputs"]
    pd.testing.assert_frame_equal(got[cols], want[cols])
    assert got["input_sessions"].iloc[3] == "ses-M006;ses-M024;ses-M036"  # the failed scan is no input


def test_a_copied_export_still_loads(encoder_export, tmp_path):
    _, out = encoder_export
    shutil.copytree(out, tmp_path / "elsewhere")
    assert export.load(tmp_path / "elsewhere").description["name"] == "top pretrain seed 0"
