"""The shipped configurations validate against the schema and say what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from sslad.registry import complete_schema

ROOT = Path(__file__).resolve().parents[1]


def merged(*files: str) -> dict:
    """Merge config files the way Snakemake's --configfile does (nested dicts updated)."""
    def update(base: dict, new: dict) -> dict:
        for key, value in new.items():
            base[key] = update(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    cfg: dict = {}
    for f in files:
        update(cfg, yaml.safe_load((ROOT / f).read_text()))
    return cfg


def validate(cfg: dict) -> None:
    schema = complete_schema(yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text()))
    jsonschema.Draft202012Validator(schema).validate(cfg)


def test_default_tiny_and_paper_configs_validate():
    for files in (["config.yaml"], ["config.yaml", ".test/config.yaml"], ["config.yaml", "config/paper.yaml"]):
        validate(merged(*files))


def test_paper_config_is_the_paper_scale_grid():
    cfg = merged("config.yaml", "config/paper.yaml")
    assert len(cfg["study"]["tasks"]) == 7
    assert cfg["study"]["label_fractions"] == [0.01, 0.1, 0.2, 0.5, 1.0]
    assert len(cfg["study"]["seeds"]) >= 3
    assert set(cfg["study"]["inits"]) >= {"scratch", "simclr", "top", "tcl", "tmp", "topc"}
    assert cfg["preprocess"]["voxel_mm"] == 1.0 and cfg["simulate"]["resolution_mm"] == 1
    assert cfg["preprocess"]["crop_mm"] == {"x": [-76, 76], "y": [-112, 80], "z": [-64, 88]}  # whole brain
    assert (cfg["model"]["depth"], cfg["model"]["widths"][-1], cfg["model"]["stem_stride"]) == (18, 512, 1)
    spatial = cfg["pretrain"]["augment"]["spatial"]  # 3D-Neuro-SimCLR's views (its main.py; no shift: see the file)
    assert spatial == {"min_crop": 0.2, "p_flip": 0.5, "p_rotate": 0.5, "max_rotate_deg": 45, "p_gamma": 0.8,
                       "gamma": [0.5, 1.5], "p_shift": 0.0, "shift": 0.5}
    methods = cfg["pretrain"]["methods"]  # its NT-Xent: no centring of the projections
    assert methods["simclr"]["center"] is False and methods["topc"]["center"] is False


def test_overlays_set_the_epochs_of_methods_that_have_their_own():
    """config.yaml's temporal methods set their own epochs for its demo; an overlay that changes
    train.epochs must set theirs too, or they keep the demo's 100 (paper: 300, tiny study: 2)."""
    for overlay in (".test/config.yaml", "config/paper.yaml", "config/validation.yaml"):
        cfg = merged("config.yaml", overlay)
        pre = cfg["pretrain"]
        used = [m for m in ("simclr", *cfg["study"]["inits"]) if m in pre["methods"]]
        assert {m: pre["methods"][m].get("epochs", pre["train"]["epochs"]) for m in used} == \
            dict.fromkeys(used, pre["train"]["epochs"]), overlay


def test_every_config_key_has_a_description():
    schema = complete_schema(yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text()))
    missing = []

    def walk(node: dict, path: str) -> None:
        if "description" not in node:
            missing.append(path)
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}".lstrip("."))

    for key, sub in schema["properties"].items():
        walk(sub, key)
    assert not missing
    augment = schema["properties"]["pretrain"]["properties"]["augment"]["properties"]
    assert augment["temporal"]["required"] == augment["spatial"]["required"]  # one recipe schema, two blocks


def test_a_config_written_before_pooled_cohorts_still_validates():
    """An old config.yaml: a single `cohort:` block with its diagnosis map, no `cohorts`, no shared
    diagnosis map, no simulate.contrast, no study.evaluation: read as one cohort, pooled, contrast 1."""
    from sslad.cohort import convert_single_cohort, resolve_cohorts

    cfg = merged("config.yaml")
    aliases = cfg.pop("diagnosis_aliases")
    del cfg["cohorts"], cfg["simulate"]["contrast"], cfg["study"]["evaluation"]
    cfg["cohort"] = {"bids_dir": "", "name": "simulated", "strict": False, "diagnosis_aliases": aliases}
    assert "read as `cohorts: [{name: simulated" in convert_single_cohort(cfg)
    validate(cfg)
    (cohort,) = resolve_cohorts(cfg)
    assert cohort["simulate"]["contrast"] == 1.0 and cohort["diagnosis_aliases"] == aliases


