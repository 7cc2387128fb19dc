"""Exact, memory-bounded bidirectional image-text retrieval metrics.

Definitions follow CLIP_benchmark / LAVIS:

* **image->text (i2t)**: every image ranks all M captions. Its *rank* is the 1-based
  position of its first relevant caption (any caption of that image). ``i2t_R@K`` is the
  percentage of images with rank <= K (hit rate; an image with 5 captions counts once).
* **text->image (t2i)**: every caption ranks all N images; its rank is the position of its
  own image. ``t2i_R@K`` is the percentage of captions with rank <= K.
* ``*_medr`` is the median rank (the mean of the two middle ranks for an even count, as
  ``numpy.median``; the VSE++ code reports ``floor`` of that), ``*_meanr`` the mean rank,
  ``*_mrr`` the mean reciprocal rank. ``rsum`` is the sum of all ``R@K`` reported, in percent.
* Because an image has several relevant captions, i2t also reports, with binary relevance
  ``rel_i`` at position i and R = number of captions of the image:

  - ``i2t_mAP@K``: AP@K = sum_{i<=K} P@i * rel_i / min(K, R), i.e. normalised by the best
    attainable number of hits, so a perfect ranking scores 1 (in percent: 100).
  - ``i2t_NDCG@K``: DCG@K = sum_{i<=K} rel_i / log2(i + 1), divided by the IDCG of an ideal
    ranking, i.e. min(K, R) hits at positions 1..min(K, R).

  Both are averaged over images and reported in percent like the recalls.
* text->image has exactly one relevant image per caption, so with its rank r the same
  definitions reduce to ``t2i_mAP@K`` = 1/r and ``t2i_NDCG@K`` = 1/log2(r + 1) when
  r <= K, else 0 (averaged over captions, in percent).

**Ties** are resolved exactly and deterministically: candidates are ordered by descending
score, equal scores by ascending candidate index (the order of a stable argsort of
``-score``). The rank of a positive is 1 + the number of candidates ahead of it in that order.
Without such a rule, quantised or duplicated embeddings (identical captions occur in COCO)
would make the metrics depend on the sorting kernel. The rule also needs identical vectors
to get bit-identical scores, which a float32 matmul does not promise (tail tiles use other
kernels, and which columns land there depends on the block's shape). So every distinct
candidate vector is scored once and its score copied to its duplicates: ties between
duplicated captions or images, and hence every metric, are the same for any ``block_size``.

**Memory**: the N x M similarity matrix is never materialised. Queries are processed in
blocks of ``block_size`` rows; a block's float32 similarities (block x candidates) are
reduced to ranks by *counting* the candidates ahead of the positive (an in-place
sign(score - positive) pass, no sort) and to the exact top-K by a ``topk`` whose tie
choices are repaired with the rule above. Peak extra memory is about one block,
``block_size * max(N, M) * 4`` bytes (twice that when candidates are duplicated, two to
three times for rows where exact ties straddle the K-th place), independent of N x M. Inputs in other dtypes are upcast to
float32; on CUDA everything runs on the device and only ranks come back to the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from cliptune.config import DEFAULTS
from cliptune.runtime import progress

__all__ = [
    "DEFAULT_KS",
    "RSUM_KS",
    "i2t_ranks",
    "retrieval_metrics",
    "retrieval_metrics_and_ranks",
    "summarize",
    "t2i_ranks",
    "topk_images",
    "topk_texts",
]

DEFAULT_KS = tuple(DEFAULTS["eval"]["ks"])  # the schema's eval.ks default
# The literature's "rsum": R@1/5/10 in both directions. A fixed convention (the ablation
# table's columns, the published anchors), not a setting; eval.ks may add cut-offs.
RSUM_KS = (1, 5, 10)


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


def _check_block_size(block_size) -> int:
    return _check_pos_int("block_size", block_size)


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
# blocked kernels
# ---------------------------------------------------------------------------------------


def _distinct_rows(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(distinct rows, inverse)`` with ``emb == distinct[inverse]``; inverse is None
    when every row is distinct (no copy, no gather)."""
    uniq, inverse = torch.unique(emb, dim=0, return_inverse=True)
    if uniq.shape[0] == emb.shape[0]:
        return emb, None
    return uniq, inverse


