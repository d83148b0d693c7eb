"""The suite file format: `SuiteSpec` (a pydantic model of a suite file, its `RunEntry`s and
its `MlrcPart`), loading a suite by shipped name or YAML path, and the planned units of work
(`PlannedRun`, `PlannedStudy`). Each rule is declared once, in the models; `SuiteSpec.from_dict`
turns pydantic's errors into one-line UserErrors naming the suite, the key and what is allowed.
The run configs inside a suite are partial and checked by `bench.config` when planned."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      StrictFloat, StrictInt, ValidationError, field_validator, model_validator)

from dmlbench.bench import config as C
from dmlbench.bench.config.models import Allowed, TypedModel, allowed_text, rule_error
from dmlbench.bench.errors import UserError

NonEmpty = Annotated[str, Field(min_length=1)]
Mapping = Annotated[Optional[dict[Any, Any]], Allowed("a mapping")]
Seeds = Annotated[list[Annotated[StrictInt, Field(ge=0, lt=2 ** 32)]], Field(min_length=1)]


def _as_entry(r: Any) -> Any:
    """A run given as a bare method name is `{method: NAME}`."""
    return {"method": r} if isinstance(r, str) else r


class _Strict(TypedModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RunEntry(_Strict):
    """One run of a suite: a method, its parameters and config, on some of the datasets."""

    method: str
    params: Mapping = None
    config: Mapping = None
    name: Optional[str] = None
    space: Annotated[Optional[dict[Any, Any]],
                     Allowed("a mapping param: range or value (MLRC runs only)")] = None
    datasets: Annotated[Optional[list[NonEmpty]], Field(min_length=1)] = None


Runs = Annotated[list[Annotated[RunEntry, BeforeValidator(_as_entry)]], Field(min_length=1)]


def _dataset_config(dc: Any) -> Any:
    """Config sections per dataset: each section and key must exist in the run config."""
    for ds, sections in (dc or {}).items():
        try:
            C.merge(C.defaults(), sections or {}, prefix=f"suite dataset_config.{ds}.")
        except UserError as e:
            raise rule_error(str(e)) from None
    return dc


# config sections per dataset, checked against the run config's sections and keys
DatasetSections = Annotated[Optional[dict[Any, Optional[dict[Any, Any]]]],
                            AfterValidator(_dataset_config)]


class MlrcPart(_Strict):
    """The MLRC experiment of a conventional suite (its keys override the suite's)."""

    description: Optional[str] = None
    runs: Runs
    dataset_config: DatasetSections = None
    datasets: Optional[list[NonEmpty]] = None
    config: Mapping = None
    report: Mapping = None
    search: Mapping = None


class LaunchSpec(_Strict):
    """Per-job resources of `dmlbench launch` for this suite (its flags override each key)."""

    workers: Annotated[Optional[StrictInt], Field(ge=1)] = None
    gpus_per_worker: Annotated[Optional[StrictInt], Field(ge=0)] = None
    workers_per_gpu: Annotated[Optional[StrictInt], Field(ge=1)] = None
    cpus_per_worker: Annotated[Optional[StrictInt], Field(ge=1)] = None
    mem_gb: Annotated[Optional[Union[StrictInt, StrictFloat]], Field(gt=0)] = None
    time_min: Annotated[Optional[StrictInt], Field(ge=1)] = None
    partition: Optional[NonEmpty] = None


class SuiteSpec(_Strict):
    """A suite file: which methods on which datasets under which protocol, and the report.
    Fields are declared in the order their errors are reported."""

    name: Optional[str] = None
    description: Optional[str] = None
    runs: Runs
    dataset_config: DatasetSections = None
    published: Optional[NonEmpty] = None
    protocol: Literal["conventional", "mlrc"] = "conventional"
    seeds: Seeds = Field(default_factory=lambda: [0])
    mlrc: Optional[MlrcPart] = None
    datasets: Optional[list[NonEmpty]] = None
    config: Mapping = None
    report: Mapping = None
    search: Mapping = None
    launch: Optional[LaunchSpec] = None

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    @model_validator(mode="after")
    def _protocol_keys(self) -> "SuiteSpec":
        n = self.name
        if self.protocol == "mlrc":
            if "seeds" in self.model_fields_set:
                raise rule_error(f"suite {n!r}: an mlrc suite takes no `seeds`; use search.seed "
                                 "and search.reproductions")
            if self.mlrc is not None:
                raise rule_error(f"suite {n!r}: `mlrc` is the MLRC part of a conventional suite;"
                                 " with protocol: mlrc put its keys at the top")
        elif self.search is not None:
            raise rule_error(f"suite {n!r}: `search` applies to protocol mlrc; put it under the "
                             "`mlrc` part or set protocol: mlrc")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SuiteSpec":
        """Validate a suite mapping; raises UserError with the one line a user reads."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise _suite_error(e, data) from None


SUITE_KEYS = set(SuiteSpec.model_fields)
MLRC_PART_KEYS = set(MlrcPart.model_fields)
RUN_KEYS = set(RunEntry.model_fields)


def _suite_error(exc: ValidationError, data: dict[str, Any]) -> UserError:
    errors = exc.errors()
    name = data.get("name")
    unknown = sorted(str(e["loc"][0]) for e in errors
                     if e["type"] == "extra_forbidden" and len(e["loc"]) == 1)
    if unknown:
        return UserError(f"suite {name!r} has unknown key(s) {unknown}; valid keys: "
                         f"{', '.join(sorted(SUITE_KEYS))}")
    err = errors[0]
    if err["type"] == "dmlbench_rule":
        return UserError(err["msg"])
    loc = err["loc"]
    if loc[0] == "mlrc":
        part = data["mlrc"]
        if len(loc) == 1:
            return UserError(f"suite {name!r}: `mlrc` must be a mapping with keys "
                             f"{', '.join(sorted(MLRC_PART_KEYS))}")
        unknown = sorted(str(e["loc"][1]) for e in errors
                         if e["type"] == "extra_forbidden" and len(e["loc"]) == 2)
        if unknown:
            return UserError(f"suite {name!r} mlrc part has unknown key(s) {unknown}; valid "
                             f"keys: {', '.join(sorted(MLRC_PART_KEYS))}")
        return _key_error(loc[1:], part, f"{name} (mlrc part)", MlrcPart)
    return _key_error(loc, data, name, SuiteSpec)


def _key_error(loc: tuple, data: dict[str, Any], name: Any, model: type[BaseModel]
               ) -> UserError:
    """The message of an error at `loc` in the suite (or mlrc part) mapping `data`."""
    key = loc[0]
    value = data.get(key)
    if key == "runs":
        if len(loc) == 1:
            return UserError(f"suite {name!r} needs a non-empty list `runs`")
        i, r = loc[1], _as_entry(value[loc[1]])
        field = loc[2] if len(loc) > 2 and isinstance(r, dict) else None
        if field == "datasets":
            return UserError(f"suite {name!r} run #{i + 1} ({r['method']}): `datasets` must be "
                             "a non-empty list of dataset names")
        if field in (None, "method") or field not in RUN_KEYS or "method" not in r:
            return UserError(f"suite {name!r} run #{i + 1} must be a mapping with `method` and "
                             f"optionally {sorted(RUN_KEYS - {'method'})}")
        return UserError(f"suite {name!r} run #{i + 1} ({r['method']}): `{field}`="
                         f"{r[field]!r} is not valid; allowed: "
                         f"{allowed_text(RunEntry.model_fields[field])}")
    if key == "dataset_config":
        return UserError(f"suite {name!r}: `dataset_config` must map dataset names to config "
                         "sections, e.g. {sop: {train: {eval_every: 20}}}")
    if key == "published":
        return UserError(f"suite {name!r}: `published` must name the published numbers, e.g. "
                         "published: memvir-table2")
    if key == "protocol":
        return UserError(f"suite {name!r}: protocol {value!r} is not valid; valid protocols: "
                         "conventional, mlrc")
    if key == "seeds":
        return UserError(f"suite {name!r}: seeds={value!r} is not valid; allowed: a non-empty "
                         "list of distinct integers >= 0, e.g. seeds: [0, 1, 2]")
    if key == "launch":
        return _launch_error(loc, value, name)
    if key in ("datasets",):
        return UserError(f"suite {name!r}: `datasets` must be a non-empty list of dataset names")
    return UserError(f"suite {name!r}: `{key}`={value!r} is not valid; allowed: "
                     f"{allowed_text(model.model_fields[key])}")

def _launch_error(loc: tuple, value: Any, name: Any) -> UserError:
    keys = ", ".join(LaunchSpec.model_fields)
    if len(loc) == 1 or not isinstance(value, dict):
        return UserError(f"suite {name!r}: `launch` must be a mapping with keys {keys}")
    if loc[1] not in LaunchSpec.model_fields:
        return UserError(f"suite {name!r}: launch has unknown key {loc[1]!r}; valid keys: "
                         f"{keys}")
    return UserError(f"suite {name!r}: launch.{loc[1]}={value[loc[1]]!r} is not valid; allowed: "
                     f"{allowed_text(LaunchSpec.model_fields[loc[1]])} (the flag "
                     f"--{loc[1].replace('_', '-')} overrides it)")


@dataclass
class PlannedRun:
    cfg: dict
    run_dir: Path
    position: dict = field(default_factory=dict)   # {"run": i, "dataset": j} in the suite


@dataclass
class PlannedStudy:
    """One MLRC experiment of a suite."""

    cfg: dict
    opts: Any              # protocols.mlrc.SearchOptions
    out_dir: Path
    study: str             # the study name it will use
    budget: dict = field(default_factory=dict)   # n_trials, reproductions, max_failed


def list_suites() -> list[str]:
    """Names of the suites shipped with dmlbench."""
    return sorted(p.name[:-5] for p in resources.files("dmlbench.bench").joinpath("suites").iterdir()
                  if p.name.endswith(".yaml"))


def load_suite(name_or_path: str) -> dict[str, Any]:
    """A suite by shipped name or by YAML path, validated by `SuiteSpec`: the mapping as
    written, its runs given as bare method names turned into `{method: NAME}`."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        data = C.read_yaml(p)
        data.setdefault("name", p.stem)
    else:
        if name_or_path not in list_suites():
            names = sorted(list_suites(), key=lambda n: (n != "demo", n))  # demo needs no data
            raise UserError(f"unknown suite {name_or_path!r}; valid suites: "
                            f"{', '.join(names)} (or give a path to a suite YAML file)")
        ref = resources.files("dmlbench.bench").joinpath("suites", f"{name_or_path}.yaml")
        with resources.as_file(ref) as f:
            data = C.read_yaml(f)
    SuiteSpec.from_dict(data)
    for part in (data, data.get("mlrc")):
        if part is not None:
            part["runs"] = [_as_entry(r) for r in part["runs"]]
    return data

def _entry_datasets(entry: dict, datasets: list[str], name: Any) -> list[str]:
    """The suite datasets a run applies to (its `datasets`, in the suite's order)."""
    want = entry.get("datasets")
    if want is None:
        return list(datasets)
    extra = [d for d in want if d not in datasets]
    if extra:
        raise UserError(f"suite {name!r}: run {entry['method']!r} names dataset(s) "
                        f"{', '.join(extra)} that are not among the suite's datasets "
                        f"({', '.join(datasets)})")
    return [d for d in datasets if d in want]


def mlrc_part(suite: dict[str, Any], out_dir: Path) -> tuple[dict[str, Any] | None, Path]:
    """(the MLRC part of a suite or None, the folder it writes to)."""
    if suite.get("protocol", "conventional") == "mlrc":
        return suite, out_dir
    part = suite.get("mlrc")
    if part is None:
        return None, out_dir
    return part, out_dir.parent / f"{out_dir.name}-mlrc"


def _part_datasets(suite: dict[str, Any], part: dict[str, Any], config: dict) -> list[str]:
    return part.get("datasets") or suite.get("datasets") or [config["dataset"]["name"]]
