"""The training loop's own state: plain values, saved in every checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainState:
    """Progress of one fit. `epoch` counts finished epochs; `evaluations` are the entries
    {"epoch", "iteration", "metrics"} so far; `best` the best entry (plus "selected_by",
    "selection_set"); times in seconds."""

    epoch: int = 0
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    since_best: int = 0
    images: int = 0
    train_s: float = 0.0
    fb_s: float = 0.0
    eval_s: float = 0.0
    stopped_early: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        for k, v in state.items():
            if k in names:
                setattr(self, k, v)