class _Scorer:
    """Scores query blocks against all candidates so that identical candidate vectors get
    bit-identical scores whatever the block shape: each distinct vector is one matmul
    column, and its score is copied to its duplicates (exact by construction)."""

    def __init__(self, candidates: torch.Tensor):
        distinct, self.inverse = _distinct_rows(candidates)
        self.cand_t = distinct.T

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        sims = queries @ self.cand_t
        if self.inverse is None:
            return sims
        return sims.index_select(1, self.inverse)


# Below this magnitude a positive's score could differ from a competitor by a subnormal
# amount, which flush-to-zero arithmetic would turn into a false tie; such rows are counted
# with plain comparisons instead of the subtraction trick.
_TINY = 2.0**-100


def _count_ahead_(
    sims: torch.Tensor, pos_score: torch.Tensor, pos_index: torch.Tensor
) -> torch.Tensor:
    """Per row: number of candidates ahead of candidate ``pos_index`` (score ``pos_score``)
    under the order (score desc, index asc). Counting, not sorting: O(M) per row.

    Overwrites ``sims`` (trailing underscore): with s = sign(sims - pos) in place,
    sum(s) = #greater - #less and sum(|s|) = #greater + #less, so one scratch-free pass
    yields both the count ahead and the number of ties. Summing +-1/0 in float is exact
    while the row length is below 2**24 (float64 accumulation beyond).
    """
    n_rows, n_cand = sims.shape
    col = torch.arange(n_cand, device=sims.device)
    odd = (~torch.isfinite(pos_score) | (pos_score.abs() < _TINY)).nonzero().flatten()
    if odd.numel():
        s_odd, p_odd = sims[odd], pos_score[odd, None]
        eq_odd = s_odd == p_odd
        ahead_odd = (s_odd > p_odd).sum(dim=1)
        ahead_odd += (eq_odd & (col[None, :] < pos_index[odd, None])).sum(dim=1)
        del s_odd, eq_odd
    acc = torch.float64 if n_cand >= 2**24 else None
    sign = sims.sub_(pos_score[:, None]).sign_()
    diff = sign.sum(dim=1, dtype=acc)
    unequal = sign.abs_().sum(dim=1, dtype=acc)  # sign now holds 1 (unequal) or 0 (tie)
    ahead = ((diff + unequal) / 2).long()
    # Rows where other candidates share the positive's score need the index tie-break;
    # with continuous embeddings that is (almost) never, so only those rows pay for it.
    tied = (unequal < n_cand - 1).nonzero().flatten()
    if tied.numel():
        before = (sign[tied] == 0) & (col[None, :] < pos_index[tied, None])
        ahead[tied] += before.sum(dim=1)
    if odd.numel():
        ahead[odd] = ahead_odd
    return ahead


def _exact_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every row under the order (score desc, index asc), k <= sims.shape[1].

    ``torch.topk`` returns the right values but an unspecified choice among equal scores.
    Its chosen *set* is still right unless a tie straddles the k-th place, which the
    (k+1)-th value reveals; only such rows take the slow path. The set is then put in
    canonical order: ascending index, then a stable sort by descending score.
    """
    n_cand = sims.shape[1]
    vals, inds = sims.topk(min(k + 1, n_cand), dim=1, largest=True, sorted=True)
    idx = inds[:, :k].sort(dim=1).values
    if k < n_cand:
        straddle = (vals[:, k] == vals[:, k - 1]).nonzero().flatten()
        if straddle.numel():
            idx[straddle] = _straddling_topk_set(sims[straddle], vals[straddle, k - 1], k)
    scores = sims.gather(1, idx)
    scores, perm = scores.sort(dim=1, descending=True, stable=True)
    return scores, idx.gather(1, perm)


def _straddling_topk_set(sims: torch.Tensor, thr: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of the top-k set when ties at the k-th value ``thr`` spill past
    place k: everything above ``thr``, then the lowest-indexed candidates equal to it."""
    n_rows, n_cand = sims.shape
    thr = thr[:, None]
    above = sims > thr
    eq = sims == thr
    need = k - above.sum(dim=1)  # >= 1 places left for the tied candidates
    col = torch.arange(n_cand, device=sims.device)
    # Integer key, distinct per column, largest for the lowest tied column.
    key = torch.where(eq, n_cand - col[None, :], 0)
    first = key.topk(int(need.max()), dim=1).values
    cutoff = n_cand - first.gather(1, (need - 1)[:, None]) + 1
    keep = above | (eq & (col[None, :] < cutoff))
    # Exactly k kept per row; nonzero() lists them row-major with ascending column.
    return keep.nonzero()[:, 1].view(n_rows, k)


