"""Exact, memory-bounded bidirectional image-text retrieval metrics.

Definitions follow CLIP_benchmark / LAVIS:

* **image->text (i2t)**: every image ranks all M captions. Its *rank* is the 1-based
  position of its first relevant caption (any caption of that image). ``i2t_R@K`` is the
  percentage of images with rank <= K (hit rate; an image with 5 captions counts once).
* **text->image (t2i)**: every caption ranks all N images; its rank is the position of its
  own image. ``t2i_R@K`` is the percentage of captions with rank <= K.
* ``*_medr`` is the median rank (the mean of the two middle ranks for an even count, as
  ``numpy.median``; the VSE++ code reports ``floor`` of that), ``*_meanr`` the mean rank,
  ``*_mrr`` the mean reciprocal rank.
* ``rsum`` is the retrieval literature's: R@1 + R@5 + R@10 of image->text plus the same
  of text->image, in percent (max 600), whatever other cut-offs ``eval.ks`` adds. The
  ablation table, the bootstrap intervals and the summary use this one definition.
* Because an image has several relevant captions, i2t also reports, with binary relevance
  ``rel_i`` at position i and R = number of captions of the image:

  - ``i2t_mAP@K``: AP@K = sum_{i<=K} P@i * rel_i / (number of hits in the top K), 0 for
    an image without a hit in its top K: the usual definition (torchmetrics'
    ``RetrievalMAP(top_k=K)``, tests/test_retrieval_metrics.py). A ranking that places one
    of five captions first and the rest below K scores 100.
  - ``i2t_mAP_minKR@K``: the same sum divided by min(K, R), the best attainable number of
    hits (Kaggle's ``apk``), so missing relevant captions lower it and only a perfect
    top K scores 100.
  - ``i2t_mAP``: average precision over the full ranking (every caption of the image
    counted, divided by R), averaged over images: seed 003's mAP.
  - ``i2t_NDCG@K``: DCG@K = sum_{i<=K} rel_i / log2(i + 1), divided by the IDCG of an ideal
    ranking, i.e. min(K, R) hits at positions 1..min(K, R) (torchmetrics'
    ``RetrievalNormalizedDCG(top_k=K)``); ``i2t_NDCG`` the same over the full ranking.

  All are averaged over images and reported in percent like the recalls.
* ``t2i_mAP@K`` / ``t2i_NDCG@K`` / ``t2i_mAP`` / ``t2i_NDCG``: the same definitions for
  text->image, where each caption has exactly one relevant image (R = 1): AP@K = 1/rank
  and NDCG@K = 1/log2(rank + 1) when rank <= K, else 0 (both AP@K definitions agree);
  over the full ranking ``t2i_mAP`` = 100 x ``t2i_mrr``. Averaged over captions.

**Ties** are resolved exactly and deterministically: candidates are ordered by descending
score, equal scores by ascending candidate index (the order of a stable argsort of
``-score``). The rank of a positive is 1 + the number of candidates ahead of it in that order.
Without such a rule, quantised or duplicated embeddings (identical captions occur in COCO)
would make the metrics depend on the sorting kernel. The rule also needs identical vectors
to get bit-identical scores, which a float32 matmul does not promise (tail tiles use other
kernels, and which columns land there depends on the block's shape). So every distinct
candidate vector is scored once and its score copied to its duplicates: ties between
duplicated captions or images, and hence every metric, are the same for any block shape.

**Memory**: the N x M similarity matrix is never materialised. Queries are processed in
blocks of rows sized to a byte budget, ``score_memory`` (``eval.score_memory_mb``): as
many rows as let two float32 blocks of scores (rows x candidates: the block and its
working copy) fit, at least one (cliptune.retrieval.block_rows). A block is reduced to
ranks by *counting* the candidates ahead of the positive (an in-place
sign(score - positive) pass, no sort) and to the exact top-K by a ``topk`` whose tie
choices are repaired with the rule above. Peak extra memory is the budget (up to twice it
on rows with exact ties, which need masks for the tie-break) plus O(N + M) for the ranks
and the top-K relevance, independent of N x M. Inputs in other dtypes are upcast to
float32; on CUDA everything runs on the device and only ranks come back to the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from cliptune.config.load import DEFAULTS
from cliptune.retrieval import DEFAULT_SCORE_MEMORY, blocked_topk, i2t_pass, t2i_pass

__all__ = [
    "DEFAULT_KS",
    "RSUM_KS",
    "rsum",
    "retrieval_metrics_and_ranks",
    "summarize",
    "topk_images",
    "topk_texts",
]

DEFAULT_KS = tuple(DEFAULTS["eval"]["ks"])  # the schema's eval.ks default
# The literature's "rsum": R@1/5/10 in both directions. A fixed convention (the ablation
# table's columns, the published anchors), not a setting; eval.ks may add cut-offs.
RSUM_KS = (1, 5, 10)


def rsum(r_i2t, r_t2i) -> float:
    """R@1 + R@5 + R@10 of both directions (percent) from the per-query ranks."""
    return sum(100.0 * float(np.mean(np.asarray(r) <= k))
               for r in (r_i2t, r_t2i) for k in RSUM_KS)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def _check_embeddings(name: str, emb) -> None:
    if not isinstance(emb, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(emb).__name__}")
    if emb.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {tuple(emb.shape)}")
    if not emb.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {emb.dtype}")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(emb.shape)}")
    if not bool(torch.isfinite(emb).all()):
        n_bad = int((~torch.isfinite(emb)).any(dim=1).sum())
        raise ValueError(f"{name} contains non-finite values (NaN/inf) in {n_bad} rows")


def _check_pair(queries: torch.Tensor, candidates: torch.Tensor, qname: str, cname: str) -> None:
    _check_embeddings(qname, queries)
    _check_embeddings(cname, candidates)
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"embedding dims differ: {qname} has {queries.shape[1]}, "
            f"{cname} has {candidates.shape[1]}"
        )


def _check_index(text_image_index, n_images: int, n_texts: int) -> torch.Tensor:
    """Validate the caption -> image map and return it as int64 on the CPU."""
    if not isinstance(text_image_index, torch.Tensor):
        raise ValueError(
            f"text_image_index must be a torch.Tensor, got {type(text_image_index).__name__}"
        )
    if (
        text_image_index.dtype == torch.bool
        or text_image_index.is_floating_point()
        or (text_image_index.is_complex())
    ):
        raise ValueError(
            f"text_image_index must be an integer (long) tensor, got dtype {text_image_index.dtype}"
        )
    if text_image_index.ndim != 1 or text_image_index.shape[0] != n_texts:
        raise ValueError(
            f"text_image_index must have shape [{n_texts}] (one entry per text_emb row), "
            f"got {tuple(text_image_index.shape)}"
        )
    idx = text_image_index.detach().to("cpu", torch.int64)
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n_images:
        raise ValueError(
            f"text_image_index values must lie in [0, {n_images}) (rows of image_emb), "
            f"got range [{lo}, {hi}]"
        )
    counts = torch.bincount(idx, minlength=n_images)
    missing = (counts == 0).nonzero().flatten()
    if missing.numel():
        raise ValueError(
            f"{missing.numel()} of {n_images} images have no caption in text_image_index "
            f"(e.g. image rows {missing[:5].tolist()}); every image needs at least one"
        )
    return idx


def _is_pos_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1


def _check_pos_int(name: str, v) -> int:
    if not _is_pos_int(v):
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _check_score_memory(score_memory) -> int:
    return _check_pos_int("score_memory", score_memory)


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must contain at least one cut-off")
    if not all(_is_pos_int(k) for k in ks):
        raise ValueError(f"ks must be positive ints, got {ks!r}")
    return tuple(sorted({int(k) for k in ks}))


def _prepare(emb: torch.Tensor, device: torch.device) -> torch.Tensor:
    # float32 matmul for every input precision: bf16/fp16 sims would create spurious ties.
    return emb.detach().to(device=device, dtype=torch.float32)


def _resolve_device(device, default: torch.Tensor) -> torch.device:
    return torch.device(device) if device is not None else default.device


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


def _topk(queries: torch.Tensor, candidates: torch.Tensor, k: int, score_memory: int, device,
          names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair(queries, candidates, *names)
    k = _check_pos_int("k", k)
    score_memory = _check_score_memory(score_memory)
    dev = _resolve_device(device, queries)
    return blocked_topk(_prepare(queries, dev), _prepare(candidates, dev), k, score_memory)


def topk_texts(image_emb: torch.Tensor, text_emb: torch.Tensor, k: int,
               score_memory: int = DEFAULT_SCORE_MEMORY,
               device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k captions per image, blockwise, same tie rule as the metrics.

    Returns (scores float32 [N, k'], indices long [N, k']) on the CPU, best first, with
    k' = min(k, M).
    """
    return _topk(image_emb, text_emb, k, score_memory, device, ("image_emb", "text_emb"))


