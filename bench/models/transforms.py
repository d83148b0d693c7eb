"""The papers' image transforms, with the input normalisation each trunk's weights expect.

Presets (at the paper's crop size; ImageSource passes `image_size` as the crop):
- "mlrc" (MLRC, MemVir Table 2): train Resize(256) -> RandomResizedCrop(227, scale (0.16, 1),
  ratio (0.75, 1.33)) -> horizontal flip; eval Resize(256) -> CenterCrop(227).
- "conventional" (MemVir Table 4, DAS): train RandomResizedCrop(224) (torchvision's default
  scale (0.08, 1), ratio (3/4, 4/3)) -> flip; eval Resize(256) -> CenterCrop(224).
At another crop size the Resize side scales with it (round(256 * size / paper crop)), so tiny
smoke-test images keep the papers' proportions.

Normalisation by trunk: "bninception" takes BGR, 0-255, minus [104, 117, 128], std 1;
torchvision trunks and unknown ones take RGB 0-1 with ImageNet mean/std; "timm:<model>" takes
the mean/std of the model's pretrained config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dmlbench.bench.errors import UserError, unknown_name

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BNINCEPTION_MEAN_BGR = (104.0, 117.0, 128.0)


@dataclass(frozen=True)
class Preset:
    crop: int
    resize: int
    train_resize: bool                        # Resize before RandomResizedCrop (MLRC)
    scale: tuple[float, float]
    ratio: tuple[float, float]


PRESETS: dict[str, Preset] = {
    "mlrc": Preset(crop=227, resize=256, train_resize=True, scale=(0.16, 1.0),
                   ratio=(0.75, 1.33)),
    "conventional": Preset(crop=224, resize=256, train_resize=False, scale=(0.08, 1.0),
                           ratio=(3 / 4, 4 / 3)),
}


@dataclass(frozen=True)
class InputNorm:
    """What a trunk's weights expect: channel order, value range (1 or 255), mean and std
    (per channel, in that order and range)."""

    space: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


BNINCEPTION_NORM = InputNorm("BGR", 255.0, BNINCEPTION_MEAN_BGR, (1.0, 1.0, 1.0))
IMAGENET_NORM = InputNorm("RGB", 1.0, IMAGENET_MEAN, IMAGENET_STD)


def input_normalization(trunk: str) -> InputNorm:
    """The normalisation the named trunk's pretrained weights expect."""
    if trunk == "bninception":
        return BNINCEPTION_NORM
    if trunk.startswith("timm:"):
        return _timm_norm(trunk[len("timm:"):])
    return IMAGENET_NORM


def _timm_norm(model_name: str) -> InputNorm:
    try:
        from timm.models import get_pretrained_cfg
        cfg = get_pretrained_cfg(model_name)
    except Exception:  # timm missing or an unknown model: the trunk factory will say so
        cfg = None
    if cfg is None or not cfg.mean or not cfg.std:
        return IMAGENET_NORM
    return InputNorm("RGB", 1.0, tuple(float(m) for m in cfg.mean),
                     tuple(float(s) for s in cfg.std))


class ToNormalizedTensor:
    """PIL image -> float (3, H, W) tensor in the trunk's space, range, mean and std.

    For 0-255 inputs the pixel bytes are used as they are (no /255 * 255 round trip).
    """

    def __init__(self, norm: InputNorm) -> None:
        self.norm = norm
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        if img.mode != "RGB":
            img = img.convert("RGB")
        x = TF.pil_to_tensor(img).float()            # RGB, 0-255
        if self.norm.scale != 255.0:
            x = x.div_(255.0 / self.norm.scale)
        if self.norm.space == "BGR":
            x = x.flip(0)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        n = self.norm
        return f"{type(self).__name__}({n.space}, 0-{n.scale:g}, mean={n.mean}, std={n.std})"


class PaperTransforms:
    """`transforms(image_size, train)` for ImageSource: a preset's crops + a trunk's norm."""

    def __init__(self, preset: str, trunk: str) -> None:
        if preset not in PRESETS:
            raise unknown_name("transform preset", preset, list(PRESETS))
        self.preset_name = preset
        self.preset = PRESETS[preset]
        self.trunk = trunk
        self.norm = input_normalization(trunk)

    def resize_side(self, image_size: int) -> int:
        p = self.preset
        return p.resize if image_size == p.crop else int(round(p.resize * image_size / p.crop))

    def __call__(self, image_size: int, train: bool):
        from torchvision import transforms as T

        if image_size < 1:
            raise UserError(f"dataset.image_size must be positive, not {image_size}")
        p = self.preset
        resize = self.resize_side(image_size)
        steps: list[Callable] = []
        if train:
            if p.train_resize:
                steps.append(T.Resize(resize))
            steps += [T.RandomResizedCrop(image_size, scale=p.scale, ratio=p.ratio),
                      T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(resize), T.CenterCrop(image_size)]
        steps.append(ToNormalizedTensor(self.norm))
        return T.Compose(steps)

    def __repr__(self) -> str:
        return f"PaperTransforms({self.preset_name!r}, {self.trunk!r})"


def make_transforms(preset: str, trunk: str) -> PaperTransforms:
    """`transforms(image_size, train) -> torchvision transform` for the preset ("mlrc" or
    "conventional") with the input normalisation of `trunk`; pass it to ImageSource."""
    return PaperTransforms(preset, trunk)


def list_presets() -> list[str]:
    return sorted(PRESETS)
