"""The training loop: determinism, resume, divergence, early stopping, sampling, optimizers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlbench.bench.config import load_config
from dmlbench.bench.data.loading import BatchPlan, Split
from dmlbench.bench.errors import UserError
from dmlbench.bench.evaluate import compute_metrics
from dmlbench.bench.train import embed_split, fit, make_optimizer
from dmlbench.bench.models import build_model
from dmlbench.methods import build_objective


def _splits(ds):
    return Split.of_classes(ds, ds.train_classes), Split.of_classes(ds, ds.test_classes)


def _cfg(overrides, *extra):
    return load_config(overrides=[*overrides, *extra])


def test_same_seed_same_metrics(tiny_glyphs, tiny_overrides):
    tr, te = _splits(tiny_glyphs)
    cfg = _cfg(tiny_overrides, "method.name=ms")
    a = fit(cfg, tr, te)
    b = fit(cfg, tr, te)
    assert a.status == "completed"
    assert [e["metrics"] for e in a.evaluations] == [e["metrics"] for e in b.evaluations]
    c = fit(_cfg(tiny_overrides, "method.name=ms", "run.seed=1"), tr, te)
    assert [e["metrics"] for e in c.evaluations] != [e["metrics"] for e in a.evaluations]


MEMVIR_ON = ["method.params.warmup_epochs=1", "method.params.num_steps=2",
             "method.params.step_gap=1"]


@pytest.mark.parametrize("method,params", [
    ("normsoftmax", []), ("ms", []), ("triplet-distance", []),
    ("memvir+normsoftmax", MEMVIR_ON), ("memvir+proxyanchor", MEMVIR_ON), ("ms+das", [])])
def test_resume_is_exact(tmp_path, tiny_glyphs, tiny_overrides, method, params):
    """A run cut after 2 epochs and resumed from its checkpoint equals an uninterrupted run:
    model, optimizer, RNG streams and method state (MemVir queues, DAS bank and frequency)."""
    tr, te = _splits(tiny_glyphs)
    full = fit(_cfg(tiny_overrides, f"method.name={method}", "train.epochs=4", *params), tr, te,
               run_dir=tmp_path / "full")
    # stop after 2 epochs, then continue the same run folder to 4
    fit(_cfg(tiny_overrides, f"method.name={method}", "train.epochs=2", *params), tr, te,
        run_dir=tmp_path / "cut")
    resumed = fit(_cfg(tiny_overrides, f"method.name={method}", "train.epochs=4", *params), tr,
                  te, run_dir=tmp_path / "cut")
    if method.startswith("memvir"):
        saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
        assert any("extra_state" in k for k in saved["objective"])  # the queues travel
    assert len(resumed.evaluations) == 4
    assert [e["metrics"] for e in resumed.evaluations] == [e["metrics"] for e in full.evaluations]


def test_evaluations_match_independent_metrics(tiny_glyphs, tiny_overrides, tmp_path):
    tr, te = _splits(tiny_glyphs)
    cfg = _cfg(tiny_overrides, "train.epochs=2")
    res = fit(cfg, tr, te, keep_model=True)
    from dmlbench.bench.data.loading import ImageSource

    emb, lab = embed_split(res.model, ImageSource(te, torch.device("cpu"), image_size=32), 64)
    assert lab.tolist() == te.labels.tolist()
    assert res.final["metrics"] == compute_metrics(emb, lab, seed=0)
    assert res.best["metrics"]["precision_at_1"] == max(
        e["metrics"]["precision_at_1"] for e in res.evaluations)
    assert res.best["selection_set"] == "test"


class _NanAfter(torch.nn.Module):
    """A loss that is finite for `steps` calls, then NaN."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.calls = 0

    def forward(self, embeddings, labels):
        self.calls += 1
        value = embeddings.pow(2).mean()
        return value * float("nan") if self.calls > self.steps else value


def test_nan_loss_is_recorded_as_diverged(tiny_glyphs, tiny_overrides):
    from dmlbench.methods.registry import _METHODS, register_method

    if "test-nan-after-7" not in _METHODS:
        register_method("test-nan-after-7", defaults={})(lambda c, d: (_NanAfter(7), None))
    tr, te = _splits(tiny_glyphs)
    res = fit(_cfg(tiny_overrides, "method.name=test-nan-after-7"), tr, te)
    assert res.status == "diverged"
    assert "loss became nan at epoch 1" in res.error  # 5 iterations per epoch
    assert res.epochs_run == 1


