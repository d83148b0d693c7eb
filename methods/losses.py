"""Built-in losses: PML losses and miners with their papers' defaults, plus plain softmax.

Search spaces follow the MLRC ranges (specs/mlrc.md); `loss_lr` is searched on a log scale
for every loss with trainable parameters. Every such loss also takes `loss_weight_decay`
(default 0: a loss's parameters get weight decay only when a recipe says so) and, if it has
class weights, `weight_init` (see `class_weight_init`; each loss's default is what PML, or
this project for its own losses, has always used).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from pytorch_metric_learning import distances, losses, miners, regularizers
from pytorch_metric_learning.losses.base_metric_loss_function import BaseMetricLossFunction
from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from dmlbench.methods.registry import WEIGHT_INITS, register_method

LOSS_LR = ("log", 1e-6, 1.0)
MARGIN = ("float", -0.2, 2.0)


def class_weight_init(scheme: str, class_axis: int) -> Callable[[torch.Tensor], None]:
    """An in-place initialiser for a 2-D class-weight tensor whose class vectors lie along
    `class_axis` (0: rows, e.g. PML `proxies` (C, d); 1: columns, e.g. PML `W` (d, C)).

    With d the embedding size and C the number of class vectors (classes x centres for
    SoftTriple), `scheme` draws each entry from:
      - normal: N(0, 1) (per-class norm ~ sqrt(d); PML's default for W and ProxyNCA);
      - kaiming_normal: N(0, 2/d), torch's kaiming_normal_ with the fan = d (per-class norm
        ~ sqrt(2)); the MemVir reference's Proxy-NCA (kaiming_normal_(mode="fan_out") on its
        (d, C) matrix);
      - kaiming_normal_classes: N(0, 2/C), fan = C (PML's ProxyAnchor default);
      - kaiming_uniform: U(-1/sqrt(d), 1/sqrt(d)), torch's kaiming_uniform_(a=sqrt(5)) with
        fan = d (nn.Linear's init; this project's SoftmaxLoss);
      - kaiming_uniform_classes: U(-1/sqrt(C), 1/sqrt(C)), the same with fan = C (per-class
        norm sqrt(d / 3C)); the MemVir reference's Norm-softmax (kaiming_uniform_(a=sqrt(5)) on
        its (d, C) matrix, whose fan_in is C) and PML's SoftTriple default;
      - xavier_normal / xavier_uniform: torch's xavier_*_ (gain 1, fans d and C).
    The torch function is applied to the tensor as given, with the fan mode that names the
    intended axis, so a loss's default init draws exactly what PML's own call draws.
    """
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"weight_init={scheme!r} is invalid; allowed values: "
                         f"{', '.join(WEIGHT_INITS)}")
    if class_axis not in (0, 1):
        raise ValueError(f"class_axis={class_axis!r} must be 0 or 1")
    # torch: fan_in = size(1), fan_out = size(0) of a 2-D tensor
    fan_d = "fan_in" if class_axis == 0 else "fan_out"
    fan_c = "fan_out" if class_axis == 0 else "fan_in"
    init = torch.nn.init

    def apply(tensor: torch.Tensor) -> None:
        if tensor.dim() != 2:
            raise ValueError(f"class weights must be 2-D, got shape {tuple(tensor.shape)}")
        if scheme == "normal":
            init.normal_(tensor)
        elif scheme == "kaiming_normal":
            init.kaiming_normal_(tensor, mode=fan_d)
        elif scheme == "kaiming_normal_classes":
            init.kaiming_normal_(tensor, mode=fan_c)
        elif scheme == "kaiming_uniform":
            init.kaiming_uniform_(tensor, a=math.sqrt(5), mode=fan_d)
        elif scheme == "kaiming_uniform_classes":
            init.kaiming_uniform_(tensor, a=math.sqrt(5), mode=fan_c)
        elif scheme == "xavier_normal":
            init.xavier_normal_(tensor)
        else:
            init.xavier_uniform_(tensor)

    apply.scheme = scheme          # type: ignore[attr-defined]  (for repr / tests)
    apply.class_axis = class_axis  # type: ignore[attr-defined]
    return apply


def _init(scheme: str, class_axis: int) -> dict:
    return {"weight_init_func": class_weight_init(scheme, class_axis)}


def classifier_loss_dict(loss: WeightRegularizerMixin, per_sample: torch.Tensor,
                         embeddings: torch.Tensor) -> dict:
    """PML loss dict of a per-sample classifier loss, plus the regulariser of its `W`."""
    loss_dict = {"loss": {"losses": per_sample,
                          "indices": c_f.torch_arange_from_size(embeddings),
                          "reduction_type": "element"}}
    loss.add_weight_regularization_to_loss_dict(loss_dict, loss.W.t())
    return loss_dict


class SoftmaxLoss(WeightRegularizerMixin, BaseMetricLossFunction):
    """Plain softmax: an unnormalised linear classifier (W: embedding_size x num_classes,
    optional bias) followed by cross-entropy. PML has no such loss.

    `weight_init_func` is called on `W.t()` (num_classes x embedding_size, nn.Linear's layout);
    default: nn.Linear's kaiming_uniform_(a=sqrt(5)) over the embedding size."""

    def __init__(self, num_classes: int, embedding_size: int, bias: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.W = torch.nn.Parameter(torch.empty(embedding_size, num_classes))
        self.weight_init_func(self.W.t())
        self.b = torch.nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.cross_entropy = torch.nn.CrossEntropyLoss(reduction="none")

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        W = self.W.to(embeddings.dtype)
        logits = embeddings @ W
        if self.b is not None:
            logits = logits + self.b.to(embeddings.dtype)
        return logits

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=embeddings.dtype)
        per_sample = self.cross_entropy(self.get_logits(embeddings), labels) * weights
        return classifier_loss_dict(self, per_sample, embeddings)

    def get_default_distance(self):
        return distances.DotProductSimilarity(normalize_embeddings=False)

    def get_default_weight_init_func(self):
        return class_weight_init("kaiming_uniform", class_axis=0)


# ---- classification / proxy losses -------------------------------------------------------
# `weight_init` defaults: what each loss has always drawn (PML's own default for PML losses).

def _loss_params(weight_init: str | None = None, loss_lr: float = 1e-2) -> dict:
    """The parameters every loss with trainable parameters takes, with their defaults."""
    out = {"loss_lr": loss_lr, "loss_weight_decay": 0.0}
    if weight_init is not None:
        out["weight_init"] = weight_init
    return out


@register_method("softmax", family="classification", m_per_class=1,
                 defaults={**_loss_params("kaiming_uniform"), "bias": False},
                 search_space={"loss_lr": LOSS_LR})
def _softmax(num_classes, embedding_size, bias=False, weight_init="kaiming_uniform"):
    """Plain softmax: linear classifier + cross-entropy (this project's own)."""
    # SoftmaxLoss hands its init W.t() (classes first)
    return SoftmaxLoss(num_classes, embedding_size, bias=bias, **_init(weight_init, 0)), None


@register_method("normsoftmax", family="classification", m_per_class=1,
                 defaults={**_loss_params("normal"), "temperature": 0.05},
                 search_space={"loss_lr": LOSS_LR, "temperature": ("log", 0.01, 100.0)})
def _normsoftmax(num_classes, embedding_size, temperature, weight_init="normal"):
    """Normalized softmax (Zhai & Wu 2019), PML NormalizedSoftmaxLoss."""
    return losses.NormalizedSoftmaxLoss(num_classes, embedding_size, temperature=temperature,
                                        **_init(weight_init, 1)), None


@register_method("cosface", family="classification", m_per_class=1,
                 defaults={**_loss_params("normal"), "margin": 0.35, "scale": 64.0},
                 search_space={"loss_lr": LOSS_LR, "margin": ("float", 0.0, 1.0),
                               "scale": ("float", 0.01, 200.0)})
def _cosface(num_classes, embedding_size, margin, scale, weight_init="normal"):
    """CosFace (Wang et al. 2018), PML CosFaceLoss."""
    return losses.CosFaceLoss(num_classes, embedding_size, margin=margin, scale=scale,
                              **_init(weight_init, 1)), None


@register_method("arcface", family="classification", m_per_class=1,
                 defaults={**_loss_params("normal"), "margin": 28.6, "scale": 64.0},
                 search_space={"loss_lr": LOSS_LR, "margin": ("float", 0.0, 90.0),
                               "scale": ("float", 0.01, 200.0)})
def _arcface(num_classes, embedding_size, margin, scale, weight_init="normal"):
    """ArcFace (Deng et al. 2019), PML ArcFaceLoss; margin in degrees."""
    return losses.ArcFaceLoss(num_classes, embedding_size, margin=margin, scale=scale,
                              **_init(weight_init, 1)), None


@register_method("proxynca", family="proxy", m_per_class=1,
                 defaults={**_loss_params("normal"), "softmax_scale": 12.0},
                 search_space={"loss_lr": LOSS_LR, "softmax_scale": ("float", 0.01, 100.0)})
def _proxynca(num_classes, embedding_size, softmax_scale, weight_init="normal"):
    """ProxyNCA (Movshovitz-Attias et al. 2017), PML ProxyNCALoss; scale 12 as in MemVir's runs."""
    return losses.ProxyNCALoss(num_classes, embedding_size, softmax_scale=softmax_scale,
                               **_init(weight_init, 0)), None


@register_method("proxyanchor", family="proxy", m_per_class=1,
                 defaults={**_loss_params("kaiming_normal_classes"), "margin": 0.1,
                           "alpha": 32.0},
                 search_space={"loss_lr": LOSS_LR, "margin": ("float", 0.0, 1.0),
                               "alpha": ("float", 0.01, 200.0)})
def _proxyanchor(num_classes, embedding_size, margin, alpha, weight_init="kaiming_normal_classes"):
    """Proxy-Anchor (Kim et al. 2020), PML ProxyAnchorLoss."""
    return losses.ProxyAnchorLoss(num_classes, embedding_size, margin=margin, alpha=alpha,
                                  **_init(weight_init, 0)), None


@register_method("softtriple", family="proxy", m_per_class=1,
                 defaults={**_loss_params("kaiming_uniform_classes"), "centers_per_class": 10,
                           "la": 20.0, "gamma": 0.1, "margin": 0.01, "reg_weight": 0.2},
                 search_space={"loss_lr": LOSS_LR, "la": ("float", 0.01, 100.0),
                               "gamma": ("float", 0.01, 100.0), "reg_weight": ("float", 0.0, 1.0),
                               "margin": ("float", 0.0, 1.0)})
def _softtriple(num_classes, embedding_size, centers_per_class, la, gamma, margin, reg_weight,
                weight_init="kaiming_uniform_classes"):
    """SoftTriple (Qian et al. 2019), PML SoftTripleLoss with its center regulariser.

    At reg_weight 0 no regulariser is built: the same loss, without the regulariser's
    (C*K)^2 center-similarity matrix (which does not fit at SOP size)."""
    k = int(centers_per_class)
    reg = ({"weight_regularizer": regularizers.SparseCentersRegularizer(num_classes, k),
            "weight_reg_weight": reg_weight} if reg_weight else {})
    loss = losses.SoftTripleLoss(num_classes, embedding_size, centers_per_class=k,
                                 la=la, gamma=gamma, margin=margin, **reg,
                                 **_init(weight_init, 1))
    return loss, None


# ---- pair-based losses ----------------------------------------------------------------------

def _lp(squared: bool) -> distances.LpDistance:
    return distances.LpDistance(power=2 if squared else 1)


@register_method("contrastive", defaults={"pos_margin": 0.0, "neg_margin": 1.0},
                 search_space={"pos_margin": MARGIN, "neg_margin": MARGIN})
def _contrastive(num_classes, embedding_size, pos_margin, neg_margin):
    """Contrastive loss (Hadsell et al. 2006) over all pairs of the batch."""
    return losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), None


