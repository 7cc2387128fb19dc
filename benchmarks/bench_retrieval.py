"""Blocked retrieval metrics vs LAION CLIP_benchmark's method, on the same embeddings.

    python benchmarks/bench_retrieval.py [--sizes 5000x25000,20000x100000] [--dim 512]
                                         [--memory-budget-gb 4] [--score-memory-mb 256]
                                         [--cb-batch-size 64]

The reference re-implements the method of CLIP_benchmark's
``clip_benchmark/metrics/zeroshot_retrieval.py``: the full M x N text-image score matrix
and a boolean positive-pair matrix of the same shape, then, per batch of query rows,
``topk`` + ``one_hot`` of the top-k indices times the positives, and a query counts as a
hit when that recall is ``> 0``. It needs ~5 bytes per pair resident, so it only runs when
that fits the memory budget; otherwise it is reported as exceeding it instead of risking
an OOM. Every (size, method) runs in a fresh subprocess so its peak RSS (VmHWM, reset
after the embeddings are generated) is its own. The blocked run also times what
``evaluate`` adds on top of scoring: the cluster-bootstrap intervals (``bootstrap``
defaults) and one paired comparison, both from the ranks alone. Where both run, their R@K must agree
(the embeddings are continuous: no ties for ``topk`` to break differently). Writes a
markdown table to ``benchmarks/results/retrieval.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cliptune.config.load import DEFAULTS
from cliptune.evaluation.bootstrap import Ranks, metric_intervals, paired_differences
from cliptune.evaluation.retrieval_metrics import (
    DEFAULT_KS,
    RSUM_KS,
    retrieval_metrics_and_ranks,
)
from cliptune.retrieval import score_memory_bytes

HERE = Path(__file__).resolve().parent
KS = DEFAULT_KS  # the config's eval.ks default
CB_BYTES_PER_PAIR = 5  # float32 scores + bool positives
CAPTIONS_PER_IMAGE = 5  # COCO: 40,504 val2014 images x 5 = 202,520 captions


def make_embeddings(n_img: int, dim: int, seed: int = 0):
    """Synthetic CLIP-like data: a caption = its image's embedding + heavy noise."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=g), dim=1)
    tii = torch.arange(n_img).repeat_interleave(CAPTIONS_PER_IMAGE)
    tii = tii[torch.randperm(tii.numel(), generator=g)]
    txt = img[tii]
    txt += torch.randn(txt.shape, generator=g).mul_(6.0 / dim**0.5)
    txt = torch.nn.functional.normalize(txt, dim=1)
    return img, txt, tii


def _hits_at_k(scores, positives, k: int, batch_size: int) -> torch.Tensor:
    """Per query row: does any positive appear among its top-k (CLIP_benchmark's recall
    of each query, then ``> 0``), computed batch by batch as that code does."""
    hits = []
    for start in range(0, scores.shape[0], batch_size):
        s, pos = scores[start:start + batch_size], positives[start:start + batch_size]
        top = torch.nn.functional.one_hot(s.topk(k, dim=1).indices, num_classes=s.shape[1])
        true_pos = (top * pos[:, None, :]).sum(dim=(1, 2))
        hits.append(true_pos / pos.sum(dim=1) > 0)
    return torch.cat(hits)


def clip_benchmark_metrics(img, txt, tii, batch_size: int, ks=KS) -> dict:
    """R@K both ways by CLIP_benchmark's method (module docstring), in percent."""
    scores = txt @ img.T  # M x N, all of it
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(scores)), tii] = True
    out = {}
    for k in ks:
        # Mean in float64 (CLIP_benchmark: float32), so equal hit sets give equal numbers.
        out[f"t2i_R@{k}"] = 100.0 * _hits_at_k(scores, positives, k, batch_size).double().mean().item()
        out[f"i2t_R@{k}"] = 100.0 * _hits_at_k(scores.T, positives.T, k, batch_size
                                               ).double().mean().item()
    out["rsum"] = sum(out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in RSUM_KS)
    return out


