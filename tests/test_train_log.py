"""The training log (train_log.jsonl) and the methods' signals in it (`Objective.stats()`):
MemVir's k under step pacing, DAS's bank fill and generated rows, a PML miner's counts, and a
resumed run's log equal to an uninterrupted run's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from dmlbench.bench.config import load_config
from dmlbench.bench.data.loading import Split
from dmlbench.bench.train import TRAIN_LOG, fit
from dmlbench.methods import build_objective
from dmlbench.methods.registry import Objective

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny glyphs: 10 training classes x 8 images, batch 16 -> 5 iterations per epoch
ITERS = 5
MEMVIR = ["method.name=memvir+normsoftmax", "method.params.warmup_epochs=1",
          "method.params.num_steps=2", "method.params.step_gap=1"]


def _splits(ds):
    return Split.of_classes(ds, ds.train_classes), Split.of_classes(ds, ds.test_classes)


def _read(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / TRAIN_LOG).read_text().splitlines()]


def _train(lines: list[dict]) -> list[dict]:
    return [r for r in lines if r["kind"] == "train"]


def test_log_lines_every_log_every_and_at_epoch_end(tmp_path, tiny_glyphs, tiny_overrides):
    tr, te = _splits(tiny_glyphs)
    cfg = load_config(overrides=[*tiny_overrides, "method.name=normsoftmax", "train.log_every=2"])
    res = fit(cfg, tr, te, run_dir=tmp_path)
    lines = _read(tmp_path)
    # per epoch: iterations 2, 4 (every 2) and 5 (the epoch's last), then its evaluation
    expect = []
    for e in range(3):
        expect += [("train", e * ITERS + i) for i in (2, 4, 5)] + [("eval", (e + 1) * ITERS)]
    assert [(r["kind"], r["iteration"]) for r in lines] == expect
    train = _train(lines)
    assert all(set(r) == {"kind", "epoch", "iteration", "loss", "non_finite", "lr",
                          "images_per_s", "stats"} for r in train)
    assert [r["epoch"] for r in train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(r["lr"] == {"trunk": 1e-3, "embedder": 1e-3, "loss": 0.01} for r in train)
    assert all(r["images_per_s"] > 0 and r["non_finite"] is False for r in train)
    assert [r["metrics"] for r in lines if r["kind"] == "eval"] == \
        [e["metrics"] for e in res.evaluations]


def test_memvir_k_rises_with_step_pacing(tmp_path, tiny_glyphs, tiny_overrides):
    """N=2, M=1, warm-up 1 epoch: MemVir starts at iteration 6; at its s-th step (s from 0)
    the ring holds min(s, 4) steps, k = min(N, held // (M+1)), and after the push the ring
    holds min(s+1, 4) of its N(M+1) = 4 slots."""
    tr, te = _splits(tiny_glyphs)
    cfg = load_config(overrides=[*tiny_overrides, *MEMVIR, "train.log_every=1"])
    fit(cfg, tr, te, run_dir=tmp_path)
    train = _train(_read(tmp_path))
    assert [r["iteration"] for r in train] == list(range(1, 3 * ITERS + 1))
    ks = [r["stats"]["memvir_k"] for r in train]
    fills = [r["stats"]["memvir_ring_fill"] for r in train]
    assert ks == [0.0] * 5 + [0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert fills == [0.0] * 5 + [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_das_bank_fill_and_generated_rows(tmp_path, tiny_glyphs, tiny_overrides):
    """ms+das (T=3, Z=10) on batches of 4 classes x 4 images: the first step fills 4 banks
    with min(Z, 4*3) = 10 differences each, i.e. 40 of the 10 x 10 slots; the fill never
    drops, and the last line equals the bank's own count."""
    tr, te = _splits(tiny_glyphs)
    cfg = load_config(overrides=[*tiny_overrides, "method.name=ms+das", "train.log_every=1"])
    objective = build_objective("ms+das", num_classes=10, embedding_size=16)
    fit(cfg, tr, te, run_dir=tmp_path, objective=objective)
    train = _train(_read(tmp_path))
    fills = [r["stats"]["das_bank_fill"] for r in train]
    assert fills[0] == pytest.approx(0.4)
    assert all(b >= a for a, b in zip(fills, fills[1:])) and fills[-1] <= 1.0
    das = objective.loss.das
    assert fills[-1] == pytest.approx(int(das.bank_fill.sum()) / (10 * 10))
    assert fills[-1] > fills[0]
    assert all(r["stats"]["das_generated_rows"] == 3 * 16 for r in train)


def test_miner_counts_match_the_mined_tuples():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(24, 8), dim=1)
    labels = torch.arange(6).repeat_interleave(4)
    pair = Objective(pml_losses.MultiSimilarityLoss(), pml_miners.MultiSimilarityMiner(0.1))
    assert pair.stats() == {}                           # no call yet: nothing to report
    pair(emb, labels)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(0.1)(emb, labels)
    assert pair.stats() == {"miner_num_pos_pairs": float(len(a1)),
                            "miner_num_neg_pairs": float(len(a2))}
    assert 0 < len(a1) < 24 * 3 and len(a2) > 0
    trip = build_objective("triplet-semihard", num_classes=6, embedding_size=8)
    trip(emb, labels)
    expected = len(pml_miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(
        emb, labels)[0])
    assert trip.stats() == {"miner_num_triplets": float(expected)} and expected > 0