@register_method("contrastive-distance", base=None,
                 defaults={"pos_margin": 0.0, "neg_margin": 1.0, "cutoff": 0.5,
                           "nonzero_loss_cutoff": 1.4},
                 search_space={"pos_margin": MARGIN, "neg_margin": MARGIN})
def _contrastive_distance(num_classes, embedding_size, pos_margin, neg_margin, cutoff,
                          nonzero_loss_cutoff):
    """Contrastive loss on distance-weighted sampled pairs (DAS Table 2, "Contrastive [D]")."""
    miner = miners.DistanceWeightedMiner(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
    return losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin), miner


@register_method("triplet", defaults={"margin": 0.2, "squared": False},
                 search_space={"margin": MARGIN})
def _triplet(num_classes, embedding_size, margin, squared):
    """Triplet margin loss (Weinberger & Saul; Schroff et al.) over all triplets of the batch."""
    return losses.TripletMarginLoss(margin=margin, distance=_lp(squared)), None


@register_method("triplet-semihard", defaults={"margin": 0.2, "squared": False},
                 search_space={"margin": MARGIN})
def _triplet_semihard(num_classes, embedding_size, margin, squared):
    """Triplet loss with semihard negative mining (FaceNet)."""
    miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard",
                                      distance=_lp(squared))
    return losses.TripletMarginLoss(margin=margin, distance=_lp(squared)), miner


