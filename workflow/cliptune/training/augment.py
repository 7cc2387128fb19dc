"""Batched training augmentation on the model's device (no per-sample Python).

Images: random resized crop (area ``scale``, aspect ``ratio``), horizontal flip and a small rotation composed into
one affine warp per sample (a single ``grid_sample``), then colour jitter
(brightness, contrast, saturation) with per-sample factors. Captions are augmented
by cliptune.training.caption_variations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F


def augment_images(x: torch.Tensor, cfg: Mapping, generator: torch.Generator | None = None,
                   ) -> torch.Tensor:
    """x: float N×C×H×W in [0, 1] -> augmented batch of the same shape."""
    n, device = x.shape[0], x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(device)

    lo, hi = cfg["scale"]
    r_lo, r_hi = cfg["ratio"]
    # Area fraction and log-uniform aspect ratio (train.augment.ratio) as torchvision's
    # RandomResizedCrop; scale [1, 1] with ratio [1, 1] keeps the whole image.
    area = lo + (hi - lo) * rand(n)
    log_ratio = math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * rand(n)
    ratio = log_ratio.exp()
    sx = (area * ratio).sqrt().clamp(max=1.0)  # crop width / image width
    sy = (area / ratio).sqrt().clamp(max=1.0)
    tx = (rand(n) * 2 - 1) * (1 - sx)  # crop centre, normalised coordinates
    ty = (rand(n) * 2 - 1) * (1 - sy)
    flip = torch.where(rand(n) < cfg["flip"], -1.0, 1.0)
    angle = (rand(n) * 2 - 1) * math.radians(cfg["rotation"])
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([cos * sx * flip, -sin * sy, tx], dim=1),
        torch.stack([sin * sx * flip, cos * sy, ty], dim=1),
    ], dim=1)
    out = _warp(x, theta)
    jitter = cfg["color_jitter"]
    if jitter:
        def factor():
            return (1 + (rand(n) * 2 - 1) * jitter).view(n, 1, 1, 1).to(x.dtype)

        out = out * factor()  # brightness
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * factor() + mean  # contrast
        gray = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
        out = (out - gray) * factor() + gray  # saturation
    return out.clamp_(0.0, 1.0)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply the per-sample affine ``theta`` (N×2×3); identity samples are copied as they
    are, since bilinear resampling of an identity grid is not bit-exact."""
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=theta.device)
    moved = (theta != identity).flatten(1).any(dim=1)
    if moved.all():  # the usual case: warp the batch as it is (a mask would copy it)
        return _grid_sample(x, theta)
    out = x.clone()
    if moved.any():
        out[moved] = _grid_sample(x[moved], theta[moved])
    return out


def _grid_sample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=False)
