"""CurricularFace (Huang et al., CVPR 2020) as a PML-style loss; PML has none.

Registers the plain method `curricularface`; `memvir+curricularface` is registered by
methods/memvir.py.
"""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.losses.base_metric_loss_function import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from dmlbench.methods.losses import LOSS_LR, _loss_params, class_weight_init, classifier_loss_dict
from dmlbench.methods.registry import register_method


class CurricularFaceLoss(WeightRegularizerMixin, BaseMetricLossFunction):
    """CurricularFace: an additive angular margin on the target class plus an adaptive
    curriculum on the negatives.

    With cos = cosine(embedding, class weight) (W: embedding_size x num_classes) and y the
    label, per row:
      - target logit: cos(theta_y + m) while cos_y > cos(pi - m), else cos_y - m * sin(m);
      - negatives with cos_j > cos(theta_y + m) ("hard") become cos_j * (t + cos_j), the others
        stay cos_j;
      - logits are scaled by s and fed to cross-entropy (mean over rows).
    `t` (a buffer, starts at 0) is updated before use in each training-mode forward:
    t <- momentum * mean(cos_y) + (1 - momentum) * t, without gradient. `margin` is in radians.
    """

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.5,
                 scale: float = 64.0, momentum: float = 0.01, **kwargs) -> None:
        super().__init__(**kwargs)
        c_f.assert_distance_type(self, CosineSimilarity)
        self.num_classes = num_classes
        self.margin = float(margin)
        self.scale = float(scale)
        self.momentum = float(momentum)
        self.W = torch.nn.Parameter(torch.empty(embedding_size, num_classes))
        self.weight_init_func(self.W)
        self.register_buffer("t", torch.zeros(()))
        self.cross_entropy = torch.nn.CrossEntropyLoss(reduction="none")
        self.add_to_recordable_attributes(
            list_of_names=["num_classes", "margin", "scale", "momentum"], is_stat=False
        )

    def get_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.distance(embeddings, self.W.t().to(embeddings.dtype)).clamp(-1.0, 1.0)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        dtype = embeddings.dtype
        miner_weights = lmu.convert_to_weights(indices_tuple, labels, dtype=dtype)
        m = self.margin
        cos = self.get_cosine(embeddings)
        target = cos.gather(1, labels.unsqueeze(1))
        # clamp keeps the sqrt's gradient finite at |cos_y| = 1
        sin = torch.sqrt((1.0 - target * target).clamp(min=1e-12))
        cos_m = target * math.cos(m) - sin * math.sin(m)
        final_target = torch.where(target > math.cos(math.pi - m), cos_m,
                                   target - m * math.sin(m))
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(target.mean().to(self.t.dtype),
                                                      alpha=self.momentum)
        t = self.t.to(dtype)
        logits = torch.where(cos > cos_m, cos * (t + cos), cos)
        logits = logits.scatter(1, labels.unsqueeze(1), final_target) * self.scale
        per_sample = self.cross_entropy(logits, labels) * miner_weights
        return classifier_loss_dict(self, per_sample, embeddings)

    def get_default_distance(self):
        return CosineSimilarity()

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.get_cosine(embeddings) * self.scale


@register_method("curricularface", family="classification", m_per_class=1,
                 defaults={**_loss_params("normal"), "margin": 0.5, "scale": 64.0},
                 search_space={"loss_lr": LOSS_LR, "margin": ("float", 0.0, 1.5),
                               "scale": ("float", 0.01, 200.0)})
def _curricularface(num_classes, embedding_size, margin, scale, weight_init="normal"):
    """CurricularFace (Huang et al. 2020): curriculum on hard negatives; margin in radians."""
    return CurricularFaceLoss(num_classes, embedding_size, margin=margin, scale=scale,
                              weight_init_func=class_weight_init(weight_init, 1)), None
