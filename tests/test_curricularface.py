"""CurricularFace against a hand-worked example."""
from __future__ import annotations

import math

import pytest
import torch

from dmlbench.methods.curricularface import CurricularFaceLoss
from dmlbench.methods.registry import build_objective, get_method

DEG = math.pi / 180
M, S = 0.5, 2.0


def _unit(deg: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(deg * DEG), norm * math.sin(deg * DEG)]


def _example() -> tuple[CurricularFaceLoss, torch.Tensor, torch.Tensor]:
    """Class weights at 0, 90 and 180 degrees (unnormalised), three embeddings at 30, 170 and
    175 degrees labelled 0, 1, 0."""
    loss = CurricularFaceLoss(3, 2, margin=M, scale=S)
    with torch.no_grad():
        loss.W.copy_(torch.tensor([_unit(0, 2.0), _unit(90, 3.0), _unit(180, 0.5)]).t())
    emb = torch.tensor([_unit(30, 1.5), _unit(170), _unit(175, 0.7)], dtype=torch.float64)
    loss.double()
    return loss, emb, torch.tensor([0, 1, 0])


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(z) for z in logits)) - logits[target]


def _hand_loss(t: float) -> float:
    """Worked by hand (angles between embedding and class weights in degrees):
    row 1: target 30 deg, cos(30+m) = 0.5205; class 1 at 60 deg (0.5) is not harder,
           class 2 at 150 deg is not; target above cos(pi-m) -> cos(theta+m).
    row 2: target 80 deg, cos(80+m) = -0.3197; class 0 at 170 deg is not harder,
           class 2 at 10 deg (0.9848) is -> c*(t+c).
    row 3: target 175 deg > 180 - 28.65 deg -> cos(175) - m*sin(m); cos(175+m) = -0.9160:
           class 1 at 85 deg and class 2 at 5 deg are both harder."""
    c = lambda deg: math.cos(deg * DEG)  # noqa: E731
    hard = lambda x: x * (t + x)  # noqa: E731
    rows = [
        ([math.cos(30 * DEG + M), c(60), c(150)], 0),
        ([c(170), math.cos(80 * DEG + M), hard(c(10))], 1),
        ([c(175) - M * math.sin(M), hard(c(85)), hard(c(5))], 0),
    ]
    return sum(_ce([S * z for z in logits], y) for logits, y in rows) / 3


def test_hand_worked_example():
    assert math.cos(80 * DEG + M) < math.cos(10 * DEG)                 # hard, as stated
    assert math.cos(30 * DEG + M) > math.cos(60 * DEG)                 # not hard
    assert 175 * DEG > math.pi - M > 80 * DEG                          # fallback branch in row 3
    loss, emb, labels = _example()
    r = (math.cos(30 * DEG) + math.cos(80 * DEG) + math.cos(175 * DEG)) / 3
    t1 = 0.01 * r                                                      # t starts at 0
    value = loss(emb, labels)
    assert value.item() == pytest.approx(_hand_loss(t1), rel=1e-9)
    assert loss.t.item() == pytest.approx(t1, rel=1e-9)
    # t is updated before use at every training step: t2 = 0.99 t1 + 0.01 r
    t2 = 0.99 * t1 + 0.01 * r
    assert loss(emb, labels).item() == pytest.approx(_hand_loss(t2), rel=1e-9)
    assert loss.t.item() == pytest.approx(t2, rel=1e-9)


def test_eval_mode_keeps_t():
    loss, emb, labels = _example()
    loss.eval()
    assert loss(emb, labels).item() == pytest.approx(_hand_loss(0.0), rel=1e-9)
    assert loss.t.item() == 0.0


def test_gradients_finite_when_embedding_matches_its_weight():
    loss = CurricularFaceLoss(3, 4)
    emb = loss.W.detach().t()[[0, 1, 2, 0]].clone().requires_grad_(True)
    value = loss(emb, torch.tensor([0, 1, 2, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    assert torch.isfinite(loss.W.grad).all()


def test_registered():
    spec = get_method("curricularface")
    assert spec.family == "classification" and spec.m_per_class == 1
    assert spec.defaults == {"loss_lr": 1e-2, "loss_weight_decay": 0.0, "weight_init": "normal",
                             "margin": 0.5, "scale": 64.0}
    assert set(spec.search_space) == {"loss_lr", "margin", "scale"}
    objective = build_objective("curricularface", 5, 8)
    assert isinstance(objective.loss, CurricularFaceLoss)
    assert objective.loss.W.shape == (8, 5)
    assert "loss.t" in objective.state_dict()
