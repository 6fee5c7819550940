"""Fine-tuning job edges: a task that cannot be evaluated is reported, scores round-trip exactly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from sslad import finetune
from sslad.aggregate import PREDICTION_COLUMNS
from sslad.io import write_tsv
from sslad.metrics import auc


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


def test_task_without_both_classes_is_skipped_with_its_reason(tmp_path):
    task_tsv, frac_tsv = _tables(tmp_path, [1, 1, 1])  # test: 3 positives, 0 negatives
    settings = {"device": "cpu", "inputs": "history", "modes": ["full"]}
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
