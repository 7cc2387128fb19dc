"""Losses: InfoNCE vs a hand computation and an independent NumPy reference, triplet
mining, hard-negative InfoNCE and the negative index."""

from __future__ import annotations

import math

import pytest
import torch

from cliptune.training.losses import clip_loss


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


# --- independent references and the other losses -------------------------------------


def _reference_infonce_numpy(img, txt, scale):
    """Written from the CLIP paper's pseudo-code with NumPy (float64), not torch."""
    import numpy as np

    logits = scale * np.asarray(img, dtype=np.float64) @ np.asarray(txt, dtype=np.float64).T

    def xent(z):  # mean over rows of -log softmax(z)[i, i], stabilised
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(logp))

    return (xent(logits) + xent(logits.T)) / 2


def test_matches_independent_reference_implementation():
    g = torch.Generator().manual_seed(1)
    for n, d in ((2, 3), (7, 16), (33, 8)):
        img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
        for scale in (1.0, 14.3, 100.0):
            ref = _reference_infonce_numpy(img.numpy(), txt.numpy(), scale)
            assert abs(clip_loss(img, txt, scale).item() - ref) < 1e-4


def test_learnable_temperature_is_clamped_like_clip():
    from cliptune.config.load import DEFAULTS, deep_merge
    from cliptune.models.image_tower import ClipHead

    model_cfg = deep_merge(DEFAULTS["model"], {"backbone": "resnet18", "weights": None,
                                               "head": {"hidden_dim": 8}})
    train_cfg = deep_merge(DEFAULTS["train"], {"temperature": 0.001, "max_logit_scale": 100.0})
    head = ClipHead(model_cfg, train_cfg, 4, 32)
    assert head.scale().item() == pytest.approx(100.0)  # 1/0.001 clamped to 100
    head.clamp_()
    assert head.logit_scale.item() == pytest.approx(math.log(100.0))


def _hand_triplet(sims, margin, mining):
    n = len(sims)

    def one_way(s):
        total = 0.0
        for i in range(n):
            pos = s[i][i]
            negs = [s[i][j] for j in range(n) if j != i]
            if mining == "semihard":
                semi = [v for v in negs if pos - margin < v < pos]
                chosen = max(semi) if semi else max(negs)
            else:
                chosen = max(negs)
            total += max(0.0, margin + chosen - pos)
        return total / n

    cols = [[sims[i][j] for i in range(n)] for j in range(n)]
    return (one_way(sims) + one_way(cols)) / 2


@pytest.mark.parametrize("mining", ["hardest", "semihard"])
def test_triplet_matches_hand_computation(mining):
    from cliptune.training.losses import triplet_loss

    g = torch.Generator().manual_seed(2)
    img = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.6 * torch.randn(6, 5, generator=g), dim=-1)
    sims = (img @ txt.T).tolist()
    for margin in (0.05, 0.2, 1.0):
        got = triplet_loss(img, txt, margin, mining).item()
        assert got == pytest.approx(_hand_triplet(sims, margin, mining), abs=1e-5)


def test_semihard_differs_from_hardest_and_bad_mining_fails():
    from cliptune.training.losses import triplet_loss

    # Row 0: positive 0.9, negatives 0.95 (harder than positive) and 0.8 (semi-hard).
    sims = torch.tensor([[0.9, 0.95, 0.8], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9]])
    img, txt = torch.eye(3), sims.T.contiguous()  # img @ txt.T == sims
    hard = triplet_loss(img, txt, 0.2, "hardest")
    semi = triplet_loss(img, txt, 0.2, "semihard")
    assert semi < hard
    with pytest.raises(ValueError, match="semihard"):
        triplet_loss(img, txt, 0.2, "easy")