@register_method("triplet-distance",
                 defaults={"margin": 0.2, "squared": False, "cutoff": 0.5,
                           "nonzero_loss_cutoff": 1.4},
                 search_space={"margin": MARGIN})
def _triplet_distance(num_classes, embedding_size, margin, squared, cutoff, nonzero_loss_cutoff):
    """Triplet loss with distance-weighted sampling (Wu et al. 2017)."""
    miner = miners.DistanceWeightedMiner(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
    return losses.TripletMarginLoss(margin=margin, distance=_lp(squared)), miner


@register_method("margin",
                 defaults={**_loss_params(loss_lr=5e-4), "margin": 0.2, "beta": 1.2,
                           "learn_beta": True, "cutoff": 0.5, "nonzero_loss_cutoff": 1.4},
                 search_space={"loss_lr": LOSS_LR, "margin": MARGIN, "beta": MARGIN})
def _margin(num_classes, embedding_size, margin, beta, learn_beta, cutoff, nonzero_loss_cutoff):
    """Margin loss (Wu et al. 2017): per-class learnable beta, distance-weighted sampling."""
    loss = losses.MarginLoss(margin=margin, beta=beta, learn_beta=learn_beta,
                             num_classes=num_classes if learn_beta else None)
    miner = miners.DistanceWeightedMiner(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff)
    return loss, miner


MS_SPACE = {"alpha": ("float", 0.01, 100.0), "beta": ("float", 0.01, 100.0),
            "base": ("float", 0.0, 1.0)}


@register_method("ms", defaults={"alpha": 2.0, "beta": 50.0, "base": 0.5}, search_space=MS_SPACE)
def _ms(num_classes, embedding_size, alpha, beta, base):
    """Multi-similarity loss alone (MLRC's "MS"); with its pair miner: ms+miner."""
    return losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base), None


