"""Blocked ranking kernels: the exact, memory-bounded core of retrieval scoring.

Shared by training's validation recall (cliptune.training.validation) and the full
metrics of evaluation (cliptune.evaluation.retrieval_metrics, whose docstring defines
the tie rule and the memory bound); they sit at the package's top level because
training must not import evaluation. Inputs are float32 on one device, unchecked:
the callers validate.
"""

from __future__ import annotations

import math

import torch

from cliptune.config.load import DEFAULTS
from cliptune.runtime import progress


def score_memory_bytes(mib: float) -> int:
    """``eval.score_memory_mb`` (MiB, any positive number) in whole bytes, at least 1."""
    return max(1, round(mib * 2**20))


DEFAULT_SCORE_MEMORY = score_memory_bytes(DEFAULTS["eval"]["score_memory_mb"])
# float32 score blocks alive at once while ranking: a block and one working copy (the
# per-caption counting's copy, or the matmul's distinct-candidate scores being expanded).
_LIVE_BLOCKS = 2


def block_rows(score_memory: int, n_candidates: int) -> int:
    """Query rows per block so that the live score blocks (``_LIVE_BLOCKS`` float32 blocks
    of rows x candidates) fit in ``score_memory`` bytes; at least one row, so the floor is
    one row of scores whatever the budget."""
    return max(1, score_memory // (_LIVE_BLOCKS * 4 * n_candidates))


def mean_r1(image_emb: torch.Tensor, text_emb: torch.Tensor,
            score_memory: int = DEFAULT_SCORE_MEMORY) -> float:
    """Mean of image->text and text->image R@1 in percent for paired rows (row i of
    each side is the only positive of the other's row i), with the metrics' tie rule."""
    img, txt = image_emb.float(), text_emb.float()
    own = torch.arange(img.shape[0])
    # No progress bars: this runs every epoch inside training's log.
    hits = (t2i_pass(img, txt, own, score_memory, show=False) == 1).sum()  # text -> image
    hits += (t2i_pass(txt, img, own, score_memory, show=False) == 1).sum()  # image -> text
    return 100.0 * float(hits) / (2 * img.shape[0])


# Rows hashed at once: bounds the int64 scratch of the row hashes (rows x dim x 8 bytes).
_HASH_ROWS = 1024


def _row_hashes(emb: torch.Tensor) -> torch.Tensor:
    """[n] int64 hash of each float32 row's values (equal rows, equal hashes): its bits
    times fixed random odd weights, summed with int64 wrap-around. Hashing in chunks
    keeps the scratch small where ``torch.unique(dim=0)`` would hold about twice the
    embeddings (0.8 GiB for val2014's 202,654 x 512 captions)."""
    g = torch.Generator().manual_seed(0)
    weights = torch.randint(-2**62, 2**62, (emb.shape[1],), generator=g, dtype=torch.long)
    weights = (2 * weights + 1).to(emb.device)
    out = torch.empty(emb.shape[0], dtype=torch.long, device=emb.device)
    for r0 in range(0, emb.shape[0], _HASH_ROWS):
        # + 0.0 turns -0.0 into +0.0, so rows equal in value have equal bits.
        bits = (emb[r0 : r0 + _HASH_ROWS] + 0.0).view(torch.int32).long()
        out[r0 : r0 + _HASH_ROWS] = (bits * weights).sum(dim=1)
    return out


def _distinct_rows(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(distinct rows, inverse)`` with ``emb == distinct[inverse]`` (distinct rows in
    order of first occurrence); inverse is None when every row is distinct (no copy, no
    gather).

    Rows are grouped by hash and each group is checked equal to its first row; distinct
    hashes prove distinct rows, and a collision of different rows (odds about n² / 2**64)
    takes ``torch.unique(dim=0)``, exact at twice the embeddings' memory."""
    n = emb.shape[0]
    groups, inverse = torch.unique(_row_hashes(emb), return_inverse=True)
    if groups.numel() == n:
        return emb, None
    rows = torch.arange(n, device=emb.device)
    first = torch.full((groups.numel(),), n, device=emb.device).scatter_reduce(
        0, inverse, rows, reduce="amin")
    by_first = torch.argsort(first)
    position = torch.empty_like(by_first)
    position[by_first] = torch.arange(by_first.numel(), device=emb.device)
    inverse = position[inverse]
    rep = first[by_first]
    for r0 in range(0, n, _HASH_ROWS):
        chunk = emb[r0 : r0 + _HASH_ROWS]
        if not torch.equal(chunk, emb[rep[inverse[r0 : r0 + _HASH_ROWS]]]):
            uniq, inverse = torch.unique(emb, dim=0, return_inverse=True)
            return uniq, inverse
    return emb[rep], inverse


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


def count_ahead_(
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


def exact_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _blocks(n: int, rows: int, desc: str, show: bool):
    """Block starts, with a progress bar when ranking takes more than a few blocks."""
    starts = range(0, n, rows)
    return progress(starts, desc=desc, unit="block", disable=not show or len(starts) < 8)


def i2t_pass(
    img: torch.Tensor,
    txt: torch.Tensor,
    idx_cpu: torch.Tensor,
    score_memory: int,
    kmax: int,
    show: bool = True,
    all_ranks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """First-relevant ranks [N] (CPU); if kmax > 0, relevance of the exact top-kmax
    captions [N, min(kmax, M)] (bool, CPU); if ``all_ranks``, every caption's rank in its
    own image's ranking [M] (CPU; what full-ranking AP and NDCG need), else None.

    Images are scored in blocks of ``block_rows(score_memory, M)`` rows. ``all_ranks``
    counts once per caption instead of once per image (about 5x the counting on COCO), on
    copies of at most one block's rows (the second live block the budget allows for).
    """
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
    pos_ranks = torch.empty(n_txt, dtype=torch.long) if all_ranks else None
    rows = block_rows(score_memory, n_txt)
    for i0 in _blocks(n_img, rows, "rank captions per image", show):
        i1 = min(i0 + rows, n_img)
        sims = score(img[i0:i1])  # [B, M]
        pos = order[offsets[i0] : offsets[i1]]
        row = idx[pos] - i0
        pscore = sims[row, pos]
        if rel is not None:  # before the counting below overwrites sims
            _, top = exact_topk(sims, kk)
            rel[i0:i1] = (idx[top] == torch.arange(i0, i1, device=dev)[:, None]).cpu()
        if pos_ranks is not None:
            # Every positive counted against its image's row (a copy per chunk); the
            # image's first-relevant rank is the smallest of its captions' ranks.
            pr = torch.empty(pos.numel(), dtype=torch.long, device=dev)
            step = i1 - i0
            for c0 in range(0, pos.numel(), step):
                c1 = min(c0 + step, pos.numel())
                pr[c0:c1] = count_ahead_(sims.index_select(0, row[c0:c1]), pscore[c0:c1],
                                         pos[c0:c1]) + 1
            pos_ranks[pos.cpu()] = pr.cpu()
            first = torch.full((i1 - i0,), n_txt + 1, dtype=torch.long, device=dev)
            ranks[i0:i1] = first.scatter_reduce(0, row, pr, reduce="amin").cpu()
            del sims
            continue
        # Best-placed positive per image = max score, then lowest index; its rank is the
        # image's rank (every other positive is behind it in the order).
        best = torch.full((i1 - i0,), -math.inf, device=dev)
        best = best.scatter_reduce(0, row, pscore, reduce="amax")
        cand = torch.where(pscore == best[row], pos, n_txt)
        best_idx = torch.full((i1 - i0,), n_txt, dtype=torch.long, device=dev)
        best_idx = best_idx.scatter_reduce(0, row, cand, reduce="amin")
        ranks[i0:i1] = (count_ahead_(sims, best, best_idx) + 1).cpu()
        del sims
    return ranks, rel, pos_ranks


def t2i_pass(
    img: torch.Tensor, txt: torch.Tensor, idx_cpu: torch.Tensor, score_memory: int,
    show: bool = True,
) -> torch.Tensor:
    """Rank [M] (CPU) of each caption's own image, captions scored in blocks of
    ``block_rows(score_memory, N)`` rows."""
    n_txt = txt.shape[0]
    idx = idx_cpu.to(img.device)
    score = _Scorer(img)
    ranks = torch.empty(n_txt, dtype=torch.long)
    rows = block_rows(score_memory, img.shape[0])
    for m0 in _blocks(n_txt, rows, "rank images per caption", show):
        m1 = min(m0 + rows, n_txt)
        sims = score(txt[m0:m1])  # [B, N]
        own = idx[m0:m1]
        pscore = sims.gather(1, own[:, None]).squeeze(1)
        ranks[m0:m1] = (count_ahead_(sims, pscore, own) + 1).cpu()
        del sims
    return ranks


def blocked_topk(
    queries: torch.Tensor, candidates: torch.Tensor, k: int, score_memory: int
) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(k, candidates.shape[0])
    score = _Scorer(candidates)
    scores = torch.empty((queries.shape[0], k), dtype=torch.float32)
    indices = torch.empty((queries.shape[0], k), dtype=torch.long)
    rows = block_rows(score_memory, candidates.shape[0])
    for q0 in range(0, queries.shape[0], rows):
        q1 = min(q0 + rows, queries.shape[0])
        s, i = exact_topk(score(queries[q0:q1]), k)
        scores[q0:q1], indices[q0:q1] = s.cpu(), i.cpu()
    return scores, indices
