"""Contrastive losses, kept small and single-purpose (as in open_clip)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch pairs: row i of each side is a positive pair,
    every other row of the other side a negative. Inputs are L2-normalised."""
    logits = logit_scale * image_emb.float() @ text_emb.float().T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