def topk_images(text_emb: torch.Tensor, image_emb: torch.Tensor, k: int,
                score_memory: int = DEFAULT_SCORE_MEMORY,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k images per caption, blockwise, same tie rule as the metrics.

    Returns (scores float32 [M, k'], indices long [M, k']) on the CPU, best first, with
    k' = min(k, N).
    """
    return _topk(text_emb, image_emb, k, score_memory, device, ("text_emb", "image_emb"))


def _rank_summary(prefix: str, ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    r = ranks.numpy().astype(np.float64)
    out = {f"{prefix}_R@{k}": 100.0 * float(np.mean(r <= k)) for k in ks}
    out[f"{prefix}_medr"] = float(np.median(r))
    out[f"{prefix}_meanr"] = float(np.mean(r))
    out[f"{prefix}_mrr"] = float(np.mean(1.0 / r))
    return out


def _map_ndcg(rel: torch.Tensor, n_rel: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """i2t mAP@K (hits in the top K), mAP_minKR@K and NDCG@K (percent) from top-list
    relevance [N, kk] and relevant counts [N]."""
    relf = rel.to(torch.float64)
    kk = relf.shape[1]
    pos = torch.arange(1, kk + 1, dtype=torch.float64)
    prec_sum = (relf.cumsum(dim=1) / pos * relf).cumsum(dim=1)  # sum_{i<=K} P@i rel_i
    hits = relf.cumsum(dim=1)
    disc = 1.0 / torch.log2(pos + 1.0)
    ideal = disc.cumsum(dim=0)  # IDCG for 1..kk ideal hits
    out: dict[str, float] = {}
    for k in ks:
        kc = min(k, kk)  # the list cannot be longer than M
        n_best = torch.clamp(n_rel, max=k)  # min(K, R) <= kc since R <= M
        found = hits[:, kc - 1]
        ap = torch.where(found > 0, prec_sum[:, kc - 1] / found.clamp(min=1), 0.0)
        dcg = (relf[:, :kc] * disc[:kc]).sum(dim=1)
        out[f"i2t_mAP@{k}"] = 100.0 * float(ap.mean())
        out[f"i2t_mAP_minKR@{k}"] = 100.0 * float((prec_sum[:, kc - 1] / n_best).mean())
        out[f"i2t_NDCG@{k}"] = 100.0 * float((dcg / ideal[n_best - 1]).mean())
    return out


def _full_ranking_i2t(pos_ranks: torch.Tensor, idx: torch.Tensor,
                      n_images: int) -> dict[str, float]:
    """i2t mAP and NDCG (percent) over the full ranking, from every caption's rank in its
    own image's ranking [M] and the caption -> image map [M]."""
    # Captions by (image, rank): the j-th relevant caption of an image (1-based j) found
    # at rank r contributes precision j / r.
    order = torch.argsort(idx * (int(pos_ranks.max()) + 1) + pos_ranks)
    img, r = idx[order], pos_ranks[order].to(torch.float64)
    counts = torch.bincount(img, minlength=n_images)
    starts = torch.cumsum(counts, 0) - counts
    j = (torch.arange(img.numel()) - starts[img] + 1).to(torch.float64)
    ap = torch.zeros(n_images, dtype=torch.float64).index_add_(0, img, j / r) / counts
    dcg = torch.zeros(n_images, dtype=torch.float64).index_add_(
        0, img, 1.0 / torch.log2(r + 1.0))
    ideal = (1.0 / torch.log2(torch.arange(2, int(counts.max()) + 2, dtype=torch.float64))
             ).cumsum(0)
    return {"i2t_mAP": 100.0 * float(ap.mean()),
            "i2t_NDCG": 100.0 * float((dcg / ideal[counts - 1]).mean())}


def _single_relevant_map_ndcg(prefix: str, ranks: torch.Tensor,
                              ks: tuple[int, ...]) -> dict[str, float]:
    """mAP@K and NDCG@K (percent) when every query has one relevant item at ``ranks``,
    and both over the full ranking."""
    r = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = (r <= k).to(torch.float64)
        out[f"{prefix}_mAP@{k}"] = 100.0 * float((hit / r).mean())
        out[f"{prefix}_NDCG@{k}"] = 100.0 * float((hit / torch.log2(r + 1.0)).mean())
    out[f"{prefix}_mAP"] = 100.0 * float((1.0 / r).mean())
    out[f"{prefix}_NDCG"] = 100.0 * float((1.0 / torch.log2(r + 1.0)).mean())
    return out


def retrieval_metrics_and_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: torch.Tensor,
    ks=DEFAULT_KS,
    score_memory: int = DEFAULT_SCORE_MEMORY,
    device=None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Bidirectional retrieval metrics (see the module docstring for definitions) and the
    per-query ranks they were computed from: ``(metrics, i2t ranks LongTensor [N] (the
    1-based rank of each image's first relevant caption), t2i ranks LongTensor [M] (of
    each caption's own image))``, all on the CPU.

    Args:
        image_emb: [N, D] image embeddings, L2-normalised (scores are plain dot products,
            computed in float32 whatever the input dtype).
        text_emb: [M, D] caption embeddings, L2-normalised.
        text_image_index: [M] integer; row of ``image_emb`` that caption m describes.
            Every image needs at least one caption.
        ks: cut-offs K for R@K, mAP@K and NDCG@K. mAP/NDCG keep N x min(max(ks), M)
            booleans, so very large K costs memory.
        score_memory: bytes of float32 scores held at once (``eval.score_memory_mb``);
            queries are scored in blocks of as many rows as fit it (at least one), so
            peak extra memory is about this budget plus O(N + M), whatever N x M.
        device: where to compute (default: ``image_emb.device``).

    Returns keys ``i2t_R@K``, ``t2i_R@K``, ``rsum`` (R@1/5/10 both ways),
    ``{i2t,t2i}_{medr,meanr,mrr}``, ``{i2t,t2i}_mAP@K``, ``i2t_mAP_minKR@K``,
    ``{i2t,t2i}_NDCG@K``, the full-ranking ``{i2t,t2i}_mAP`` and ``{i2t,t2i}_NDCG``
    (recalls, mAP and NDCG in percent; mrr in [0, 1]), ``n_images``, ``n_texts``.

    Raises:
        ValueError: on malformed shapes/dtypes, non-finite embeddings, out-of-range
            ``text_image_index``, images without captions, or bad ``ks``/``score_memory``.
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    idx = _check_index(text_image_index, n_img, n_txt)
    ks = _check_ks(ks)
    score_memory = _check_score_memory(score_memory)
    dev = _resolve_device(device, image_emb)
    img, txt = _prepare(image_emb, dev), _prepare(text_emb, dev)

    r_i2t, rel, pos_ranks = i2t_pass(img, txt, idx, score_memory, kmax=max(ks),
                                     all_ranks=True)
    r_t2i = t2i_pass(img, txt, idx, score_memory)
    return summarize(r_i2t, r_t2i, rel, pos_ranks, idx, ks), r_i2t, r_t2i


def summarize(
    r_i2t: torch.Tensor,
    r_t2i: torch.Tensor,
    i2t_rel: torch.Tensor,
    caption_ranks: torch.Tensor,
    text_image_index: torch.Tensor,
    ks=DEFAULT_KS,
) -> dict[str, float]:
    """Metrics dict from ranks [N] / [M], top-list relevance [N, >= min(max(ks), M)],
    every caption's rank in its own image's ranking [M] and the caption -> image map [M].
    Exposed so a reference implementation (benchmark) can share the bookkeeping and
    differ only in how it ranks."""
    ks = _check_ks(ks)
    n_img = int(r_i2t.numel())
    out = _rank_summary("i2t", r_i2t, ks)
    out.update(_rank_summary("t2i", r_t2i, ks))
    out["rsum"] = rsum(r_i2t.numpy(), r_t2i.numpy())
    out.update(_map_ndcg(i2t_rel, torch.bincount(text_image_index, minlength=n_img), ks))
    out.update(_full_ranking_i2t(caption_ranks, text_image_index, n_img))
    out.update(_single_relevant_map_ndcg("t2i", r_t2i, ks))
    out["n_images"] = n_img
    out["n_texts"] = int(r_t2i.numel())
    return out