def _blocks(n: int, block_size: int, desc: str):
    """Block starts, with a progress bar when ranking takes more than a few blocks (the
    25k-caption COCO 5k test set ranks in 25 blocks of 1024 on each side)."""
    starts = range(0, n, block_size)
    return progress(starts, desc=desc, unit="block", disable=len(starts) < 8)


def _i2t_pass(
    img: torch.Tensor,
    txt: torch.Tensor,
    idx_cpu: torch.Tensor,
    block_size: int,
    kmax: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """First-relevant ranks [N] (CPU) and, if kmax > 0, relevance of the exact top-kmax
    captions [N, min(kmax, M)] (bool, CPU)."""
    n_img, n_txt = img.shape[0], txt.shape[0]
    dev = img.device
    # Captions grouped by image: a block of images owns a contiguous slice of `order`.
    order_cpu = torch.argsort(idx_cpu, stable=True)
    offsets = [0, *torch.cumsum(torch.bincount(idx_cpu, minlength=n_img), 0).tolist()]
    order = order_cpu.to(dev)
    idx = idx_cpu.to(dev)
    score = _Scorer(txt)
    kk = min(kmax, n_txt)
    ranks = torch.empty(n_img, dtype=torch.long)
    rel = torch.empty((n_img, kk), dtype=torch.bool) if kk > 0 else None
    for i0 in _blocks(n_img, block_size, "rank captions per image"):
        i1 = min(i0 + block_size, n_img)
        sims = score(img[i0:i1])  # [B, M]
        pos = order[offsets[i0] : offsets[i1]]
        row = idx[pos] - i0
        pscore = sims[row, pos]
        # Best-placed positive per image = max score, then lowest index; its rank is the
        # image's rank (every other positive is behind it in the order).
        best = torch.full((i1 - i0,), -math.inf, device=dev)
        best = best.scatter_reduce(0, row, pscore, reduce="amax")
        cand = torch.where(pscore == best[row], pos, n_txt)
        best_idx = torch.full((i1 - i0,), n_txt, dtype=torch.long, device=dev)
        best_idx = best_idx.scatter_reduce(0, row, cand, reduce="amin")
        if rel is not None:  # before the counting below overwrites sims
            _, top = _exact_topk(sims, kk)
            rel[i0:i1] = (idx[top] == torch.arange(i0, i1, device=dev)[:, None]).cpu()
        ranks[i0:i1] = (_count_ahead_(sims, best, best_idx) + 1).cpu()
        del sims
    return ranks, rel


def _t2i_pass(
    img: torch.Tensor, txt: torch.Tensor, idx_cpu: torch.Tensor, block_size: int
) -> torch.Tensor:
    n_txt = txt.shape[0]
    idx = idx_cpu.to(img.device)
    score = _Scorer(img)
    ranks = torch.empty(n_txt, dtype=torch.long)
    for m0 in _blocks(n_txt, block_size, "rank images per caption"):
        m1 = min(m0 + block_size, n_txt)
        sims = score(txt[m0:m1])  # [B, N]
        own = idx[m0:m1]
        pscore = sims.gather(1, own[:, None]).squeeze(1)
        ranks[m0:m1] = (_count_ahead_(sims, pscore, own) + 1).cpu()
        del sims
    return ranks


def _blocked_topk(
    queries: torch.Tensor, candidates: torch.Tensor, k: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, candidates.shape[0])
    score = _Scorer(candidates)
    scores = torch.empty((queries.shape[0], k), dtype=torch.float32)
    indices = torch.empty((queries.shape[0], k), dtype=torch.long)
    for q0 in range(0, queries.shape[0], block_size):
        q1 = min(q0 + block_size, queries.shape[0])
        s, i = _exact_topk(score(queries[q0:q1]), k)
        scores[q0:q1], indices[q0:q1] = s.cpu(), i.cpu()
    return scores, indices


# ---------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------


def i2t_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: torch.Tensor,
    block_size: int = 1024,
    device=None,
) -> torch.Tensor:
    """1-based rank of the first relevant caption for every image: LongTensor [N] (CPU)."""
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    idx = _check_index(text_image_index, image_emb.shape[0], text_emb.shape[0])
    block_size = _check_block_size(block_size)
    dev = _resolve_device(device, image_emb)
    ranks, _ = _i2t_pass(_prepare(image_emb, dev), _prepare(text_emb, dev), idx, block_size, 0)
    return ranks


