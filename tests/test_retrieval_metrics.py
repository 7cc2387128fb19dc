"""Blocked retrieval metrics vs an independent brute force (full matrix, stable argsort,
Python loops) and vs torchmetrics where both define the same quantity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cliptune.evaluation.retrieval_metrics import (
    retrieval_metrics_and_ranks,
    topk_images,
    topk_texts,
)

KS = (1, 2, 5, 10)


def retrieval_metrics(*args, **kwargs) -> dict[str, float]:
    return retrieval_metrics_and_ranks(*args, **kwargs)[0]


def i2t_ranks(*args, **kwargs) -> torch.Tensor:
    return retrieval_metrics_and_ranks(*args, **kwargs)[1]


def t2i_ranks(*args, **kwargs) -> torch.Tensor:
    return retrieval_metrics_and_ranks(*args, **kwargs)[2]


# ---------------------------------------------------------------------------------------
# data and reference
# ---------------------------------------------------------------------------------------


def make_data(kind: str, n_img: int = 24, dim: int = 8, seed: int = 0):
    """Images with 1..7 captions each (COCO has 5-7), captions shuffled.

    ``quantised``: small-integer embeddings, so every dot product is exact in float32 and
    float64 and exact ties are everywhere; ``duplicated`` adds identical rows on top;
    ``duplicated_continuous``: unit-norm float embeddings with identical rows (copied
    captions and images, as in COCO), where float32 matmul rounding could split ties;
    ``tied``: all-zero embeddings, every score equal (pure tie-break test).
    """
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 8, (n_img,), generator=g)
    tii = torch.repeat_interleave(torch.arange(n_img), counts)
    tii = tii[torch.randperm(tii.numel(), generator=g)]
    img = torch.randn(n_img, dim, generator=g)
    txt = img[tii] + 0.9 * torch.randn(tii.numel(), dim, generator=g)
    if kind in ("continuous", "duplicated_continuous"):
        img = torch.nn.functional.normalize(img, dim=1)
        txt = torch.nn.functional.normalize(txt, dim=1)
    elif kind in ("quantised", "duplicated"):
        img, txt = img.round().clamp(-2, 2), txt.round().clamp(-2, 2)
    elif kind == "tied":
        img, txt = torch.zeros_like(img), torch.zeros_like(txt)
    else:
        raise AssertionError(kind)
    if kind.startswith("duplicated"):
        m = txt.shape[0]
        src = torch.randint(0, m, (m // 3,), generator=g)
        dst = torch.randint(0, m, (m // 3,), generator=g)
        txt[dst] = txt[src]
        img[1::4] = img[0::4][: img[1::4].shape[0]]
    return img, txt, tii


def exact_scores(img, txt) -> np.ndarray:
    """float64 scores, each a function of its two vectors only (no BLAS): products of
    float32 values are exact in float64 and every pair is summed by the same reduction,
    so identical vectors tie exactly."""
    a, b = img.double().numpy(), txt.double().numpy()
    return (a[:, None, :] * b[None, :, :]).sum(axis=-1)


def brute_force(img, txt, tii, ks):
    """Independent reference: exact scores, stable argsort of -score, plain loops."""
    sims = exact_scores(img, txt)
    tii = tii.tolist()
    n_img, n_txt = sims.shape
    r_i2t, r_t2i = [], []
    ap = {k: [] for k in ks}
    ap_min = {k: [] for k in ks}
    ndcg = {k: [] for k in ks}
    ap_full, ndcg_full = [], []
    for i in range(n_img):
        order = np.argsort(-sims[i], kind="stable")
        positions = [p + 1 for p, m in enumerate(order) if tii[m] == i]
        r_i2t.append(positions[0])
        n_rel = len(positions)
        for k in ks:
            hits = [p for p in positions if p <= k]
            precision_sum = sum((j + 1) / p for j, p in enumerate(hits))
            ap[k].append(precision_sum / len(hits) if hits else 0.0)
            ap_min[k].append(precision_sum / min(k, n_rel))
            dcg = sum(1 / math.log2(p + 1) for p in hits)
            idcg = sum(1 / math.log2(j + 1) for j in range(1, min(k, n_rel) + 1))
            ndcg[k].append(dcg / idcg)
        ap_full.append(sum((j + 1) / p for j, p in enumerate(positions)) / n_rel)
        ndcg_full.append(sum(1 / math.log2(p + 1) for p in positions)
                         / sum(1 / math.log2(j + 1) for j in range(1, n_rel + 1)))
    for m in range(n_txt):
        order = np.argsort(-sims[:, m], kind="stable")
        r_t2i.append(int(np.nonzero(order == tii[m])[0][0]) + 1)
    out = {}
    for name, ranks in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100 * sum(r <= k for r in ranks) / len(ranks)
        srt = sorted(ranks)
        mid = len(srt) // 2
        out[f"{name}_medr"] = srt[mid] if len(srt) % 2 else (srt[mid - 1] + srt[mid]) / 2
        out[f"{name}_meanr"] = sum(ranks) / len(ranks)
        out[f"{name}_mrr"] = sum(1 / r for r in ranks) / len(ranks)
    out["rsum"] = sum(100 * sum(r <= k for r in ranks) / len(ranks)
                      for ranks in (r_i2t, r_t2i) for k in (1, 5, 10))
    for k in ks:
        out[f"i2t_mAP@{k}"] = 100 * sum(ap[k]) / n_img
        out[f"i2t_mAP_minKR@{k}"] = 100 * sum(ap_min[k]) / n_img
        out[f"i2t_NDCG@{k}"] = 100 * sum(ndcg[k]) / n_img
        # text->image: one relevant image per caption, the same AP/NDCG definitions
        out[f"t2i_mAP@{k}"] = 100 * sum(1 / r for r in r_t2i if r <= k) / n_txt
        out[f"t2i_NDCG@{k}"] = 100 * sum(1 / math.log2(r + 1) for r in r_t2i if r <= k) / n_txt
    out["i2t_mAP"] = 100 * sum(ap_full) / n_img
    out["i2t_NDCG"] = 100 * sum(ndcg_full) / n_img
    out["t2i_mAP"] = 100 * sum(1 / r for r in r_t2i) / n_txt
    out["t2i_NDCG"] = 100 * sum(1 / math.log2(r + 1) for r in r_t2i) / n_txt
    out["n_images"], out["n_texts"] = n_img, n_txt
    return out, torch.tensor(r_i2t), torch.tensor(r_t2i), sims


# ---------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "quantised", "duplicated", "tied"])
def test_matches_brute_force(kind):
    img, txt, tii = make_data(kind)
    ks = (*KS, txt.shape[0] + 3)  # a cut-off beyond the list length too
    ref, ref_i2t, ref_t2i, _ = brute_force(img, txt, tii, ks)
    if kind != "continuous":
        assert ref["i2t_R@1"] < 100 and ref["t2i_R@1"] < 100  # ties really bite
    for score_memory in (1, 2_300, 5_000, 2**30):  # 1 to all rows per block
        assert torch.equal(i2t_ranks(img, txt, tii, score_memory=score_memory), ref_i2t)
        assert torch.equal(t2i_ranks(img, txt, tii, score_memory=score_memory), ref_t2i)
        got = retrieval_metrics(img, txt, tii, ks=ks, score_memory=score_memory)
        assert got.keys() == ref.keys()
        for key, val in ref.items():
            assert got[key] == pytest.approx(val, rel=1e-12, abs=1e-12), (key, score_memory)
    got2, r_i2t, r_t2i = retrieval_metrics_and_ranks(img, txt, tii, ks=ks, score_memory=4_000)
    assert got2 == got and torch.equal(r_i2t, ref_i2t) and torch.equal(r_t2i, ref_t2i)


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("n_img", "dim"), [(50, 64), (10, 512)])
def test_duplicated_continuous_embeddings_do_not_depend_on_the_block_shape(n_img, dim, device):
    """Identical caption/image vectors tie exactly for every block shape, although float32
    matmul rounds identical columns differently when they fall in a tail tile."""
    img, txt, tii = make_data("duplicated_continuous", n_img=n_img, dim=dim)
    ks = (*KS, 50)
    ref, ref_i2t, ref_t2i, _ = brute_force(img, txt, tii, ks)
    # The data are tie-sensitive: reversing the candidate order changes the metrics.
    rev = brute_force(img.flip(0), txt.flip(0), (img.shape[0] - 1 - tii).flip(0), ks)[0]
    assert rev != ref
    sims = exact_scores(img, txt)
    top_txt = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    top_img = np.argsort(-sims.T, axis=1, kind="stable")[:, :10]
    for score_memory in (1, 1_000, 2_000, 3_000, 5_000, 12_000, 2**30):
        got, r_i2t, r_t2i = retrieval_metrics_and_ranks(img, txt, tii, ks=ks,
                                                        score_memory=score_memory, device=device)
        assert torch.equal(r_i2t, ref_i2t) and torch.equal(r_t2i, ref_t2i), score_memory
        for key, val in ref.items():
            assert got[key] == pytest.approx(val, rel=1e-12, abs=1e-12), (key, score_memory)
        top = topk_texts(img, txt, 10, score_memory=score_memory, device=device)[1]
        assert np.array_equal(top.numpy(), top_txt)
        top = topk_images(txt, img, 10, score_memory=score_memory, device=device)[1]
        assert np.array_equal(top.numpy(), top_img)


def test_block_rows_fit_the_score_budget():
    """The largest block whose two live float32 score blocks fit the budget, at least one
    row: the rows shrink as the candidates grow, the bytes stay put."""
    from cliptune.retrieval import block_rows

    for budget in (1, 799, 800, 10_000, 2**28):
        for n_cand in (1, 7, 100, 202_654):
            rows = block_rows(budget, n_cand)
            assert rows >= 1
            assert rows == 1 or 2 * 4 * rows * n_cand <= budget, (budget, n_cand)
            assert 2 * 4 * (rows + 1) * n_cand > budget, (budget, n_cand)


def test_distinct_rows_group_equal_values_and_survive_hash_collisions(monkeypatch):
    """Candidates are grouped by row hash, checked exactly: -0.0 and 0.0 are one value,
    and a hash shared by different rows (forced here) still yields exact groups and the
    same ranks."""
    import cliptune.retrieval as kernels

    x = torch.randn(3000, 16)
    x[10] = x[3]
    x[2999] = x[3]
    x[100, 0] = -0.0
    x[101] = x[100]
    x[101, 0] = 0.0
    for _ in range(2):
        distinct, inverse = kernels._distinct_rows(x)
        assert distinct.shape[0] == 2997 and torch.equal(distinct[inverse], x)
        assert inverse[3] == inverse[10] == inverse[2999] and inverse[100] == inverse[101]
        monkeypatch.setattr(kernels, "_row_hashes",
                            lambda emb: torch.zeros(emb.shape[0], dtype=torch.long))
    assert kernels._distinct_rows(torch.randn(50, 4))[0].shape[0] == 50
    img, txt, tii = make_data("duplicated")
    ref, ref_i2t, ref_t2i, _ = brute_force(img, txt, tii, KS)
    got, r_i2t, r_t2i = retrieval_metrics_and_ranks(img, txt, tii, ks=KS, score_memory=2_300)
    assert torch.equal(r_i2t, ref_i2t) and torch.equal(r_t2i, ref_t2i)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, rel=1e-12, abs=1e-12), key


def test_all_tied_follows_index_order():
    img, txt, tii = make_data("tied")
    first_caption = [int((tii == i).nonzero()[0]) for i in range(img.shape[0])]
    assert i2t_ranks(img, txt, tii, score_memory=4_000).tolist() == [c + 1 for c in first_caption]
    assert t2i_ranks(img, txt, tii, score_memory=4_000).tolist() == (tii + 1).tolist()


@pytest.mark.parametrize("kind", ["continuous", "duplicated", "tied"])
def test_topk_matches_stable_argsort(kind):
    img, txt, tii = make_data(kind)
    sims = (img.double() @ txt.double().T).numpy()
    for score_memory in (1, 3_000, 2**30):
        for k in (1, 7, 10_000):
            s, i = topk_texts(img, txt, k, score_memory=score_memory)
            ref = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            assert i.shape == ref.shape and np.array_equal(i.numpy(), ref)
            ref_s = np.take_along_axis(sims, ref, 1)
            if kind == "continuous":  # float32 vs float64 dot products
                np.testing.assert_allclose(s.numpy(), ref_s, rtol=0, atol=1e-6)
            else:  # small-integer embeddings: every dot product is exact
                assert np.array_equal(s.numpy(), ref_s.astype(np.float32))
            s, i = topk_images(txt, img, k, score_memory=score_memory)
            ref = np.argsort(-sims.T, axis=1, kind="stable")[:, :k]
            assert i.shape == ref.shape and np.array_equal(i.numpy(), ref)


def test_low_precision_inputs_are_upcast():
    img, txt, tii = make_data("quantised")
    ref = retrieval_metrics(img, txt, tii)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert retrieval_metrics(img.to(dtype), txt.to(dtype), tii.int(), device="cpu") == ref


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    img, txt, tii = make_data("duplicated", n_img=200)
    cpu = retrieval_metrics(img, txt, tii, score_memory=64 * 8 * 1000)
    assert retrieval_metrics(img.cuda(), txt.cuda(), tii.cuda(), score_memory=64 * 8 * 1000) == cpu
    assert torch.equal(topk_texts(img, txt, 10, device="cuda")[1], topk_texts(img, txt, 10)[1])


# ---------------------------------------------------------------------------------------
# agreement with torchmetrics (tie-free data: torchmetrics leaves tie order unspecified)
# ---------------------------------------------------------------------------------------


def test_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.retrieval")
    img, txt, tii = make_data("continuous", n_img=30, seed=1)
    n_img, n_txt = img.shape[0], txt.shape[0]
    ks = (*KS, n_txt)
    got = retrieval_metrics(img, txt, tii, ks=ks, score_memory=7 * 8 * 120)
    sims = img.double() @ txt.double().T
    # torchmetrics' AP zeroes targets whose pred <= 0; a shift keeps the order.
    preds_i2t = (sims + 10).flatten()
    target_i2t = (tii[None, :] == torch.arange(n_img)[:, None]).flatten()
    q_i2t = torch.arange(n_img).repeat_interleave(n_txt)
    preds_t2i = (sims.T + 10).flatten()
    target_t2i = (torch.arange(n_img)[None, :] == tii[:, None]).flatten()
    q_t2i = torch.arange(n_txt).repeat_interleave(n_img)

    def tm_value(metric, preds, target, queries):
        return 100 * float(metric(preds, target, indexes=queries))

    for k in KS:
        # hit rate == R@K for i2t (torchmetrics' "recall" would divide by #captions)
        assert got[f"i2t_R@{k}"] == pytest.approx(
            tm_value(tm.RetrievalHitRate(top_k=k), preds_i2t, target_i2t, q_i2t), abs=1e-4
        )
        assert got[f"t2i_R@{k}"] == pytest.approx(
            tm_value(tm.RetrievalRecall(top_k=k), preds_t2i, target_t2i, q_t2i), abs=1e-4
        )
        assert got[f"i2t_NDCG@{k}"] == pytest.approx(
            tm_value(tm.RetrievalNormalizedDCG(top_k=k), preds_i2t, target_i2t, q_i2t),
            abs=1e-4,
        )
        assert got[f"t2i_NDCG@{k}"] == pytest.approx(
            tm_value(tm.RetrievalNormalizedDCG(top_k=k), preds_t2i, target_t2i, q_t2i),
            abs=1e-4,
        )
    assert 100 * got["i2t_mrr"] == pytest.approx(
        tm_value(tm.RetrievalMRR(), preds_i2t, target_i2t, q_i2t), abs=1e-4
    )
    assert 100 * got["t2i_mrr"] == pytest.approx(
        tm_value(tm.RetrievalMRR(), preds_t2i, target_t2i, q_t2i), abs=1e-4
    )
    # mAP@K is torchmetrics' (AP@K over the hits in the top K) in both directions, and
    # mAP / NDCG without a cut-off are theirs over the full ranking.
    for k in KS:
        assert got[f"i2t_mAP@{k}"] == pytest.approx(
            tm_value(tm.RetrievalMAP(top_k=k), preds_i2t, target_i2t, q_i2t), abs=1e-4
        )
        assert got[f"t2i_mAP@{k}"] == pytest.approx(
            tm_value(tm.RetrievalMAP(top_k=k), preds_t2i, target_t2i, q_t2i), abs=1e-4
        )
    for d, preds, target, queries in (("i2t", preds_i2t, target_i2t, q_i2t),
                                      ("t2i", preds_t2i, target_t2i, q_t2i)):
        assert got[f"{d}_mAP"] == pytest.approx(
            tm_value(tm.RetrievalMAP(), preds, target, queries), abs=1e-4)
        assert got[f"{d}_NDCG"] == pytest.approx(
            tm_value(tm.RetrievalNormalizedDCG(), preds, target, queries), abs=1e-4)
    # The min(K, R) normalisation differs from it where an image has hits but misses
    # some of its captions in the top K (only a perfect top K scores 100).
    assert got["i2t_mAP_minKR@5"] < got["i2t_mAP@5"]
    assert 0 < got["i2t_R@1"] < 100 and 0 < got["t2i_R@1"] < 100  # not a degenerate case


# ---------------------------------------------------------------------------------------
# hand-computed and boundary cases
# ---------------------------------------------------------------------------------------


def test_hand_computed_two_images_four_captions():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # captions 0,1 describe image 0; 2,3 image 1. Captions 1 and 2 lean to the other image.
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    tii = torch.tensor([0, 0, 1, 1])
    # image 0 ranks captions 0(1.0) 2(.8) 1(.6) 3(0): relevant at 1 and 3.
    # caption 1 scores image 0 at .6 and image 1 at .8: its image is 2nd; likewise caption 2.
    got = retrieval_metrics(img, txt, tii, ks=(1, 2, 5, 10), score_memory=1)
    assert i2t_ranks(img, txt, tii).tolist() == [1, 1]
    assert t2i_ranks(img, txt, tii).tolist() == [1, 2, 2, 1]
    assert got["i2t_R@1"] == 100 and got["t2i_R@1"] == 50 and got["t2i_R@5"] == 100
    assert got["rsum"] == 550
    assert got["t2i_medr"] == 1.5 and got["t2i_meanr"] == 1.5 and got["t2i_mrr"] == 0.75
    assert got["i2t_mAP@1"] == 100
    # image 1 ranks captions 3(1.0) 1(.8) 2(.6) 0(0): relevant at 1 and 3 as well.
    assert got["i2t_mAP@5"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert got["i2t_mAP_minKR@5"] == got["i2t_mAP@5"]
    # In the top 2 each image has one hit of its two captions: AP@2 = 1 over the hits
    # found, 1/2 over min(K, R).
    assert got["i2t_mAP@2"] == 100 and got["i2t_mAP_minKR@2"] == 50
    assert got["i2t_mAP"] == got["i2t_mAP@5"]  # every caption lies within the top 5
    assert got["i2t_NDCG@5"] == pytest.approx(100 * 1.5 / (1 + 1 / math.log2(3)))
    # text->image ranks 1, 2, 2, 1: AP 1, 1/2, 1/2, 1; NDCG 1, 1/log2(3), 1/log2(3), 1
    assert got["t2i_mAP@1"] == 50 and got["t2i_mAP@5"] == 75
    assert got["t2i_NDCG@5"] == pytest.approx(100 * (2 + 2 / math.log2(3)) / 4)
    assert (got["n_images"], got["n_texts"]) == (2, 4)


def test_identical_images_tie_to_lower_index():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    tii = torch.tensor([1, 0, 1])
    assert t2i_ranks(img, txt, tii).tolist() == [2, 1, 2]
    # image 1: captions 0 and 1 tie at 1.0; caption 0 (its own) wins by index.
    assert i2t_ranks(img, txt, tii).tolist() == [2, 1]


def test_perfect_embeddings_score_100():
    n_img = 16
    img = torch.eye(n_img, 32)
    tii = torch.arange(n_img).repeat_interleave(torch.arange(n_img) % 7 + 1)
    got = retrieval_metrics(img, img[tii], tii, score_memory=5 * 8 * 64)
    for key, val in got.items():
        if "R@" in key or "mAP" in key or "NDCG" in key:
            assert val == 100, key
    assert got["rsum"] == 600
    assert got["i2t_medr"] == got["t2i_medr"] == got["i2t_mrr"] == got["t2i_mrr"] == 1


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

IMG = torch.randn(3, 4)
TXT = torch.randn(5, 4)
TII = torch.tensor([0, 1, 2, 2, 0])


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((IMG.numpy(), TXT, TII), {}, "image_emb must be a torch.Tensor"),
        ((IMG[0], TXT, TII), {}, "image_emb must be 2-D"),
        ((IMG, TXT.long(), TII), {}, "text_emb must be a floating-point"),
        ((IMG, TXT[:, :3], TII), {}, "embedding dims differ"),
        ((IMG[:0], TXT, TII), {}, "non-empty"),
        ((IMG.clone().fill_(math.nan), TXT, TII), {}, "non-finite"),
        ((IMG, TXT.clone().fill_(math.inf), TII), {}, "non-finite"),
        ((IMG, TXT, TII.float()), {}, "integer"),
        ((IMG, TXT, TII.bool()), {}, "integer"),
        ((IMG, TXT, TII[:4]), {}, r"shape \[5\]"),
        ((IMG, TXT, TII.tolist()), {}, "must be a torch.Tensor"),
        ((IMG, TXT, torch.tensor([0, 1, 2, 3, 0])), {}, r"in \[0, 3\)"),
        ((IMG, TXT, torch.tensor([0, 1, -1, 2, 0])), {}, r"in \[0, 3\)"),
        ((IMG, TXT, torch.tensor([0, 0, 0, 0, 0])), {}, "2 of 3 images have no caption"),
        ((IMG, TXT, TII), {"score_memory": 0}, "score_memory"),
        ((IMG, TXT, TII), {"ks": ()}, "ks"),
        ((IMG, TXT, TII), {"ks": (1, 0)}, "ks"),
    ],
)
def test_invalid_inputs_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(*args, **kwargs)


def test_invalid_topk_and_rank_inputs_raise():
    with pytest.raises(ValueError, match="k must be"):
        topk_texts(IMG, TXT, 0)
    with pytest.raises(ValueError, match="embedding dims differ"):
        topk_images(TXT, IMG[:, :2], 3)
    with pytest.raises(ValueError, match="no caption"):
        i2t_ranks(IMG, TXT, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="score_memory"):
        t2i_ranks(IMG, TXT, TII, score_memory=2.5)


@pytest.mark.parametrize("kind", ["continuous", "quantised", "tied"])
def test_training_mean_r1_equals_the_metrics_on_paired_rows(kind):
    """Training's validation recall (cliptune.retrieval.mean_r1) is the metrics' R@1 for
    one caption per image, ties included, and the argmax definition it replaced."""
    from cliptune.retrieval import mean_r1

    img, txt, _ = make_data(kind, n_img=30)
    txt = txt[:30]  # row i of each side is a pair
    own = torch.arange(30)
    m = retrieval_metrics(img, txt, own, ks=(1,))
    got = mean_r1(img, txt, score_memory=7 * 8 * 30)
    assert got == pytest.approx((m["i2t_R@1"] + m["t2i_R@1"]) / 2)
    argmax = ((img @ txt.T).argmax(1) == own).sum() + ((txt @ img.T).argmax(1) == own).sum()
    assert got == pytest.approx(100.0 * int(argmax) / 60)
