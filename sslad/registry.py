"""The one list of pretraining methods (standard library only: the workflow reads it to build its
config schema and wildcard constraints, whatever environment Snakemake runs in).

Adding a method means writing its module under ``sslad/methods/`` and registering it here: the
config schema (its entry in ``pretrain.methods``, and every list of inits), the workflow's wildcard
constraints, the figures' colours and :func:`sslad.methods.build` follow from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    """Where a method's module lives, how its figures draw it and what its settings are."""

    module: str                 # importable module holding the class
    cls: str                    # the torch module's class name (see sslad.methods.Batch)
    colour: str                 # matplotlib colour in every figure
    settings: dict[str, Any]    # JSON schema of its block under pretrain.methods in config.yaml


_RECIPE = {"enum": ["spatial", "temporal"],
           "description": "augmentation recipe (pretrain.augment) of the method's inputs"}
_N_SCANS = {"type": "integer", "minimum": 2, "maximum": 16, "description": "scans per subject sequence"}
_TEMPERATURE = {"type": "number", "exclusiveMinimum": 0, "description": "NT-Xent / softmax temperature"}
_PROJECTION = {"type": "integer", "minimum": 2, "description": "projection head output size"}
_HIDDEN = {"type": "integer", "minimum": 1, "description": "hidden units of the order classifier"}
_EPOCHS = {"type": "integer", "minimum": 1,
           "description": "this method's epochs, when not pretrain.train.epochs (an epoch is one pass over "
                          "the method's units: a temporal method's are subjects, a few steps per epoch)"}


def _block(description: str, **properties: dict[str, Any]) -> dict[str, Any]:
    """A method's settings: ``properties`` required, and an optional ``epochs`` of its own."""
    return {"type": "object", "additionalProperties": False, "description": description,
            "required": list(properties), "properties": {**properties, "epochs": _EPOCHS}}


METHODS: dict[str, Method] = {
    "simclr": Method("sslad.methods.simclr", "SimCLR", "tab:blue",
                     _block("spatial contrastive (SimCLR) on two views of each scan",
                            temperature=_TEMPERATURE, projection_dim=_PROJECTION, augment=_RECIPE)),
    "top": Method("sslad.methods.top", "TOP", "tab:orange",
                  _block("temporal order prediction over the pairs of n_scans visits",
                         n_scans=_N_SCANS, hidden=_HIDDEN, augment=_RECIPE)),
    "tcl": Method("sslad.methods.tcl", "TCL", "tab:green",
                  _block("temporal contrastive: one visit carried over a time gap picks out the visit at "
                         "that gap, the subject's other visits among the negatives",
                         n_scans=_N_SCANS, temperature=_TEMPERATURE, projection_dim=_PROJECTION, augment=_RECIPE)),
    "tmp": Method("sslad.methods.tmp", "TMP", "tab:purple",
                  _block("masked temporal prediction of one of n_scans embeddings, the subject's other "
                         "visits among the candidates",
                         n_scans=_N_SCANS, temperature=_TEMPERATURE, augment=_RECIPE)),
    "topc": Method("sslad.methods.topc", "TOPC", "tab:red",
                   _block("top's loss plus spatial_weight x simclr's on two views of scans drawn as simclr's",
                          n_scans=_N_SCANS, hidden=_HIDDEN, temperature=_TEMPERATURE, projection_dim=_PROJECTION,
                          spatial_weight={"type": "number", "minimum": 0,
                                          "description": "weight of the spatial contrastive term"},
                          augment=_RECIPE,
                          spatial_augment={**_RECIPE, "description": "recipe of the contrastive views"})),
}

# initialisations that are not pretraining methods: random weights, and an imported checkpoint
OTHER_INITS: dict[str, str] = {"scratch": "black", "external": "tab:brown"}


def inits() -> list[str]:
    """Every valid fine-tuning init: scratch, the registered methods, external."""
    return ["scratch", *METHODS, "external"]


def colours() -> dict[str, str]:
    """Fixed colour of every init, so that a method looks the same in every figure and run."""
    return {**OTHER_INITS, **{name: m.colour for name, m in METHODS.items()}}


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The config schema with the registry's parts filled in: each method's settings block under
    pretrain.methods, and the allowed values of every key that names an init."""
    props = schema["properties"]
    methods = props["pretrain"]["properties"]["methods"]
    methods["properties"] = {name: m.settings for name, m in METHODS.items()}
    methods["required"] = list(METHODS)
    study = props["study"]["properties"]
    study["inits"]["items"]["enum"] = inits()
    for key in ("init", "reference"):
        study["primary"]["properties"][key]["enum"] = inits()
    return schema
