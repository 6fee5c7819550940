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
_CENTER = {"type": "boolean",
           "description": "NT-Xent on unit projections centred over the global batch: on for an encoder without "
                          "batch norm (its features start nearly parallel), off with batch norm (the standard loss)"}
_EPOCHS = {"type": "integer", "minimum": 1,
           "description": "this method's epochs, when not pretrain.train.epochs (an epoch is one pass over "
                          "the method's units: a temporal method's are subjects, a few steps per epoch)"}


def _block(description: str, optional: dict[str, Any] | None = None, **properties: dict[str, Any]) -> dict[str, Any]:
    """A method's settings: ``properties`` required; the ``optional`` ones and ``epochs`` of its own may
    be left out."""
    return {"type": "object", "additionalProperties": False, "description": description,
            "required": list(properties), "properties": {**properties, **(optional or {}), "epochs": _EPOCHS}}


def _pair(description: str, low: float, high: float) -> dict[str, Any]:
    """A [start, end] (or [lo, hi]) setting, each number in [low, high]."""
    return {"type": "array", "minItems": 2, "maxItems": 2, "description": description,
            "items": {"type": "number", "minimum": low, "maximum": high}}


_SLICE_ENCODER = _block(
    "2D ResNet (the model block's layout in 2D) over axial slices; a scan's features are the mean of its "
    "slice features over the slices whose brain covers at least min_brain_fraction of the slice",
    depth={"enum": [10, 18, 34], "description": "ResNet depth"},
    widths={"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "integer", "minimum": 8, "multipleOf": 8},
            "description": "channels of the four stages; the last is the feature size"},
    stem_kernel={"type": "integer", "minimum": 1, "maximum": 9, "description": "first convolution's kernel"},
    stem_stride={"type": "integer", "minimum": 1, "maximum": 4, "description": "first convolution's stride"},
    max_pool={"type": "boolean", "description": "3x3 max-pool after the stem"},
    norm={"enum": ["batch", "group", "instance"], "description": "normalisation layers"},
    min_brain_fraction={"type": "number", "minimum": 0, "maximum": 1,
                        "description": "share of a slice in the brain (non-zero) for the slice to count"})