def t2i_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: torch.Tensor,
    block_size: int = 1024,
    device=None,
) -> torch.Tensor:
    """1-based rank of its own image for every caption: LongTensor [M] (CPU)."""
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    idx = _check_index(text_image_index, image_emb.shape[0], text_emb.shape[0])
    block_size = _check_block_size(block_size)
    dev = _resolve_device(device, image_emb)
    return _t2i_pass(_prepare(image_emb, dev), _prepare(text_emb, dev), idx, block_size)


def topk_texts(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    k: int,
    block_size: int = 1024,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k captions per image, blockwise, same tie rule as the metrics.

    Returns (scores float32 [N, k'], indices long [N, k']) on the CPU, best first, with
    k' = min(k, M).
    """
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    k = _check_pos_int("k", k)
    block_size = _check_block_size(block_size)
    dev = _resolve_device(device, image_emb)
    return _blocked_topk(_prepare(image_emb, dev), _prepare(text_emb, dev), k, block_size)


def topk_images(
    text_emb: torch.Tensor,
    image_emb: torch.Tensor,
    k: int,
    block_size: int = 1024,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k images per caption, blockwise, same tie rule as the metrics.

    Returns (scores float32 [M, k'], indices long [M, k']) on the CPU, best first, with
    k' = min(k, N).
    """
    _check_pair(text_emb, image_emb, "text_emb", "image_emb")
    k = _check_pos_int("k", k)
    block_size = _check_block_size(block_size)
    dev = _resolve_device(device, text_emb)
    return _blocked_topk(_prepare(text_emb, dev), _prepare(image_emb, dev), k, block_size)


def _rank_summary(prefix: str, ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    r = ranks.numpy().astype(np.float64)
    out = {f"{prefix}_R@{k}": 100.0 * float(np.mean(r <= k)) for k in ks}
    out[f"{prefix}_medr"] = float(np.median(r))
    out[f"{prefix}_meanr"] = float(np.mean(r))
    out[f"{prefix}_mrr"] = float(np.mean(1.0 / r))
    return out


def _map_ndcg(rel: torch.Tensor, n_rel: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """mAP@K and NDCG@K (percent) from top-list relevance [N, kk] and relevant counts [N]."""
    relf = rel.to(torch.float64)
    kk = relf.shape[1]
    pos = torch.arange(1, kk + 1, dtype=torch.float64)
    prec = relf.cumsum(dim=1) / pos
    disc = 1.0 / torch.log2(pos + 1.0)
    ideal = disc.cumsum(dim=0)  # IDCG for 1..kk ideal hits
    out: dict[str, float] = {}
    for k in ks:
        kc = min(k, kk)  # the list cannot be longer than M
        n_best = torch.clamp(n_rel, max=k)  # min(K, R) <= kc since R <= M
        ap = (prec[:, :kc] * relf[:, :kc]).sum(dim=1) / n_best
        dcg = (relf[:, :kc] * disc[:kc]).sum(dim=1)
        ndcg = dcg / ideal[n_best - 1]
        out[f"i2t_mAP@{k}"] = 100.0 * float(ap.mean())
        out[f"i2t_NDCG@{k}"] = 100.0 * float(ndcg.mean())
    return out


def _t2i_map_ndcg(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """mAP@K and NDCG@K (percent) of text->image, where each caption has one relevant
    image: AP@K = 1/r and NDCG@K = 1/log2(r + 1) for a rank r <= K, else 0."""
    r = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"t2i_mAP@{k}"] = 100.0 * float(torch.where(hit, 1.0 / r, 0.0).mean())
        out[f"t2i_NDCG@{k}"] = 100.0 * float(torch.where(hit, 1.0 / torch.log2(r + 1.0),
                                                         0.0).mean())
    return out


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: torch.Tensor,
    ks=DEFAULT_KS,
    block_size: int = 1024,
    device=None,
) -> dict[str, float]:
    """Bidirectional retrieval metrics (see the module docstring for definitions).

    Args:
        image_emb: [N, D] image embeddings, L2-normalised (scores are plain dot products,
            computed in float32 whatever the input dtype).
        text_emb: [M, D] caption embeddings, L2-normalised.
        text_image_index: [M] integer; row of ``image_emb`` that caption m describes.
            Every image needs at least one caption.
        ks: cut-offs K for R@K, mAP@K and NDCG@K. mAP/NDCG keep N x min(max(ks), M)
            booleans, so very large K costs memory.
        block_size: query rows scored at once; peak extra memory is about
            ``block_size * max(N, M) * 4`` bytes (one float32 block of scores).
        device: where to compute (default: ``image_emb.device``).

    Returns keys ``i2t_R@K``, ``t2i_R@K``, ``rsum``, ``{i2t,t2i}_{medr,meanr,mrr}``,
    ``{i2t,t2i}_mAP@K``, ``{i2t,t2i}_NDCG@K`` (recalls, mAP and NDCG in percent; mrr in [0, 1]),
    ``n_images``, ``n_texts``.

    Raises:
        ValueError: on malformed shapes/dtypes, non-finite embeddings, out-of-range
            ``text_image_index``, images without captions, or bad ``ks``/``block_size``.
    """
    return retrieval_metrics_and_ranks(
        image_emb, text_emb, text_image_index, ks=ks, block_size=block_size, device=device
    )[0]


def retrieval_metrics_and_ranks(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_image_index: torch.Tensor,
    ks=DEFAULT_KS,
    block_size: int = 1024,
    device=None,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """:func:`retrieval_metrics` plus the per-query ranks it was computed from, without
    scoring twice: ``(metrics, i2t ranks LongTensor [N], t2i ranks LongTensor [M])``."""
    _check_pair(image_emb, text_emb, "image_emb", "text_emb")
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    idx = _check_index(text_image_index, n_img, n_txt)
    ks = _check_ks(ks)
    block_size = _check_block_size(block_size)
    dev = _resolve_device(device, image_emb)
    img, txt = _prepare(image_emb, dev), _prepare(text_emb, dev)

    r_i2t, rel = _i2t_pass(img, txt, idx, block_size, kmax=max(ks))
    r_t2i = _t2i_pass(img, txt, idx, block_size)
    return summarize(r_i2t, r_t2i, rel, torch.bincount(idx, minlength=n_img), ks), r_i2t, r_t2i


def summarize(
    r_i2t: torch.Tensor,
    r_t2i: torch.Tensor,
    i2t_rel: torch.Tensor,
    n_relevant: torch.Tensor,
    ks=DEFAULT_KS,
) -> dict[str, float]:
    """Metrics dict from ranks [N] / [M], top-list relevance [N, >= min(max(ks), M)] and
    captions per image [N]. Exposed so a reference implementation (benchmark) can share
    the bookkeeping and differ only in how it ranks."""
    ks = _check_ks(ks)
    out = _rank_summary("i2t", r_i2t, ks)
    out.update(_rank_summary("t2i", r_t2i, ks))
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks)
    out.update(_map_ndcg(i2t_rel, n_relevant, ks))
    out.update(_t2i_map_ndcg(r_t2i, ks))
    out["n_images"] = int(r_i2t.numel())
    out["n_texts"] = int(r_t2i.numel())
    return out