def test_hard_negative_loss_extends_the_softmax_with_mined_negatives():
    from cliptune.training.losses import hard_negative_loss

    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(4, 6, generator=g), dim=-1)
    # Without mined negatives and hinge it is InfoNCE.
    assert torch.isclose(hard_negative_loss(img, txt, 10.0, hardest_weight=0.0),
                         clip_loss(img, txt, 10.0))
    mined_t = torch.nn.functional.normalize(torch.randn(4, 3, 6, generator=g), dim=-1)
    mined_i = torch.nn.functional.normalize(torch.randn(4, 3, 6, generator=g), dim=-1)
    got = hard_negative_loss(img, txt, 10.0, mined_t, mined_i, hardest_weight=0.0)
    labels = torch.arange(4)
    i2t = torch.cat([img @ txt.T, (img[:, None] * mined_t).sum(-1)], 1) * 10
    t2i = torch.cat([txt @ img.T, (txt[:, None] * mined_i).sum(-1)], 1) * 10
    ref = (torch.nn.functional.cross_entropy(i2t, labels)
           + torch.nn.functional.cross_entropy(t2i, labels)) / 2
    assert torch.isclose(got, ref, atol=1e-6)
    assert got > clip_loss(img, txt, 10.0)  # more negatives, higher loss


def test_negative_index_never_mines_an_images_own_captions():
    from cliptune.training.hard_negatives import mine

    g = torch.Generator().manual_seed(4)
    images = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    captions = torch.cat([images, images + 0.01])  # each image's 2 captions are its nearest
    owner = torch.arange(5).repeat(2)
    hard = mine(images, captions, torch.arange(5), owner, k=3, block=2)
    assert hard.shape == (5, 3)
    assert not (owner[hard] == torch.arange(5)[:, None]).any()


def test_random_negatives_are_seeded_other_images_and_not_the_nearest():
    from cliptune.training.hard_negatives import _pick, draw_random

    g = torch.Generator().manual_seed(4)
    images = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    captions = torch.cat([images, images + 0.01])
    owner = torch.arange(40).repeat(2)
    draw = draw_random(torch.arange(40), owner, 5, torch.Generator().manual_seed(0))
    assert draw.shape == (40, 5) and not (owner[draw] == torch.arange(40)[:, None]).any()
    again = _pick("random", images, captions, torch.arange(40), owner, 5,
                  torch.Generator().manual_seed(0))
    assert torch.equal(draw, again)  # seeded: a resumed epoch redraws the same negatives
    other = draw_random(torch.arange(40), owner, 5, torch.Generator().manual_seed(1))
    assert not torch.equal(draw, other)
    semantic = _pick("semantic", images, captions, torch.arange(40), owner, 5, None)
    sims = (images[:, None] * captions[draw]).sum(-1)
    nearest = (images[:, None] * captions[semantic]).sum(-1)
    assert sims.mean() < nearest.mean() - 0.3  # random ones are far easier than mined ones
    with pytest.raises(ValueError, match="at least two images"):
        draw_random(torch.arange(2), torch.zeros(3, dtype=torch.long), 2,
                    torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="semantic or random"):
        _pick("nearest", images, captions, torch.arange(40), owner, 5, None)


def test_k_beyond_the_other_images_captions_stops_naming_the_largest_k():
    from cliptune.training.hard_negatives import _pick

    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=-1)
    owner = torch.arange(3).repeat_interleave(5)  # 3 images x 5 captions
    captions = torch.nn.functional.normalize(images[owner] + 0.01, dim=-1)
    for strategy in ("semantic", "random"):
        with pytest.raises(ValueError, match=r"k = 12.*only 10 candidates.*k <= 10"):
            _pick(strategy, images, captions, torch.arange(3), owner, 12,
                  torch.Generator().manual_seed(0))
        # caption -> image: 2 other images
        with pytest.raises(ValueError, match=r"k = 3.*only 2 candidates.*k <= 2"):
            _pick(strategy, captions, images, owner, torch.arange(3), 3,
                  torch.Generator().manual_seed(0))
        hard = _pick(strategy, images, captions, torch.arange(3), owner, 10,
                     torch.Generator().manual_seed(0))
        assert hard.shape == (3, 10) and not (owner[hard] == torch.arange(3)[:, None]).any()


