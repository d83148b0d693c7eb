"""Every use of Optuna's private API, in one place (pinned to Optuna 5.x in pyproject.toml).

dmlbench needs four things Optuna does not make public: the heartbeat base class (to give the
journal storage heartbeats), a storage's stale-trial query (to show and re-queue trials whose
worker died), the ids behind studies and trials, and the search-space transform (to encode
parameters for the fANOVA importance). `check()` verifies that they still exist with the
expected shape; tests/test_optuna_internals.py runs it, so a new Optuna that changes them fails
loudly there instead of somewhere in a study.
"""
from __future__ import annotations

import inspect
from typing import Any

import optuna
from optuna._transform import _SearchSpaceTransform as SearchSpaceTransform
from optuna.storages._heartbeat import BaseHeartbeat

__all__ = ["BaseHeartbeat", "SearchSpaceTransform", "check", "fresh_trial", "stale_trial_ids",
           "storage_of", "study_id", "trial_id"]


def study_id(study: optuna.Study) -> int:
    """The storage id of a study."""
    return study._study_id


def trial_id(trial: "optuna.Trial | optuna.trial.FrozenTrial") -> int:
    """The storage id of a trial (live or frozen)."""
    return trial._trial_id


def stale_trial_ids(storage: Any, study: optuna.Study) -> set[int]:
    """Ids of RUNNING trials whose heartbeat is older than the storage's grace period."""
    return set(storage._get_stale_trial_ids(study._study_id))


def storage_of(study: optuna.Study) -> Any:
    """The storage object a study reads and writes (to open another study on it)."""
    return study._storage


def fresh_trial(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """A trial as the storage holds it now (system attributes included)."""
    return study._storage.get_trial(trial._trial_id)


def check() -> None:
    """Raise AssertionError naming what changed if the private API above is not as expected."""
    assert inspect.isclass(BaseHeartbeat), "optuna.storages._heartbeat.BaseHeartbeat is gone"
    for name in ("record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
                 "get_heartbeat_stale_trial_callback"):
        assert hasattr(BaseHeartbeat, name), f"BaseHeartbeat.{name} is gone"
    assert list(inspect.signature(BaseHeartbeat._get_stale_trial_ids).parameters) == [
        "self", "study_id"], "BaseHeartbeat._get_stale_trial_ids(study_id) changed"
    params = inspect.signature(SearchSpaceTransform).parameters
    for name in ("search_space", "transform_log", "transform_step"):
        assert name in params, f"_SearchSpaceTransform lost its {name!r} argument"
    for name in ("transform", "bounds", "column_to_encoded_columns"):
        assert hasattr(SearchSpaceTransform, name), f"_SearchSpaceTransform.{name} is gone"
    study = optuna.create_study()
    trial = study.ask()
    assert isinstance(study_id(study), int) and isinstance(trial_id(trial), int)
    assert fresh_trial(study, trial).number == trial.number
    assert hasattr(study._storage, "get_trial"), "Study._storage.get_trial is gone"
    assert storage_of(study) is study._storage