def test_early_stopping_with_patience(tiny_glyphs, tiny_overrides):
    tr, te = _splits(tiny_glyphs)
    # lr so small that nothing improves after the first evaluation
    res = fit(_cfg(tiny_overrides, "train.epochs=20", "train.lr=1e-9", "train.patience=2",
                   "train.embedder_lr=1e-9", "method.params.loss_lr=1e-9"), tr, te)
    assert res.stopped_early
    best_epoch = res.best["epoch"]
    assert res.epochs_run == best_epoch + 3  # stops once epochs since best > patience


def test_mper_class_batches(tiny_glyphs):
    tr, _ = _splits(tiny_glyphs)
    plan = BatchPlan(tr.labels, 16, 4, iterations=5, seed=0)
    batches = list(plan)
    assert len(batches) == 5
    for b in batches:
        _, counts = np.unique(tr.labels[b], return_counts=True)
        assert len(b) == 16 and (counts == 4).all()
    # m = 1: a shuffled permutation, every image once per pass
    plan1 = BatchPlan(tr.labels, 16, 1, iterations=5, seed=0)
    seen = np.concatenate(list(plan1))
    assert len(np.unique(seen)) == len(seen) == 80


def test_batch_plan_state_round_trip(tiny_glyphs):
    tr, _ = _splits(tiny_glyphs)
    a = BatchPlan(tr.labels, 16, 4, iterations=3, seed=5)
    list(a)
    state = a.state_dict()
    nxt = [b.tolist() for b in a]
    b = BatchPlan(tr.labels, 16, 4, iterations=3, seed=99)
    b.load_state_dict(state)
    assert [x.tolist() for x in b] == nxt


def test_batch_too_large_for_classes(tiny_glyphs):
    tr, _ = _splits(tiny_glyphs)
    with pytest.raises(UserError, match="needs 16 classes"):
        BatchPlan(tr.labels, 64, 4, iterations=1, seed=0)


@pytest.mark.parametrize("opt", ["adam", "adamw", "rmsprop", "sgd"])
def test_optimizer_groups(tiny_overrides, opt):
    cfg = _cfg(tiny_overrides, f"train.optimizer={opt}", "train.lr=0.01",
               "train.embedder_lr=0.02", "method.name=proxyanchor", "method.params.loss_lr=0.3")
    model = build_model(cfg["model"], 1)
    objective = build_objective("proxyanchor", 10, 16, {"loss_lr": 0.3})
    optim = make_optimizer(cfg, model, objective)
    groups = {g["name"]: g for g in optim.param_groups}
    assert groups["trunk"]["lr"] == 0.01 and groups["embedder"]["lr"] == 0.02
    assert groups["loss"]["lr"] == 0.3
    assert groups["loss"]["params"][0] is objective.loss.proxies
    # parameter-free losses get no loss group
    optim2 = make_optimizer(cfg, model, build_objective("ms", 10, 16))
    assert [g["name"] for g in optim2.param_groups] == ["trunk", "embedder"]


def test_step_schedule_lowers_lr(tiny_glyphs, tiny_overrides):
    from dmlbench.bench.train import make_scheduler

    cfg = _cfg(tiny_overrides, "train.schedule=multistep", "train.milestones=[2]",
               "train.gamma=0.5")
    model = build_model(cfg["model"], 1)
    opt = make_optimizer(cfg, model, build_objective("ms", 10, 16))
    sched = make_scheduler(cfg, opt)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [pytest.approx(1e-3), pytest.approx(1e-3), pytest.approx(5e-4)]


def test_timing_and_throughput_reported(tiny_glyphs, tiny_overrides):
    tr, te = _splits(tiny_glyphs)
    res = fit(_cfg(tiny_overrides, "train.epochs=1"), tr, te)
    assert res.images_per_s > 0
    share = res.timing["outside_forward_backward_share"]
    assert 0 <= share < 1 and not math.isnan(share)