def test_identical_captions_of_other_images_are_never_mined_as_negatives():
    from cliptune.training.hard_negatives import _pick, copied_caption_pairs

    texts = ["a dog on grass", "a red bus", "A  dog on grass", "a cat", "two birds", "a boat",
             "a red bus.", "a kite"]
    owner = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    img_keys, cap_keys = copied_caption_pairs(texts, owner.numpy())
    n_cap, n_img = len(texts), 4
    # captions 0 and 2 are one text (case and spaces differ) on images 0 and 1
    assert sorted((k // n_cap, k % n_cap) for k in img_keys) == [(0, 2), (1, 0)]
    assert sorted((k // n_img, k % n_img) for k in cap_keys) == [(0, 1), (2, 0)]
    g = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    captions = images[owner].clone()
    captions[2] = captions[0]  # the copied caption is image 0's nearest other caption
    captions = torch.nn.functional.normalize(captions + 0.01, dim=-1)
    img_forbid, cap_forbid = torch.from_numpy(img_keys), torch.from_numpy(cap_keys)
    hard_t = _pick("semantic", images, captions, torch.arange(4), owner, 5, None, img_forbid)
    assert 2 not in hard_t[0].tolist() and 0 not in hard_t[1].tolist()
    hard_i = _pick("semantic", captions, images, owner, torch.arange(4), 2, None, cap_forbid)
    assert 1 not in hard_i[0].tolist() and 0 not in hard_i[2].tolist()
    # Without the copies' pairs, the copy is the first thing image 0 would mine.
    assert _pick("semantic", images, captions, torch.arange(4), owner, 1, None)[0, 0] == 2
    for seed in range(5):
        drawn = _pick("random", images, captions, torch.arange(4), owner, 5,
                      torch.Generator().manual_seed(seed), img_forbid)
        assert 2 not in drawn[0].tolist() and 0 not in drawn[1].tolist()
    # Caption 0 may not take image 1, so it has 2 of the 3 other images left.
    with pytest.raises(ValueError, match=r"training caption 0 has only 2 candidates"):
        _pick("semantic", captions, images, owner, torch.arange(4), 3, None, cap_forbid,
              "training caption")


def test_hard_negative_parts_are_infonce_hinge_and_the_in_batch_form():
    from cliptune.training.losses import LOSS_PARTS, batch_loss, clip_loss, triplet_loss

    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(4, 8, generator=g), dim=-1)
    mined = tuple(torch.nn.functional.normalize(torch.randn(4, 3, 8, generator=g), dim=-1)
                  for _ in range(2))
    tcfg = {"loss": "hard_negative",
            "hard_negatives": {"hardest_weight": 0.5, "margin": 0.2}}
    parts = {}
    loss = batch_loss(tcfg, img, txt, torch.tensor(10.0), mined, parts)
    assert set(parts) == set(LOSS_PARTS)
    hinge = triplet_loss(img, txt, 0.2, "hardest")
    assert torch.isclose(parts["loss_hinge"], hinge)
    assert torch.isclose(loss, parts["loss_infonce"] + 0.5 * hinge)
    assert torch.isclose(parts["loss_in_batch"], clip_loss(img, txt, 10.0) + 0.5 * hinge)
    assert parts["loss_in_batch"] < loss  # mined negatives only add to the denominators
    plain = {}
    batch_loss(tcfg, img, txt, torch.tensor(10.0), None, plain)  # validation: no mined
    assert torch.isclose(plain["loss_in_batch"], parts["loss_in_batch"])
    info = {}
    batch_loss({"loss": "infonce"}, img, txt, torch.tensor(10.0), None, info)
    assert torch.isnan(info["loss_hinge"]) and info["loss_infonce"] == info["loss_in_batch"]