def _mem_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(spec: dict) -> dict:
    torch.manual_seed(0)
    img, txt, tii = make_embeddings(spec["n"], spec["dim"])
    rss_before = _mem_kib("VmRSS")
    try:  # reset the high-water mark so data generation does not count
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    t0 = time.perf_counter()
    if spec["method"] == "blocked":
        metrics, r_i2t, r_t2i = retrieval_metrics_and_ranks(
            img, txt, tii, ks=KS, score_memory=score_memory_bytes(spec["block"]))
    else:
        metrics = clip_benchmark_metrics(img, txt, tii, spec["block"])
    seconds = time.perf_counter() - t0
    peak = _mem_kib("VmHWM")
    out = {
        "seconds": seconds,
        "peak_rss_gib": peak / 2**20,
        "extra_gib": (peak - rss_before) / 2**20,
        "hwm_reset": hwm_reset,
        "metrics": metrics,
    }
    if spec["method"] == "blocked":
        out.update(bootstrap_cost(r_i2t, r_t2i, tii))
    return out


def bootstrap_cost(r_i2t, r_t2i, tii) -> dict:
    """Seconds for evaluate's intervals and for one paired comparison (aggregate), and
    the process's peak RSS growth over the scoring peak."""
    ranks = Ranks.of(r_i2t, r_t2i, tii, np.arange(r_i2t.numel()), np.arange(r_t2i.numel()))
    settings = DEFAULTS["bootstrap"]
    before = _mem_kib("VmHWM")
    t0 = time.perf_counter()
    metric_intervals(ranks, KS, settings)
    t1 = time.perf_counter()
    paired_differences(ranks, ranks, KS, settings)
    t2 = time.perf_counter()
    return {"bootstrap_s": t1 - t0, "paired_s": t2 - t1,
            "bootstrap_extra_gib": (_mem_kib("VmHWM") - before) / 2**20}


def run_case(spec: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = _meminfo_gib()
    except OSError:
        mem = float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def _meminfo_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        default="5000x25000,20000x100000",
        help="NxM list; full COCO val2014 is 40504x202520 (~5 min blocked here)",
    )
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--score-memory-mb", type=float,
                    default=DEFAULTS["eval"]["score_memory_mb"],
                    help="blocked method's eval.score_memory_mb (MiB of scores at once)")
    ap.add_argument("--cb-batch-size", type=int, default=64,
                    help="CLIP_benchmark's batch (its dataloader batch size; CLI default 64)")
    ap.add_argument(
        "--memory-budget-gb",
        type=float,
        default=4.0,
        help="the CLIP_benchmark method runs only if its estimated resident matrices fit",
    )
    ap.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retrieval.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    rows, notes, ok = [], [], True
    for size in args.sizes.split(","):
        n_img, n_txt = (int(v) for v in size.lower().split("x"))
        if n_txt != CAPTIONS_PER_IMAGE * n_img:
            raise SystemExit(f"{size}: M must be {CAPTIONS_PER_IMAGE} x N")
        results = _run_size(args, n_img, n_txt, rows)
        ok &= all("error" not in r for r in results.values())
        if len(results) == 2 and not any("error" in r for r in results.values()):
            ok &= _compare(f"{n_img:,} x {n_txt:,}", results, notes)
    write_report(args, rows, notes, argv)
    return 0 if ok else 1


METHODS = {"clip_benchmark": "CLIP_benchmark method", "blocked": "cliptune blocked"}


