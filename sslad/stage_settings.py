"""The ``--settings`` of a stage run by hand, checked against the config schema the workflow uses.

The workflow validates config.yaml before any job runs, and each rule hands its job exactly the
blocks it uses. A user who runs ``sslad pretrain --settings ...`` by hand (to debug one job, on a
cluster node) bypasses that check; a misspelt key would otherwise be ignored or fail deep in training.
Here each heavy stage's settings are checked against the same schema (workflow/schemas/config.schema.yaml,
completed by :func:`sslad.registry.complete_schema`), and an error names the key.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sslad.registry import complete_schema

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base`` key by key, as Snakemake merges a ``--configfile`` over config.yaml
    (for scripts that read a study's config outside the workflow: the benchmarks)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merge_config(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict)
                    else value)
    return out


@functools.cache
def _config_schema() -> dict[str, Any]:
    return complete_schema(yaml.safe_load(SCHEMA.read_text()))


def _block(name: str, optional: tuple[str, ...] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config block's schema where the keys its rule does not pass are ``optional``, with the ones it adds."""
    s = copy.deepcopy(_config_schema()["properties"][name])
    s["required"] = [k for k in s.get("required", []) if k not in optional]
    s["properties"].update(extra or {})
    return s


def _pretrain(settings: dict[str, Any]) -> dict[str, Any]:
    """One pretraining run's settings (sslad.registry.pretrain_run_settings): the method's own block."""
    pre = _config_schema()["properties"]["pretrain"]["properties"]
    methods = pre["methods"]["properties"]
    method = settings.get("method")  # an unknown one: the enum below names it
    hp = copy.deepcopy(methods.get(method, {}))
    hp.get("properties", {}).pop("epochs", None)  # a block's own epochs arrive as train.epochs
    train = copy.deepcopy(pre["train"])
    train["properties"]["seed"] = {"type": "integer", "minimum": 0}
    train["required"] = [*train["required"], "seed"]
    recipe = pre["augment"]["properties"]["spatial"]
    return {"type": "object", "additionalProperties": False, "required": ["method", "hp", "model", "train", "augment"],
            "properties": {"method": {"enum": list(methods)}, "hp": hp,
                           "model": _config_schema()["properties"]["model"], "train": train,
                           "augment": {"type": "object", "additionalProperties": recipe}}}


def _finetune(settings: dict[str, Any], init: str) -> dict[str, Any]:
    """The fine-tuning block as the rules pass it (finetune_block in workflow/rules/common.smk): no
    n_bootstrap; the encoder for scratch; the fold ("" unless leave-one-cohort-out); modes and inputs
    only for schedule; a control job's inputs (study.controls)."""
    extra = {"model": _config_schema()["properties"]["model"], "heldout": {"type": "string"}}
    s = _block("finetune", ("n_bootstrap",), extra)
    controls = _config_schema()["properties"]["study"]["properties"]["controls"]["properties"]["inputs"]["items"]
    s["properties"]["inputs"] = {"enum": list(dict.fromkeys([*s["properties"]["inputs"]["enum"], *controls["enum"]]))}
    if init == "schedule":
        s["required"] = ["modes", "inputs"]
    elif init == "scratch":
        s["required"] = [*s["required"], "model"]
    s["required"] = [*s["required"], "heldout"]  # the fold's held-out cohort, "" in a pooled study
    return s


def _aggregate() -> dict[str, Any]:
    """Aggregation's settings: the bootstrap size (finetune.n_bootstrap) and study.primary."""
    props = _config_schema()["properties"]
    return {"type": "object", "additionalProperties": False, "required": ["n_bootstrap", "primary"],
            "properties": {"n_bootstrap": props["finetune"]["properties"]["n_bootstrap"],
                           "primary": props["study"]["properties"]["primary"]}}


# the stages whose settings are a few keys the rule always passes
_EXPORT = ("preprocess", "space", "max_inputs", "horizon_months", "export")
KEYS = {"template": ("template", "template_mask"), "pretrain-set": ("pretrain_splits", "exclude_cohorts"),
        "label-fraction": ("subsample_validation",), "export-encoder": _EXPORT,
        "export-finetuned": (*_EXPORT, "finetune")}


def _keys(keys: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "object", "required": list(keys)}


def check(stage: str, settings: dict[str, Any], init: str = "") -> None:
    """ValueError naming the first bad key of ``settings`` for ``stage``: the config blocks of simulate,
    preprocess, pretrain, finetune and aggregate, the keys of the stages in :data:`KEYS`."""
    schemas = {"simulate": lambda: _block("simulate"), "preprocess": lambda: _block("preprocess", ("qc",)),
               "pretrain": lambda: _pretrain(settings), "finetune": lambda: _finetune(settings, init),
               "aggregate": _aggregate,
               **{name: functools.partial(_keys, keys) for name, keys in KEYS.items()}}
    if stage not in schemas or not SCHEMA.exists():  # a wheel without the workflow: the workflow checked it
        return
    errors = sorted(jsonschema.Draft202012Validator(schemas[stage]()).iter_errors(settings),
                    key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = [str(p) for p in err.absolute_path]
        if err.validator == "required":  # name the missing key itself
            path.append(err.message.split("'")[1])
        key = ".".join(path) or "(top level)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ValueError(f"--settings key {key}: {err.message}{more}")
