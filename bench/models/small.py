"""A small CNN trunk that trains in minutes on a 2-core CPU at 32x32..64x64 pixels."""
from __future__ import annotations

import torch
from torch import nn

from dmlbench.bench.errors import UserError
from dmlbench.bench.models import pool, register_trunk


class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU stages (width, 2w, 4w, 8w channels), the first three followed by
    2x2 max pooling, then global pooling: out_features = 8 * width."""

    def __init__(self, in_channels: int = 1, width: int = 32, pooling: str = "avg") -> None:
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pooling = pooling
        self.out_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.features(x), self.pooling)


@register_trunk("smallcnn")
def smallcnn(*, in_channels: int = 1, pretrained: bool = False, pooling: str = "avg",
             width: int = 32, **_: object) -> SmallCNN:
    if pretrained:
        raise UserError("trunk 'smallcnn' has no pretrained weights; set model.pretrained=false")
    return SmallCNN(in_channels, width, pooling)