def test_tasks_are_listed_once_in_the_code_and_nowhere_in_the_schema():
    """sslad/labels.py's TASKS is the one list of tasks: the schema names none and gets its enums from it,
    so that adding a task there (and to study.tasks) is all the configuration needs."""
    import pytest

    from sslad.labels import TASKS

    text = (ROOT / "workflow/schemas/config.schema.yaml").read_text()
    assert not [task for task in TASKS if task in text]
    schema = complete_schema(yaml.safe_load(text))
    study = schema["properties"]["study"]["properties"]
    assert study["tasks"]["items"]["enum"] == list(TASKS)
    assert study["controls"]["properties"]["tasks"]["items"]["enum"] == list(TASKS)
    cfg = merged("config.yaml")
    cfg["study"]["tasks"] = ["dx_cn_ad", "dx_cn_vd"]
    with pytest.raises(jsonschema.ValidationError, match="dx_cn_vd"):
        validate(cfg)


def test_schema_checks_center_tcl_visits_and_the_shift():
    """simclr's and topc's ``center`` is a required boolean; tcl needs 3 visits per sequence (of two,
    identity alone would find the target); a recipe states its shift."""
    import pytest

    def check(edit) -> None:
        cfg = merged("config.yaml")
        edit(cfg["pretrain"])
        validate(cfg)

    for method in ("simclr", "topc"):
        for value in (True, False):
            check(lambda p: p["methods"][method].update(center=value))
        with pytest.raises(jsonschema.ValidationError, match="'yes' is not of type 'boolean'"):
            check(lambda p: p["methods"][method].update(center="yes"))
    with pytest.raises(jsonschema.ValidationError, match="'center' was unexpected"):
        check(lambda p: p["methods"]["top"].update(center=True))
    with pytest.raises(jsonschema.ValidationError, match="2 is less than the minimum of 3"):
        check(lambda p: p["methods"]["tcl"].update(n_scans=2))
    check(lambda p: p["augment"]["spatial"].update(p_shift=0.8, shift=0.5))
    with pytest.raises(jsonschema.ValidationError, match="'shift' is a required property"):
        check(lambda p: p["augment"]["temporal"].pop("shift"))
    with pytest.raises(jsonschema.ValidationError, match="'center' is a required property"):
        check(lambda p: p["methods"]["simclr"].pop("center"))


def test_a_stage_run_by_hand_checks_its_settings_naming_the_key():
    """`sslad <stage> --settings` by hand: the settings the workflow passes are accepted, a misspelt or
    out-of-range key is refused before any work, the message naming it (sslad.stage_settings)."""
    import pytest

    from sslad.cli import main
    from sslad.registry import pretrain_run_settings
    from sslad.stage_settings import check

    cfg = merged("config.yaml")
    for method in cfg["pretrain"]["methods"]:
        check("pretrain", pretrain_run_settings(cfg, method, 0))
    ft = {k: v for k, v in cfg["finetune"].items() if k != "n_bootstrap"} | {"heldout": ""}
    check("finetune", {**ft, "model": cfg["model"]}, "scratch")
    check("finetune", ft, "topc")
    check("finetune", {**ft, "inputs": "time_shuffled", "heldout": "SiteA"}, "topc")  # a control job's, a fold's
    check("finetune", {"modes": ft["modes"], "inputs": ft["inputs"], "heldout": ""}, "schedule")
    check("preprocess", {k: v for k, v in cfg["preprocess"].items() if k != "qc"})
    check("simulate", cfg["simulate"])
    bad = pretrain_run_settings(cfg, "top", 0)
    bad["hp"] = {**bad["hp"], "hiden": 64}
    with pytest.raises(ValueError, match=r"key hp: Additional properties .*'hiden'"):
        check("pretrain", bad)
    good = pretrain_run_settings(cfg, "top", 0)
    with pytest.raises(ValueError, match=r"key train.lr: -1 is less than or equal"):
        check("pretrain", {**good, "train": {**good["train"], "lr": -1}})
    with pytest.raises(ValueError, match="key model"):  # scratch builds its encoder from the settings
        check("finetune", ft, "scratch")
    with pytest.raises(ValueError, match="key epochs"):
        check("finetune", {**ft, "epochs": "ten"}, "topc")
    with pytest.raises(ValueError, match="key exclude_cohorts: 'exclude_cohorts' is a required property"):
        check("pretrain-set", {"pretrain_splits": ["train"]})
    assert main(["pretrain", "--settings", json.dumps(bad), "--pretrain", "p", "--visits", "v", "--splits", "s",
                 "--encoder", "e", "--metrics", "m", "--checkpoint", "c"]) == 1
