"""Image tower: ImageNet trunk (torchvision ResNet or EfficientNet-Lite0), pooling,
projection head into text space."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cliptune.models import efficientnet_lite

# CLIP's preprocessing statistics; the text tower was trained against them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TRUNK_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
                  "efficientnet_lite0": efficientnet_lite.FEATURES}


def input_stats(backbone: str) -> tuple[tuple, tuple]:
    """(mean, std) the trunk normalises with. The lab's ResNet uses CLIP's statistics (as
    the handout specifies); EfficientNet-Lite0 its own [-1, 1] scaling, which its
    ImageNet weights were trained with."""
    if backbone == "efficientnet_lite0":
        return efficientnet_lite.MEAN, efficientnet_lite.STD
    return CLIP_MEAN, CLIP_STD


class WeightsUnavailableError(RuntimeError):
    pass


class SpatialAttentionPool(nn.Module):
    """The lab's ``use_attention_pooling``: a learned score per spatial location
    (a small MLP over its C features), softmax over the H*W locations, and the
    features' weighted sum. [B, C, H, W] -> weights [B, H*W, 1] -> [B, C]."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x.flatten(2).transpose(1, 2)).softmax(dim=1)  # B, HW, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # B, HW, C
        return (self.weights(x) * tokens).sum(dim=1)


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling (``pooling: clip_attention``): the mean token queries the flattened feature map
    (with a learned positional embedding) through multi-head attention."""

    def __init__(self, spatial: int, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention_heads={heads} must divide the trunk width {channels}")
        self.positional = nn.Parameter(torch.randn(spatial * spatial + 1, channels) / channels**0.5)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # B, HW, C
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)
        pos = self.positional
        if pos.shape[0] != tokens.shape[1]:  # another input size: resample the grid
            side = int(math.isqrt(pos.shape[0] - 1))
            grid = pos[1:].T.reshape(1, -1, side, side)
            hw = int(math.isqrt(tokens.shape[1] - 1))
            grid = F.interpolate(grid, size=(hw, hw), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:1], grid.reshape(pos.shape[1], -1).T], dim=0)
        tokens = tokens + pos.to(tokens.dtype)
        out, _ = self.attn(tokens[:, :1], tokens, tokens, need_weights=False)
        return out[:, 0]


def projection_head(in_dim: int, out_dim: int, hidden_dim: int, depth: int, norm: str,
                    dropout: float) -> nn.Sequential:
    """Linear -> [norm] -> GELU -> [dropout] ... -> Linear -> [norm] (depth Linear layers).

    The norm follows *each* Linear, the last included: the lab's ``use_batch_norm``
    head is Linear -> BatchNorm -> GELU -> Linear -> BatchNorm.
    """
    norms = {"batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if norm in norms:
            layers.append(norms[norm](d_out))
        if i < depth - 1:
            layers.append(nn.GELU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build_trunk(backbone: str, weights: str | None) -> nn.Sequential:
    if backbone == "efficientnet_lite0":
        return _efficientnet_trunk(weights)
    builder = getattr(torchvision.models, backbone)
    weight_enum = None
    if weights:
        enum_cls = torchvision.models.get_model_weights(backbone)
        try:
            weight_enum = enum_cls[weights] if weights != "DEFAULT" else enum_cls.DEFAULT
        except KeyError as exc:
            raise ValueError(
                f"model.weights = {weights!r} is not a {backbone} weight; use one of "
                f"{[w.name for w in enum_cls]}, DEFAULT, or null"
            ) from exc
    try:
        net = builder(weights=weight_enum)
    except Exception as exc:  # the download path raises URLError/OSError/RuntimeError
        if weight_enum is None:
            raise
        hub = torch.hub.get_dir()
        raise WeightsUnavailableError(
            f"cannot load {backbone} weights {weights} (offline?): {exc}. Fix: download "
            f"{weight_enum.url} on a machine with internet and place it in {hub}/checkpoints/ "
            "(or set TORCH_HOME), or set model.weights: null to train from scratch"
        ) from exc
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                         net.layer3, net.layer4)


def _efficientnet_trunk(weights: str | None) -> nn.Sequential:
    net = efficientnet_lite.EfficientNetLite0()
    if weights not in (None, "imagenet"):
        raise ValueError(f"model.weights = {weights!r} is not an efficientnet_lite0 weight; use "
                         "imagenet (the packaged ImageNet weights) or null")
    if weights:
        try:
            efficientnet_lite.load_imagenet(net)
        except OSError as exc:
            raise WeightsUnavailableError(str(exc)) from exc
    return nn.Sequential(net)


# Index of the first module of each residual stage inside the trunk Sequential:
# conv1, bn1, relu, maxpool, layer1..layer4.
STAGE_START = {1: 4, 2: 5, 3: 6, 4: 7}


def frozen_trunk_modules(cfg: Mapping, n_modules: int = 8) -> int:
    """How many of the trunk's ``n_modules`` leading modules are frozen: all
    (freeze_backbone), the stem plus the first 4 - N ResNet stages
    (trainable_stages: N), or none."""
    stages = cfg["trainable_stages"]
    if cfg["freeze_backbone"]:
        if stages not in (None, 0):
            raise ValueError(
                f"model.freeze_backbone = true conflicts with model.trainable_stages = {stages}; "
                "set one of them"
            )
        return n_modules
    if stages is None:
        return 0
    if stages and not cfg["backbone"].startswith("resnet"):
        raise ValueError(f"model.trainable_stages counts ResNet stages; with model.backbone = "
                         f"{cfg['backbone']} use freeze_backbone: true/false instead")
    return n_modules if stages == 0 else STAGE_START[5 - stages]


def freeze_trunk(trunk: nn.Sequential, n_frozen: int) -> list[nn.Module]:
    frozen = list(trunk)[:n_frozen]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def to_unit_float(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 NHWC batch -> float NCHW in [0, 1] on ``device`` (one batched op)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def build_pool(cfg: Mapping, channels: int, image_size: int) -> nn.Module:
    """``model.pooling``: avg, attention (the lab's spatial attention) or clip_attention."""
    if cfg["pooling"] == "attention":
        return SpatialAttentionPool(channels, cfg["attention_hidden"])
    if cfg["pooling"] == "clip_attention":
        spatial = max(1, math.ceil(image_size / 32))
        return AttentionPool2d(spatial, channels, cfg["attention_heads"])
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


class PixelNormalize(nn.Module):
    """The one pixel normalisation of every image path: the trunk towers (statistics of
    ``input_stats``), the HF CLIP tower (CLIP's) and the frozen-trunk feature cache, so
    cached features equal what the pixel path computes."""

    def __init__(self, mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        std_ = torch.tensor(std).view(1, 3, 1, 1)
        # (x - mean) / std as one multiply-add: one pass instead of two allocating ones.
        self.register_buffer("inv_std", 1.0 / std_, persistent=False)
        self.register_buffer("bias", -self.mean / std_, persistent=False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """float NCHW in [0, 1] -> normalised."""
        return torch.addcmul(self.bias, x01, self.inv_std)

    def from_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (the cache layout) -> normalised float NCHW, channels_last, on the
        buffers' device."""
        # Same arithmetic as the pixel path (to_unit_float, then forward): cached trunk
        # features equal it bit for bit. NHWC permuted to NCHW is already channels_last.
        x = self(to_unit_float(images, self.mean.device))
        return x.contiguous(memory_format=torch.channels_last)


class ImageEncoder(nn.Module):
    def __init__(self, cfg: Mapping, embed_dim: int, image_size: int):
        super().__init__()
        self.trunk = build_trunk(cfg["backbone"], cfg["weights"])
        channels = TRUNK_CHANNELS[cfg["backbone"]]
        self.pool = build_pool(cfg, channels, image_size)
        head = cfg["head"]
        self.head = projection_head(channels, embed_dim, head["hidden_dim"], head["depth"],
                                    head["norm"], head["dropout"])
        self.frozen = freeze_trunk(self.trunk, frozen_trunk_modules(cfg, len(self.trunk)))
        self.freeze_bn_stats = bool(cfg["freeze_bn_stats"])
        self.trunk_bn_eval = bool(cfg["trunk_bn_eval"])
        self.pixel_norm = PixelNormalize(*input_stats(cfg["backbone"]))

    def train(self, mode: bool = True):
        super().train(mode)
        # BN in eval mode keeps its (ImageNet) running statistics: in frozen stages
        # (freeze_bn_stats), or in the whole trunk (trunk_bn_eval; its affine weights
        # still train), the usual choice when fine-tuning with small batches.
        eval_bn = list(self.trunk) if self.trunk_bn_eval else (
            self.frozen if self.freeze_bn_stats else [])
        if mode:
            for module in eval_bn:
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def normalize_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC (the cache layout) -> normalised float NCHW on the model's device."""
        return self.pixel_norm.from_uint8(images)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """float NCHW in [0, 1] -> CLIP-normalised, channels_last."""
        return self.pixel_norm(x01).contiguous(memory_format=torch.channels_last)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.pool(self.trunk(pixels))).float(), dim=-1)

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Cached frozen-trunk output (N×C×h×w map, or N×C already average-pooled;
        cliptune.data.caches.features) -> embeddings: only the trainable part runs."""
        pooled = feats if feats.ndim == 2 else self.pool(feats)
        return F.normalize(self.head(pooled).float(), dim=-1)


class ClipHead(nn.Module):
    """Image encoder plus the (optionally learnable) logit scale of the InfoNCE loss.

    Captions come from the frozen text cache (``text_from_cache``), the fastest path.
    """

    text_from_cache = True
    # Freshly initialised parts, trained at train.head_lr when set (the trunk is pretrained).
    NEW_ROLES = ("head", "temperature")

    def __init__(self, model_cfg: Mapping, train_cfg: Mapping, embed_dim: int, image_size: int):
        super().__init__()
        self.image = ImageEncoder(model_cfg, embed_dim, image_size)
        init = math.log(1.0 / train_cfg["temperature"])
        self.logit_scale = nn.Parameter(torch.tensor(init),
                                        requires_grad=train_cfg["learnable_temperature"])
        self.max_log_scale = math.log(train_cfg["max_logit_scale"])

    def scale(self) -> torch.Tensor:
        # CLIP clamps the learned scale at 100 so the logits cannot blow up.
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.logit_scale.clamp_(max=self.max_log_scale)

    def param_role(self, name: str) -> str:
        """Optimiser group of a parameter: the pretrained ``trunk``, the new ``head``
        (pool + projection) or the ``temperature``."""
        if name == "logit_scale":
            return "temperature"
        return "trunk" if name.startswith("image.trunk.") else "head"

    def embed_images(self, x01: torch.Tensor) -> torch.Tensor:
        return self.image(self.image.normalize(x01))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC batch -> L2-normalised embeddings (what evaluation calls)."""
        return self.embed_images(to_unit_float(images, self.logit_scale.device))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        raise RuntimeError("this model reads caption embeddings from the text cache")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image(pixels)
