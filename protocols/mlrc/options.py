"""The options of an MLRC search and final evaluation (`SearchOptions`), as a suite's `search:`
block or the `dmlbench mlrc` command line give them.

A pydantic model (as `bench.config.RunConfig`): each option's default, type and range is
declared once, the command line's help reads its defaults from `SearchOptions.model_fields`,
and every problem is one UserError line "invalid WHERE.KEY=VALUE; allowed: WHAT".
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any, ClassVar, Optional

from pydantic import (ConfigDict, Field, StrictInt, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from dmlbench.bench.config.models import Allowed, TypedModel, allowed_text
from dmlbench.bench.errors import UserError

PosInt = Annotated[StrictInt, Field(ge=1)]
NonEmpty = Annotated[str, Field(min_length=1)]
# where the options come from, named in messages: a suite's "search" block or the command line
_WHERE: ContextVar[str] = ContextVar("search_options_where", default="search")


class SearchOptions(TypedModel):
    """How the search and the final evaluation run; see the suite docstring for the YAML keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    n_trials: PosInt = Field(50, description="completed trials")
    sampler: str = Field("tpe", description="the Optuna sampler (search.SAMPLERS)")
    seed: Annotated[Optional[StrictInt], Field(ge=0)] = Field(
        None, description="search seed (default: run.seed)")
    pruner: str = Field("none", description="prune trials between folds (search.PRUNERS)")
    grid_points: PosInt = Field(3, description="values per float/int parameter with sampler grid")
    num_folds: Annotated[StrictInt, Field(ge=2), Allowed("an integer >= 2 (MLRC uses 4)")] = 4
    reproductions: PosInt = Field(
        3, description="retrainings of the best parameters for the test table")
    max_failed: Annotated[Optional[StrictInt], Field(ge=1)] = Field(None, description="failed trials allowed "
                                                           "(default: n_trials)")
    space: Annotated[dict[Any, Any], Allowed(
        "a mapping param: [kind, low, high] | [categorical, [..]] | value")] = Field(
        default_factory=dict, description="param -> [kind, lo, hi] | value over the method's")
    storage: Optional[NonEmpty] = Field(None, description="default: sqlite file OUT/studies.db")
    study: Optional[NonEmpty] = Field(None, description="study name (default: derived name)")
    workers: PosInt = Field(1, description="processes on this machine")
    heartbeat_interval: PosInt = Field(10, description="seconds between a trial's heartbeats")
    grace_period: PosInt = Field(40, description="seconds without a heartbeat before a trial "
                                                 "is taken as dead")

    KEYS: ClassVar[tuple[str, ...]]

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _user_error(e, data, _WHERE.get()) from None

    @field_validator("sampler", "pruner", mode="before")
    @classmethod
    def _known(cls, v: Any, info: Any) -> Any:
        from dmlbench.protocols.mlrc import search as S  # optuna: only when options are checked

        valid = S.SAMPLERS if info.field_name == "sampler" else S.PRUNERS
        if v not in valid:
            raise PydanticCustomError("choice", "{valid}", {"valid": ", ".join(valid)})
        return v

    @model_validator(mode="after")
    def _grace(self) -> "SearchOptions":
        if self.grace_period <= self.heartbeat_interval:
            raise PydanticCustomError(
                "grace", "more seconds than heartbeat_interval={hb}",
                {"hb": self.heartbeat_interval, "key": "grace_period"})
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "search") -> "SearchOptions":
        """The options of mapping `d` (missing keys take their defaults); `where` names the
        source in messages ("search" for a suite's block, "option" for the command line)."""
        token = _WHERE.set(where)
        try:
            return cls(**dict(d or {}))
        finally:
            _WHERE.reset(token)

    def check(self, where: str = "search") -> None:
        """Re-validate after attributes were changed; raises UserError."""
        SearchOptions.from_dict(self.model_dump(), where)


SearchOptions.KEYS = tuple(SearchOptions.model_fields)


def _user_error(exc: ValidationError, data: dict[str, Any], where: str) -> UserError:
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return UserError(f"unknown {where} key(s) {unknown}; valid keys: "
                         f"{', '.join(SearchOptions.KEYS)}")
    err = errors[0]
    if err["type"] == "grace":
        key, allowed = "grace_period", err["msg"]
    else:
        key = err["loc"][0]
        allowed = err["msg"] if err["type"] == "choice" else allowed_text(
            SearchOptions.model_fields[key])
    value = data[key] if key in data else SearchOptions.model_fields[key].default
    return UserError(f"invalid {where}.{key}={value!r}; allowed: {allowed}")
