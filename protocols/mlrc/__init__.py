"""The MLRC protocol: a cross-validated (4-fold) Optuna search, then the best configuration
retrained R times and evaluated on the test set, separated and concatenated (specs/mlrc.md).

One study per (dataset, method, protocol settings) holds the search; re-running a command
continues its study (finished trials and final-evaluation records are skipped; a fold in
progress resumes from its checkpoint); a command whose settings differ from the stored ones
(e.g. another n_trials) stops with a UserError. Any number of workers, on any machines sharing
the storage, run its trials (`dmlbench worker STUDY --storage URL`).

One concern per module:
- `options`   SearchOptions: the search's settings as a suite or the command line give them
- `settings`  the study's name and the settings stored with it (`build_settings`)
- `storage`   storage URLs, heartbeats, creating / loading / checking studies
- `search`    the search space, seeded samplers, the pruner
- `objective` one trial: the folds trained with sampled parameters (`make_objective`)
- `worker`    the loop that runs a study's trials within its budget; worker processes
- `final`     the final evaluation: reproductions, separated and concatenated test metrics
- `run`       `run_mlrc`: one experiment, search then final evaluation

Every public name of these modules is importable from `dmlbench.protocols.mlrc`; importing
the package loads a module only when one of its names is first read (so `storage` stays light
for commands that only read studies).
"""
from __future__ import annotations

import importlib
from typing import Any

# module -> its public names, re-exported here
_PUBLIC = {
    "storage": ("HEARTBEAT_KEY", "SETTINGS_ATTR", "HeartbeatJournalStorage", "Storage",
                "check_exists", "create_or_check_study", "default_storage", "diff_paths",
                "grace_period", "list_study_names", "load_study", "open_storage",
                "original_number", "parse_storage_url", "redact", "set_heartbeat",
                "stale_trials", "study_settings"),
    "search": ("PRUNERS", "SAMPLERS", "PerTrialSeededSampler", "distribution", "grid_values",
               "make_pruner", "search_space", "suggest"),
    "options": ("SearchOptions",),
    "settings": ("EXECUTION_KEYS", "build_settings", "settings_hash"),
    "objective": ("MAP_R", "FoldData", "TrialFailed", "fold_config", "make_objective",
                  "should_prune", "sem"),
    "worker": ("FINISHED", "TrialSkipped", "WorkerSummary", "admitted", "count_states",
               "params_text", "quiet_optuna", "real_failures", "requeue_interrupted",
               "one_trial", "run_one", "run_trials", "run_worker", "spawn_workers",
               "study_objective", "work_on", "worker_label"),
    "final": ("FINAL_METRICS", "RECORD", "FinalEvaluation", "FoldModels", "ensemble_metrics",
              "final_evaluation", "finished_record", "train_fold_models"),
    "items": ("ITEM_ATTR", "ItemTable", "ensure_items", "final_study", "final_study_name",
              "item_table", "run_final_items", "skip_leftover_copies", "take_item",
              "take_waiting_items"),
    "run": ("run_mlrc",),
}
_EXPORTS = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    if name in _PUBLIC:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_PUBLIC))
