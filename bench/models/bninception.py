"""BN-Inception (Ioffe & Szegedy 2015), the MLRC / MemVir / DAS trunk: 1024-d pooled features.

Layer names, shapes and wiring match the ImageNet weights published with Cadene's
`pretrainedmodels` (`bn_inception-52deb4733.pth`, a Caffe model translated by Y. Xiong), so the
file's keys are this module's state-dict keys: `conv1_7x7_s2`, `conv1_7x7_s2_bn`, ...,
`inception_5b_pool_proj_bn` (69 convolutions with bias, each followed by BatchNorm and ReLU).
Input: BGR, 0-255, minus the mean [104, 117, 128] (B, G, R), std 1 (see bench.models.transforms).
BatchNorm uses PyTorch's default momentum 0.1 (the reference sets 0.9, a Torch7 habit that
means "keep 10% of the old statistics" in PyTorch; it only matters if BN is not frozen, and
MLRC, MemVir and DAS all freeze it).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dmlbench.bench.errors import UserError
from dmlbench.bench.models import pool

WEIGHTS_FILE = "bn_inception-52deb4733.pth"
WEIGHTS_URL = "http://data.lip6.fr/cadene/pretrainedmodels/" + WEIGHTS_FILE
# The later upload that pretrainedmodels' current release downloads instead; also accepted
# from the hub cache (same keys; BN tensors may be stored as (C,) or (1, C)).
ALT_WEIGHTS_FILES = ("bn_inception-239d2248.pth",)
MEAN_BGR = (104.0, 117.0, 128.0)
STD = (1.0, 1.0, 1.0)
OUT_FEATURES = 1024
NUM_CLASSES = 1000  # the ImageNet classifier `last_linear` in the weights file (not used)

# Inception modules: (name, in, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3,
# pool kind, pool projection, stride). Stride-2 modules (3c, 4e) have no 1x1 branch and no
# projection: their pool branch is a 3x3/2 max pool of the module input, and their 3x3 and
# second double-3x3 convolutions have stride 2.
BLOCKS: tuple[tuple, ...] = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
)


def block_out_channels(block: tuple) -> int:
    _, cin, c1, _, c3, _, cd, _, proj, stride = block
    return c3 + cd + (cin if stride == 2 else c1 + proj)


class BNInception(nn.Module):
    """BN-Inception trunk: (B, 3, H, W) BGR mean-subtracted images -> (B, 1024) pooled features.

    `features(x)` gives the (B, 1024, H/32, W/32) map. `in_channels=1` repeats a grey channel
    three times. H and W must give even maps at inception 3c and 4e (224, 227, 64, 32 do);
    other sizes raise a UserError naming the nearest valid ones.
    """

    def __init__(self, pooling: str = "avg", in_channels: int = 3) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise UserError(f"trunk 'bninception' takes 1- or 3-channel images, not {in_channels}")
        self.in_channels = in_channels
        self.pooling = pooling
        self.out_features = OUT_FEATURES
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3, padding=1)
        for block in BLOCKS:
            name, cin, c1, c3r, c3, cdr, cd, _, proj, stride = block
            p = f"inception_{name}_"
            if stride == 1:
                self._unit(p + "1x1", cin, c1, 1)
            self._unit(p + "3x3_reduce", cin, c3r, 1)
            self._unit(p + "3x3", c3r, c3, 3, stride=stride, padding=1)
            self._unit(p + "double_3x3_reduce", cin, cdr, 1)
            self._unit(p + "double_3x3_1", cdr, cd, 3, padding=1)
            self._unit(p + "double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            if stride == 1:
                self._unit(p + "pool_proj", cin, proj, 1)
        assert block_out_channels(BLOCKS[-1]) == OUT_FEATURES

    def _unit(self, name: str, cin: int, cout: int, k: int, stride: int = 1,
              padding: int = 0) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
        self.add_module(name + "_bn", nn.BatchNorm2d(cout, eps=1e-5))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        conv, bn = getattr(self, name), getattr(self, name + "_bn")
        return F.relu(bn(conv(x)), inplace=True)

    def _block(self, block: tuple, x: torch.Tensor) -> torch.Tensor:
        name, _, _, _, _, _, _, pool_kind, _, stride = block
        p = f"inception_{name}_"
        b3 = self._cbr(p + "3x3", self._cbr(p + "3x3_reduce", x))
        bd = self._cbr(p + "double_3x3_reduce", x)
        bd = self._cbr(p + "double_3x3_2", self._cbr(p + "double_3x3_1", bd))
        if stride == 2:
            return torch.cat([b3, bd, F.max_pool2d(x, 3, stride=2, ceil_mode=True)], 1)
        if pool_kind == "avg":
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True,
                                  count_include_pad=True)
        else:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        return torch.cat([self._cbr(p + "1x1", x), b3, bd, self._cbr(p + "pool_proj", pooled)], 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input_size(x.shape[-2], x.shape[-1])
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self._cbr("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for block in BLOCKS:
            x = self._block(block, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.features(x), self.pooling)


def _size_at_3c(h: int) -> int:
    h = (h - 1) // 2 + 1                     # conv 7x7/2, padding 3
    for _ in range(2):                       # max pool 3x3/2, ceil mode
        h = -(-(h - 3) // 2) + 1
    return h


def input_size_ok(h: int) -> bool:
    """Whether an input side of h pixels gives matching branch sizes in modules 3c and 4e
    (true for 32k-1 .. 32k+6, k >= 1: 63-70, 223-230, ...)."""
    return h >= 31 and _size_at_3c(h) % 4 == 0


def _check_input_size(h: int, w: int) -> None:
    for side in (h, w):
        if not input_size_ok(side):
            near = min((s for s in range(31, side + 40) if input_size_ok(s)),
                       key=lambda s: abs(s - side))
            raise UserError(f"BN-Inception cannot take {h}x{w} images (its branches would "
                            f"differ in size); use sides of 32k-1 to 32k+6 pixels, e.g. {near}, "
                            "224 or 227")


def _is_bn_key(key: str) -> bool:
    mod, _, leaf = key.rpartition(".")
    return mod.endswith("_bn") and leaf in ("weight", "bias", "running_mean", "running_var")


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The published weights as this module's state dict.

    `bn_inception-52deb4733.pth` stores BatchNorm tensors as (1, C): they become (C,).
    The ImageNet classifier `last_linear.{weight,bias}` is dropped after checking its shapes
    (1000x1024, 1000). Everything else passes through for the strict check.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key in ("last_linear.weight", "last_linear.bias"):
            want = (NUM_CLASSES, OUT_FEATURES) if key.endswith("weight") else (NUM_CLASSES,)
            if tuple(value.shape) != want:
                raise UserError(f"BN-Inception weights: {key} has shape {tuple(value.shape)}, "
                                f"expected {want}; is this the ImageNet file {WEIGHTS_FILE}?")
            continue
        if _is_bn_key(key) and value.ndim == 2 and value.shape[0] == 1:
            value = value.reshape(-1)
        out[key] = value
    return out
