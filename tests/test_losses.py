"""InfoNCE against a hand computation."""

from __future__ import annotations

import math

import torch
from cliptune.losses import clip_loss


def _hand_infonce(img, txt, scale):
    n = len(img)
    sims = [[scale * sum(a * b for a, b in zip(img[i], txt[j], strict=True)) for j in range(n)]
            for i in range(n)]

    def ce(rows):
        total = 0.0
        for i, row in enumerate(rows):
            total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        return total / n

    cols = [[sims[i][j] for i in range(n)] for j in range(n)]
    return 0.5 * (ce(sims) + ce(cols))


def test_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1)
    for scale in (1.0, 1 / 0.07, 100.0):
        got = clip_loss(img, txt, scale).item()
        assert abs(got - _hand_infonce(img.tolist(), txt.tolist(), scale)) < 1e-4


def test_two_by_two_closed_form():
    # Orthogonal pairs: positives have similarity 1, negatives 0.
    img = torch.eye(2)
    loss = clip_loss(img, img.clone(), 2.0).item()
    assert abs(loss - math.log(1 + math.exp(-2.0))) < 1e-6


def test_asymmetric_directions_are_averaged():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0], [0.3, 1.0]]), dim=-1)
    logits = 3.0 * img @ txt.T
    labels = torch.arange(3)
    i2t = torch.nn.functional.cross_entropy(logits, labels)
    t2i = torch.nn.functional.cross_entropy(logits.T, labels)
    assert i2t != t2i
    assert torch.isclose(clip_loss(img, txt, 3.0), (i2t + t2i) / 2)


def test_gradient_flows_to_scale():
    img = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    scale = torch.tensor(2.0, requires_grad=True)
    clip_loss(img, img.clone(), scale).backward()
    assert scale.grad is not None and scale.grad < 0  # sharper logits lower the loss here