def _run_size(args, n_img: int, n_txt: int, rows: list) -> dict:
    label = f"{n_img:,} x {n_txt:,}"
    cb_gib = CB_BYTES_PER_PAIR * n_img * n_txt / 2**30
    results = {}
    for method, name in METHODS.items():
        batch = (args.cb_batch_size if method == "clip_benchmark"
                 else f"{args.score_memory_mb:g} MiB")
        if method == "clip_benchmark" and cb_gib > args.memory_budget_gb:
            rows.append(f"| {label} | {name} | {batch} | - | ~{cb_gib:.1f} (est.) | - | - | - | - "
                        f"| - | - | exceeds {args.memory_budget_gb:g} GiB budget, not run |")
            continue
        print(f"running {method} {label} ...", file=sys.stderr, flush=True)
        block = args.cb_batch_size if method == "clip_benchmark" else args.score_memory_mb
        res = run_case({"method": method, "n": n_img, "dim": args.dim, "block": block},
                       args.timeout)
        results[method] = res
        if "error" in res:
            rows.append(f"| {label} | {name} | {batch} | - | - | - | - | - | - | - | - "
                        f"| {res['error']} |")
            continue
        m = res["metrics"]
        boot = (f"{res['bootstrap_s']:.2f} (+{res['bootstrap_extra_gib']:.2f} GiB) "
                f"| {res['paired_s']:.2f}") if "bootstrap_s" in res else "- | -"
        rows.append(f"| {label} | {name} | {batch} | {res['seconds']:.1f} "
                    f"| {res['peak_rss_gib']:.2f} | {res['extra_gib']:.2f} "
                    f"| {m['i2t_R@1']:.2f} | {m['t2i_R@1']:.2f} | {m['rsum']:.2f} | {boot} | |")
    return results


def _compare(label: str, results: dict, notes: list) -> bool:
    cb, bl = results["clip_benchmark"], results["blocked"]
    keys = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in KS]
    worst = max(abs(cb["metrics"][k] - bl["metrics"][k]) for k in keys)
    same = worst < 1e-6
    notes.append(
        f"- {label}: R@{{{','.join(map(str, KS))}}} both ways agree: **{same}** (largest "
        f"difference {worst:.2g} points); blocked is {cb['seconds'] / bl['seconds']:.1f}x "
        f"faster and needs {cb['extra_gib'] / max(bl['extra_gib'], 1e-9):.1f}x less extra "
        "memory, while also computing median/mean rank, MRR, mAP@K and NDCG@K.")
    return same


def write_report(args, rows: list, notes: list, argv) -> None:
    command = " ".join(["python benchmarks/bench_retrieval.py",
                        *(sys.argv[1:] if argv is None else argv)])
    table = "\n".join([
        f"# Retrieval metrics benchmark (D={args.dim}, {CAPTIONS_PER_IMAGE} captions "
        f"per image, ks={KS})",
        "",
        f"Machine: {machine()}. Load average at the end: "
        f"{' / '.join(f'{v:.2f}' for v in os.getloadavg())} (1 / 5 / 15 min): the machine is "
        "shared by other jobs, so times carry their contention; each method ran alone in "
        "its own subprocess, one after the other.",
        "",
        f"`{command}`. Peak RSS = VmHWM of the whole process "
        "(Python, torch and the embeddings included); extra = peak minus RSS before "
        "the call (the high-water mark is reset after generating the embeddings). "
        "CLIP_benchmark method = LAION CLIP_benchmark's `zeroshot_retrieval.py`: full M x N "
        "float32 score matrix and bool positive-pair matrix, then per batch of "
        f"{args.cb_batch_size} query rows `topk` + `one_hot` x positives, hit = recall > 0; run "
        f"only if ~{CB_BYTES_PER_PAIR} B/pair fits --memory-budget-gb "
        f"{args.memory_budget_gb:g}. Blocked = `cliptune.evaluation.retrieval_metrics` "
        f"(query blocks within {args.score_memory_mb:g} MiB of scores, every metric). Bootstrap = what `evaluate` adds "
        f"after scoring: {DEFAULTS['bootstrap']['resamples']:,}-resample cluster-bootstrap "
        "intervals of every R@K and rsum from the per-query ranks (in brackets: peak RSS "
        "growth over the scoring peak); paired = one paired comparison with the baseline.",
        "",
        "| images x captions | method | batch/block | time (s) | peak RSS (GiB) "
        "| extra (GiB) | i2t R@1 | t2i R@1 | rsum | bootstrap (s) | paired (s) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
        "",
    ])
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    sys.exit(main())
