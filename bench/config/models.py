"""The run configuration as typed pydantic models: `RunConfig` and its sections.

Each key is declared once here, with its default, its type and range or choices; the rules
that join keys (m_per_class divides batch_size, eval.metrics are metric names, select_by is a
computed metric) are validators of the models. `RunConfig.from_dict` turns pydantic's
ValidationError into the one-line UserError the CLI prints: "invalid config value
SECTION.KEY=VALUE; allowed: WHAT", where WHAT is derived from the field's declaration.

Why pydantic rather than frozen dataclasses: it validates types, ranges and choices from the
annotations (the rules are not hand-written twice), reports where a value is wrong, and exports
a JSON schema (`RunConfig.model_json_schema()`) for editors and documentation; frozen
dataclasses would need every range, choice and message written by hand again.

Why the plain dict stays the engine's form: 150+ call sites read `cfg["train"]["lr"]`, some
deep-copy and amend a config (folds, smoke runs, suites), and records and fingerprints hash the
dict; `RunConfig` validates and documents that dict, `to_dict()` gives it back unchanged.

The models are strict (no "3" -> 3, no 1 -> True) so that a config keeps the values a user
wrote: a float key given an integer keeps the integer, and `model_dump` reproduces the dict the
rest of the code reads (`cfg["train"]["lr"]`) and that run fingerprints hash. One leniency: an
integer key given an integral float (`epochs: 10.0`) gets the integer.
"""
from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import annotated_types as at
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt,
                      ValidationError, model_validator)
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

from dmlbench.bench.errors import UserError


class Allowed:
    """Annotation metadata: the "allowed" text of a key whose type says it poorly."""

    def __init__(self, text: str) -> None:
        self.text = text


