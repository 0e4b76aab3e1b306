"""A small residual CNN, as a user's own model: edgetune builds it only through its entry point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Residual(nn.Module):
    """x + conv(relu(conv(x))): same channels and size in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResidualCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(*(Residual(width) for _ in range(blocks)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.blocks(F.relu(self.stem(x))))
        x = F.max_pool2d(x, 2)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def residual_cnn(
    *, input_shape: tuple[int, ...], num_classes: int, width: int = 8, blocks: int = 1
) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"needs image input (C, H, W), not {input_shape}")
    return ResidualCNN(input_shape[0], num_classes, width, blocks)