def test_stats_of_memvir_and_das_objectives_are_plain_floats():
    memvir = build_objective("memvir+normsoftmax", num_classes=4, embedding_size=8,
                             params={"warmup_epochs": 0, "num_steps": 3, "step_gap": 0})
    das = build_objective("ms+das", num_classes=4, embedding_size=8)
    assert memvir.stats() == {"memvir_k": 0.0, "memvir_ring_fill": 0.0}
    assert das.stats() == {"das_generated_rows": 0.0, "das_bank_fill": 0.0}
    emb, labels = torch.randn(8, 8), torch.arange(4).repeat(2)
    for _ in range(2):
        memvir(emb, labels)
    das(emb, labels)
    assert memvir.stats() == {"memvir_k": 1.0, "memvir_ring_fill": 2 / 3}
    # 4 classes x 2 images: 2 differences per class, 8 of the 4 x 10 slots
    assert das.stats() == {"das_generated_rows": 24.0, "das_bank_fill": 0.2}
    das.eval()
    das(emb, labels)                                     # eval: no state change
    assert das.stats() == {"das_generated_rows": 24.0, "das_bank_fill": 0.2}


def _comparable(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in lines]


def test_resumed_log_equals_an_uninterrupted_one(tmp_path, tiny_glyphs, tiny_overrides):
    """Cut at epoch 1 (with lines of a killed continuation past the checkpoint: two whole
    ones and one cut in the middle) and resumed to 3: exactly the uninterrupted run's lines,
    each iteration once, same values."""
    tr, te = _splits(tiny_glyphs)
    over = [*tiny_overrides, *MEMVIR, "train.log_every=2"]
    fit(load_config(overrides=[*over, "train.epochs=3"]), tr, te, run_dir=tmp_path / "full")
    cut = tmp_path / "cut"
    fit(load_config(overrides=[*over, "train.epochs=1"]), tr, te, run_dir=cut)
    assert [r["iteration"] for r in _read(cut)] == [2, 4, 5, 5]
    stale = {"kind": "train", "epoch": 1, "iteration": 7, "loss": 9.0, "non_finite": False,
             "lr": {}, "images_per_s": 1.0, "stats": {}}
    with open(cut / TRAIN_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(stale) + "\n" + json.dumps({**stale, "iteration": 9}) + "\n")
        f.write('{"kind": "train", "epo')
    fit(load_config(overrides=[*over, "train.epochs=3"]), tr, te, run_dir=cut)
    full, resumed = _read(tmp_path / "full"), _read(cut)
    iterations = [(r["kind"], r["iteration"]) for r in resumed]
    assert len(iterations) == len(set(iterations)) == 3 * 4
    assert _comparable(resumed) == _comparable(full)