def _integral(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


Int = Annotated[StrictInt, BeforeValidator(_integral)]
# an int stays an int, a float a float: the dict (and its fingerprint) keeps what was written
Number = Union[StrictInt, StrictFloat]
PositiveInts = Annotated[list[Annotated[StrictInt, Field(gt=0)]], Field(strict=False)]
FreeForm = Annotated[dict[Any, Any], Allowed("a mapping of name: value")]
NonEmpty = Annotated[str, Field(min_length=1)]
Tracker = Literal["tensorboard", "mlflow", "wandb"]


def rule_error(message: str) -> PydanticCustomError:
    """A cross-key rule's failure; `message` is the whole line the user reads."""
    return PydanticCustomError("dmlbench_rule", "{message}", {"message": message})


_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


class JsonSchema(GenerateJsonSchema):
    """Standard JSON-schema bounds where pydantic writes its own (`gt`, `le`) for constraints
    on unions and validated types; "integer or number" is "number"."""

    def generate(self, schema: Any, mode: Any = "validation") -> Any:
        return _standard(super().generate(schema, mode))


def _standard(node: Any) -> Any:
    if isinstance(node, list):
        return [_standard(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {_BOUNDS.get(k, k) if not isinstance(v, (dict, list)) else k: _standard(v)
           for k, v in node.items()}
    if out.get("anyOf") == [{"type": "integer"}, {"type": "number"}]:
        del out["anyOf"]
        out["type"] = "number"
    return out


class TypedModel(BaseModel):
    """A model whose `model_json_schema()` uses the standard bounds (`JsonSchema`)."""

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("schema_generator", JsonSchema)
        return super().model_json_schema(*args, **kwargs)


class _Section(TypedModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


class DatasetConfig(_Section):
    """Which dataset, and how its images are prepared."""

    name: NonEmpty = "glyphs"
    root: Optional[NonEmpty] = None
    image_size: Annotated[Int, Field(ge=8, le=1024)] = 32
    transforms: Literal["default", "mlrc", "conventional"] = Field(
        "default", description="generic RGB crops, or the papers' exact pipelines")
    cache: Literal["none", "host", "device"] = Field(
        "none", description="images decoded once into a cache, cropped on the device")
    options: FreeForm = Field(default_factory=dict, description="loader-specific options")


class ModelConfig(_Section):
    """The trunk and the embedder."""

    trunk: NonEmpty = "smallcnn"
    embedding_size: Annotated[Int, Field(ge=1, le=1 << 16)] = 64
    pretrained: bool = False
    pooling: Literal["avg", "avgmax"] = "avg"
    freeze_bn: bool = False
    freeze_bn_affine: bool = Field(False, description="with freeze_bn: also fix BN's affine")
    weights: Optional[NonEmpty] = Field(None, description="a local weights file for the trunk")
    normalize_train: bool = False
    width: Annotated[Int, Field(ge=1, le=4096)] = Field(
        32, description="base channel count of the small CNN")


class MethodConfig(_Section):
    """The compared method (a registry name) and its parameters (checked by the registry)."""

    name: NonEmpty = "normsoftmax"
    params: FreeForm = Field(default_factory=dict)


Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:.*)$"),
                   Allowed("auto, cpu, cuda or cuda:N")]


class TrainConfig(_Section):
    """Optimisation, schedule, sampling, selection and execution of the training loop."""

    batch_size: Annotated[Int, Field(ge=2, le=1 << 16)] = 64
    m_per_class: Annotated[Optional[Int], Field(ge=1, le=1 << 12)] = None
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: Annotated[Number, Field(gt=0, le=10)] = 1e-3
    embedder_lr: Annotated[Optional[Number], Field(gt=0, le=10)] = None
    weight_decay: Annotated[Number, Field(ge=0, le=1)] = 1e-4
    momentum: Annotated[Number, Field(ge=0, le=1)] = 0.9
    eps: Annotated[Number, Field(gt=0, le=1)] = 1e-8
    schedule: Literal["none", "step", "multistep", "cosine"] = "none"
    milestones: Annotated[PositiveInts, Allowed("a list of positive epoch numbers")] = Field(
        default_factory=list)
    gamma: Annotated[Number, Field(gt=0, le=1)] = 0.1
    step_size: Annotated[Int, Field(ge=1)] = 10
    epochs: Annotated[Int, Field(ge=1, le=1 << 20)] = 10
    iterations_per_epoch: Annotated[Optional[Int], Field(ge=1, le=1 << 30)] = None
    eval_every: Annotated[Int, Field(ge=1)] = 1
    patience: Annotated[Optional[Int], Field(ge=0)] = None
    select_by: NonEmpty = "precision_at_1"
    augment: bool = True
    amp: bool = False
    device: Device = "auto"
    num_workers: Annotated[Int, Field(ge=0, le=256)] = 0
    max_grad_norm: Annotated[Optional[Number], Field(gt=0)] = None
    progress: bool = True
    deterministic: bool = True
    threads: Annotated[Optional[Int], Field(ge=1, le=1024)] = None
    log_every: Annotated[Int, Field(ge=1, le=1 << 20)] = Field(
        10, description="iterations per training-log line")
    trackers: Annotated[list[Tracker], Field(strict=False), Allowed(
        "a list of distinct names from tensorboard, mlflow, wandb, e.g. [tensorboard]")] = Field(
        default_factory=list, description="experiment trackers fed with the training log")

    @model_validator(mode="after")
    def _rules(self) -> "TrainConfig":
        if len(set(self.trackers)) != len(self.trackers):
            raise rule_error(f"invalid config value train.trackers={self.trackers!r}; allowed: "
                             + allowed_text(TrainConfig.model_fields["trackers"]))
        m = self.m_per_class
        if m is not None and self.batch_size % m != 0:
            raise rule_error(f"train.m_per_class={m} does not divide train.batch_size="
                             f"{self.batch_size}; choose a batch size that is a multiple of it")
        return self


class EvalConfig(_Section):
    """What an evaluation computes."""

    batch_size: Annotated[Int, Field(ge=1, le=1 << 20)] = 512
    recall_ks: Annotated[PositiveInts, Allowed("a list of positive integers, e.g. [1, 2, 4, 8]")
                         ] = Field(default_factory=lambda: [1, 2, 4, 8])
    metrics: Annotated[Optional[list[str]], Field(strict=False),
                       Allowed("null or a list of metric names")] = None
    kmeans_init: Literal["kmeans++", "random"] = Field(
        "kmeans++", description="NMI / F1 k-means start: k-means++, or the papers' random")

    @model_validator(mode="after")
    def _metric_names(self) -> "EvalConfig":
        from dmlbench.bench.evaluate import metric_keys

        valid = metric_keys(tuple(self.recall_ks))
        for name in self.metrics or ():
            if name not in valid:
                raise rule_error(f"invalid config value eval.metrics: unknown metric {name!r}; "
                                 f"valid metrics: {', '.join(valid)}")
        return self

    def computed(self) -> list[str]:
        """The metric names an evaluation of this config returns."""
        from dmlbench.bench.evaluate import metric_keys

        return list(self.metrics) if self.metrics is not None else metric_keys(
            tuple(self.recall_ks))


class RunSection(_Section):
    """Seed, protocol and where the run is written."""

    seed: Annotated[Int, Field(ge=0, le=2 ** 32 - 1)] = 0
    protocol: Literal["conventional", "mlrc"] = "conventional"
    output: NonEmpty = "runs"
    name: Optional[NonEmpty] = None


class RunConfig(_Section):
    """One run's configuration. The rest of dmlbench reads its plain-dict form (`to_dict`)."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    run: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _select_by_computed(self) -> "RunConfig":
        computed = self.eval.computed()
        if self.train.select_by not in computed:
            raise rule_error(f"invalid config value train.select_by={self.train.select_by!r}; "
                             f"allowed: one of the computed metrics: {', '.join(computed)}")
        return self

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> "RunConfig":
        """Validate a (possibly partial) nested dict; missing keys take their defaults.
        Raises UserError naming the first wrong key, its value and what is allowed."""
        try:
            return cls.model_validate(cfg)
        except ValidationError as e:
            raise to_user_error(e, cfg) from None

    def to_dict(self) -> dict[str, Any]:
        """The plain nested dict, keys in declaration order (what `load_config` returns)."""
        return self.model_dump(mode="python")


SECTIONS: dict[str, type[_Section]] = {
    name: f.annotation for name, f in RunConfig.model_fields.items()}  # type: ignore[misc]


def unknown_section(sec: Any, prefix: str = "") -> UserError:
    return UserError(f"unknown config section {prefix}{sec!r}; valid sections: "
                     + ", ".join(SECTIONS))


def unknown_key(sec: str, key: Any, prefix: str = "") -> UserError:
    return UserError(f"unknown config key {prefix}{sec}.{key}; valid keys in {sec}: "
                     + ", ".join(SECTIONS[sec].model_fields))


def not_a_mapping(sec: Any, value: Any, prefix: str = "") -> UserError:
    return UserError(f"config section {prefix}{sec!r} must be a mapping, got {value!r}")


def to_user_error(exc: ValidationError, data: Any) -> UserError:
    """The first error of `exc` (in key order) as the one line a user reads."""
    err = exc.errors()[0]
    loc, kind = err["loc"], err["type"]
    if kind == "dmlbench_rule":
        return UserError(err["msg"])
    if not isinstance(data, dict):
        return UserError(f"a config must be a mapping of sections, got {data!r}")
    sec = loc[0]
    if kind == "extra_forbidden":
        return unknown_section(sec) if len(loc) == 1 else unknown_key(sec, loc[1])
    if len(loc) == 1:
        return not_a_mapping(sec, data.get(sec))
    key = loc[1]
    value = data[sec][key]
    return UserError(f"invalid config value {sec}.{key}={value!r}; allowed: "
                     + allowed_text(SECTIONS[sec].model_fields[key]))


def _flat(ann: Any) -> list[Any]:
    """The leaf types of an annotation (through Annotated and unions)."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _flat(get_args(ann)[0])
    if origin is Union or origin is types.UnionType:
        return [t for a in get_args(ann) for t in _flat(a)]
    return [ann]


def allowed_text(info: FieldInfo) -> str:
    """What a key allows, in words, from its declaration ("an integer >= 1 or null")."""
    for m in info.metadata:
        if isinstance(m, Allowed):
            return m.text
    leaves = _flat(info.annotation)
    none_ok = type(None) in leaves
    leaves = [t for t in leaves if t is not type(None)]
    if get_origin(leaves[0]) is Literal:
        text = "one of " + ", ".join(map(str, get_args(leaves[0])))
    elif bool in leaves:
        text = "true or false"
    elif str in leaves:
        text = "a non-empty string"
    else:
        text = "a number" if float in leaves else "an integer"
        lo = next((m for m in info.metadata if isinstance(m, (at.Ge, at.Gt))), None)
        hi = next((m.le for m in info.metadata if isinstance(m, at.Le)), None)
        rng = ""
        if lo is not None:
            rng = f" >= {lo.ge}" if isinstance(lo, at.Ge) else f" > {lo.gt}"
        if hi is not None:
            rng += f"{' and' if rng else ''} <= {hi}"
        text += rng
    return text + (" or null" if none_ok else "")
