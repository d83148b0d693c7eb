"""Run configuration: typed models (`RunConfig` and its sections, bench.config.models) and
YAML / `key=value` loading (bench.config.loading).

`load_config` returns the validated plain nested dict (`cfg["train"]["lr"]`): the form the
engine, the protocols and the run records use, and the one fingerprints hash, kept byte-for-byte
as before the models existed. `load_run_config` / `RunConfig.from_dict(cfg)` give the typed
object for library users; `RunConfig.model_json_schema()` documents every key.
"""
from __future__ import annotations

from typing import Any, Callable

from pydantic import ValidationError

from dmlbench.bench.config.loading import (FREE_FORM, apply_overrides, defaults, load_config,
                                           load_run_config, merge, parse_override, read_yaml,
                                           validate)
from dmlbench.bench.config.models import (SECTIONS, DatasetConfig, EvalConfig, MethodConfig,
                                          ModelConfig, RunConfig, RunSection, TrainConfig,
                                          allowed_text)

__all__ = ["FREE_FORM", "SCHEMA", "SECTIONS", "DatasetConfig", "EvalConfig", "MethodConfig",
           "ModelConfig", "RunConfig", "RunSection", "TrainConfig", "allowed_text",
           "apply_overrides", "defaults", "load_config", "load_run_config", "merge",
           "parse_override", "read_yaml", "validate"]


def _checker(section: type, key: str) -> Callable[[Any], "str | None"]:
    def check(value: Any) -> str | None:
        try:
            section.__pydantic_validator__.validate_assignment(section.model_construct(), key,
                                                               value)
        except ValidationError as e:
            if any(err["type"] != "dmlbench_rule" for err in e.errors()):
                return allowed_text(section.model_fields[key])
        return None
    return check


# {section: {key: (default, checker)}}: a read-only view of the models for older callers; a
# checker returns None when a value is allowed for its key alone, else what is allowed.
SCHEMA: dict[str, dict[str, tuple[Any, Callable[[Any], "str | None"]]]] = {
    sec: {key: (default, _checker(SECTIONS[sec], key)) for key, default in values.items()}
    for sec, values in defaults().items()}
