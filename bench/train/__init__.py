"""The training engine: parts built from a config (`build`), the loop and its state
(`loop`, `state`), callbacks (`callbacks`) and the one embedding path (`embedding`)."""
from dmlbench.bench.train.build import (Parts, amp_enabled, build_parts, image_source, make_optimizer,
                               make_scheduler, param_groups_summary, resolve_device,
                               seed_everything, torch_settings, transforms_for)
from dmlbench.bench.train.callbacks import (BEST_MODEL, CHECKPOINT, TRAIN_LOG, BestTracker, Callback,
                                   Checkpointer, Diverged, DivergenceCheck, EarlyStopping,
                                   ProgressBar, TrainingLog, remove_checkpoints)
from dmlbench.bench.train.embedding import embed, embed_split
from dmlbench.bench.train.loop import FitResult, Trainer, fit
from dmlbench.bench.train.state import TrainState

__all__ = ["BEST_MODEL", "CHECKPOINT", "TRAIN_LOG", "BestTracker", "Callback", "Checkpointer",
           "Diverged", "DivergenceCheck", "EarlyStopping", "FitResult", "Parts", "ProgressBar",
           "TrainState", "Trainer", "TrainingLog", "amp_enabled", "build_parts", "embed",
           "embed_split", "fit", "image_source", "make_optimizer", "make_scheduler",
           "param_groups_summary", "remove_checkpoints", "resolve_device", "seed_everything",
           "torch_settings", "transforms_for"]