@register_method("ms+miner", defaults={"alpha": 2.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1},
                 search_space={**MS_SPACE, "epsilon": ("float", 0.0, 1.0)})
def _ms_miner(num_classes, embedding_size, alpha, beta, base, epsilon):
    """Multi-similarity loss with its pair miner (Wang et al. 2019; MLRC's "MS + miner")."""
    return (losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base),
            miners.MultiSimilarityMiner(epsilon=epsilon))


@register_method("ntxent", defaults={"temperature": 0.07},
                 search_space={"temperature": ("log", 1e-5, 100.0)})
def _ntxent(num_classes, embedding_size, temperature):
    """NT-Xent / InfoNCE over all positive pairs of the batch (Chen et al. 2020), as MLRC ran it."""
    return losses.NTXentLoss(temperature=temperature), None


@register_method("npair", defaults={"l2_weight": 0.005},
                 search_space={"l2_weight": ("float", 0.0, 0.1)})
def _npair(num_classes, embedding_size, l2_weight):
    """N-pair loss (Sohn 2016) with an L2 embedding penalty."""
    reg = regularizers.LpRegularizer() if l2_weight > 0 else None
    return losses.NPairsLoss(embedding_regularizer=reg, embedding_reg_weight=l2_weight), None


@register_method("genlifted", defaults={"neg_margin": 1.0, "pos_margin": 0.0, "l2_weight": 0.005},
                 search_space={"neg_margin": MARGIN, "pos_margin": MARGIN,
                               "l2_weight": ("float", 0.0, 0.1)})
def _genlifted(num_classes, embedding_size, neg_margin, pos_margin, l2_weight):
    """Generalized lifted structure loss (Hermans et al. 2017) with an L2 embedding penalty."""
    reg = regularizers.LpRegularizer() if l2_weight > 0 else None
    return losses.GeneralizedLiftedStructureLoss(neg_margin=neg_margin, pos_margin=pos_margin,
                                                 embedding_regularizer=reg,
                                                 embedding_reg_weight=l2_weight), None