METHODS: dict[str, Method] = {
    "simclr": Method("sslad.methods.simclr", "SimCLR", "tab:blue",
                     _block("spatial contrastive (SimCLR) on two views of each scan",
                            temperature=_TEMPERATURE, projection_dim=_PROJECTION, augment=_RECIPE, center=_CENTER)),
    "top": Method("sslad.methods.temporal_order", "TOP", "tab:orange",
                  _block("temporal order prediction over the pairs of n_scans visits",
                         n_scans=_N_SCANS, hidden=_HIDDEN, augment=_RECIPE)),
    "tcl": Method("sslad.methods.temporal_contrastive", "TCL", "tab:green",
                  _block("temporal contrastive: one visit carried over a time gap picks out the visit at "
                         "that gap, the subject's other visits among the negatives",
                         n_scans={**_N_SCANS, "minimum": 3,
                                  "description": "visits per sampled sequence: at least 3 (a query needs a "
                                                 "candidate visit of its subject besides the target)"},
                         temperature=_TEMPERATURE, projection_dim=_PROJECTION, augment=_RECIPE)),
    "tmp": Method("sslad.methods.masked_temporal", "TMP", "tab:purple",
                  _block("masked temporal prediction: every split of n_scans visits into context and two or "
                         "more hidden ones, each hidden visit picked out from the context and all times among "
                         "the other hidden visits and other subjects' scans",
                         n_scans={**_N_SCANS, "minimum": 3, "maximum": 8,
                                  "description": "visits per sampled sequence: at least 3 (a context and two "
                                                 "hidden), at most 8 (queries grow as n_scans x 2^(n_scans-1))"},
                         temperature=_TEMPERATURE, projection_dim=_PROJECTION, augment=_RECIPE)),
    "topc": Method("sslad.methods.order_and_contrast", "TOPC", "tab:red",
                   _block("top's loss plus spatial_weight x simclr's on two views of scans drawn as simclr's",
                          n_scans=_N_SCANS, hidden=_HIDDEN, temperature=_TEMPERATURE, projection_dim=_PROJECTION,
                          spatial_weight={"type": "number", "minimum": 0,
                                          "description": "weight of the spatial contrastive term"},
                          augment=_RECIPE,
                          spatial_augment={**_RECIPE, "description": "recipe of the contrastive views"},
                          center=_CENTER)),
    "dino2d": Method("sslad.methods.dino2d", "DINO2D", "tab:olive",
                     _block("DINO self-distillation (BrainDINO's route) of a 2D encoder on multi-crops of axial "
                            "slices; fine-tuning reads its slice features pooled over the brain's slices",
                            slice_encoder=_SLICE_ENCODER,
                            slices_per_scan={"type": "integer", "minimum": 1,
                                             "description": "random brain slices of each scan per step"},
                            local_crops={"type": "integer", "minimum": 0,
                                         "description": "local crops per slice, beside the 2 global ones"},
                            global_scale=_pair("area of a global crop, a share of the slice's [lo, hi]", 0.01, 1),
                            local_scale=_pair("area of a local crop, a share of the slice's [lo, hi]", 0.01, 1),
                            local_size={"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                        "description": "side of a local crop after resizing, a share of the slice's"},
                            jitter={"type": "number", "minimum": 0, "maximum": 1,
                                    "description": "largest brightness and contrast change of a crop (p 0.8)"},
                            out_dim={"type": "integer", "minimum": 2, "description": "logits of the DINO head"},
                            hidden={"type": "integer", "minimum": 1, "description": "hidden units of the DINO head"},
                            bottleneck={"type": "integer", "minimum": 1,
                                        "description": "L2-normalised bottleneck of the DINO head"},
                            head_batch_norm={"type": "boolean",
                                             "description": "batch norm in the head's hidden layers (DINO's "
                                                            "use_bn_in_head)"},
                            student_temperature=_TEMPERATURE,
                            teacher_temperature=_pair("teacher softmax temperature [start, end of warm-up]; "
                                                      "below the student's: sharpening", 0.001, 10),
                            teacher_warmup={"type": "number", "minimum": 0, "maximum": 1,
                                            "description": "share of the run over which the teacher temperature rises"},
                            momentum=_pair("teacher EMA momentum [first step, last step], a cosine between", 0, 1),
                            center_momentum={"type": "number", "minimum": 0, "maximum": 1,
                                             "description": "EMA momentum of the centre of the teacher's outputs"},
                            augment=_RECIPE)),
}

# initialisations that are not pretraining methods: random weights, an imported checkpoint, and the
# schedule-only baseline (no image: sslad.schedule), which every study runs as the reference
OTHER_INITS: dict[str, str] = {"scratch": "black", "external": "tab:brown", "schedule": "tab:gray"}


def inits() -> list[str]:
    """Every valid fine-tuning init: scratch, the registered methods, external, schedule."""
    return ["scratch", *METHODS, "external", "schedule"]


def colours() -> dict[str, str]:
    """Fixed colour of every init, so that a method looks the same in every figure and run."""
    return {**OTHER_INITS, **{name: m.colour for name, m in METHODS.items()}}


def pretrain_run_settings(cfg: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    """Everything one pretraining run depends on, from a validated config: its method's own block, the
    shared training settings with the run's seed (one of pretrain.seeds), the augmentation recipes its
    block names and the encoder; never another method's block, a recipe it does not use or a resource.
    A block's own ``epochs`` becomes the run's train.epochs (so editing train.epochs reruns only the
    methods that use it). The workflow passes it to the job as the rule's ``params`` (editing any part
    reruns the run), and the benchmarks build their jobs from it."""
    pre = cfg["pretrain"]
    own = pre["methods"][method]
    hp = {k: v for k, v in own.items() if k != "epochs"}
    train = {**pre["train"], "seed": int(seed), **({"epochs": own["epochs"]} if "epochs" in own else {})}
    recipes = sorted({hp[key] for key in ("augment", "spatial_augment") if key in hp})
    return {"method": method, "hp": hp, "model": cfg["model"], "train": train,
            "augment": {name: pre["augment"][name] for name in recipes}}


def complete_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The config schema with the code's lists filled in: each method's settings block under
    pretrain.methods, the allowed values of every key that names an init, and of every key that names a
    task (sslad.labels.TASKS: a task is added there, and nowhere else in the code)."""
    from sslad.labels import TASKS  # numpy and pandas: not at import, the workflow reads this module first

    props = schema["properties"]
    methods = props["pretrain"]["properties"]["methods"]
    methods["properties"] = {name: m.settings for name, m in METHODS.items()}
    methods["required"] = list(METHODS)
    study = props["study"]["properties"]
    study["inits"]["items"]["enum"] = inits()
    study["probe_only"]["items"]["enum"] = list(METHODS)
    study["tasks"]["items"]["enum"] = list(TASKS)
    study["controls"]["properties"]["tasks"]["items"]["enum"] = list(TASKS)
    for key in ("init", "reference"):
        study["primary"]["properties"][key]["enum"] = inits()
    return schema
