"""Blocked retrieval metrics vs a naive full-matrix + full-argsort reference.

    python benchmarks/bench_retrieval.py [--sizes 5000x25000,20000x100000] [--dim 512]
                                         [--memory-budget-gb 4] [--block-size 1024]

Every (size, method) runs in a fresh subprocess so its peak RSS (VmHWM, reset after the
embeddings are generated) is its own. The naive reference needs the N x M score matrix
plus a full argsort (~24 bytes per pair), so it only runs when that estimate fits the
memory budget; otherwise it is reported as exceeding it instead of risking an OOM. Where
both run, their per-query ranks must be identical. The blocked run also times what
``evaluate`` adds on top of scoring: the cluster-bootstrap intervals (``bootstrap``
defaults, 1,000 resamples) and one paired comparison, both from the ranks alone. Writes a markdown table to
``benchmarks/results/retrieval.md`` (``--out``).
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

from cliptune.config import DEFAULTS
from cliptune.evaluation.bootstrap import Ranks, metric_intervals, paired_differences
from cliptune.evaluation.retrieval_metrics import (
    DEFAULT_KS,
    retrieval_metrics_and_ranks,
    summarize,
)

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"  # git-ignored scratch for rank tensors
KS = DEFAULT_KS  # the config's eval.ks default
NAIVE_BYTES_PER_PAIR = 24  # scores 4 + sort values 4 + indices 8 + gathered labels 8
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


def naive_metrics(img, txt, tii, ks=KS):
    """Textbook version: materialise all N x M scores, fully sort every row and column."""
    n_img = img.shape[0]
    sims = img @ txt.T
    order = sims.sort(dim=1, descending=True, stable=True).indices  # ties: lower index first
    rel = tii[order] == torch.arange(n_img)[:, None]
    del order
    r_i2t = rel.to(torch.uint8).argmax(dim=1) + 1  # first relevant position
    rel_top = rel[:, : max(ks)].clone()
    del rel
    order = sims.T.sort(dim=1, descending=True, stable=True).indices
    r_t2i = (order == tii[:, None]).to(torch.uint8).argmax(dim=1) + 1
    del order, sims
    metrics = summarize(r_i2t, r_t2i, rel_top, torch.bincount(tii, minlength=n_img), ks)
    return metrics, r_i2t, r_t2i


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
            img, txt, tii, ks=KS, block_size=spec["block"]
        )
    else:
        metrics, r_i2t, r_t2i = naive_metrics(img, txt, tii)
    seconds = time.perf_counter() - t0
    peak = _mem_kib("VmHWM")
    if spec.get("ranks_out"):
        torch.save({"i2t": r_i2t, "t2i": r_t2i}, spec["ranks_out"])
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
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument(
        "--memory-budget-gb",
        type=float,
        default=4.0,
        help="naive runs only if its estimated peak fits",
    )
    ap.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "retrieval.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    WORK.mkdir(exist_ok=True)
    rows, notes, ok = [], [], True
    for size in args.sizes.split(","):
        n_img, n_txt = (int(v) for v in size.lower().split("x"))
        if n_txt != CAPTIONS_PER_IMAGE * n_img:
            raise SystemExit(f"{size}: M must be {CAPTIONS_PER_IMAGE} x N")
        label = f"{n_img:,} x {n_txt:,}"
        naive_gib = NAIVE_BYTES_PER_PAIR * n_img * n_txt / 2**30
        results = {}
        for method in ("naive", "blocked"):
            if method == "naive" and naive_gib > args.memory_budget_gb:
                rows.append(
                    f"| {label} | naive | - | - | ~{naive_gib:.1f} (est.) | - | - | - | - "
                    f"| - | - | exceeds {args.memory_budget_gb:g} GiB budget, not run |"
                )
                continue
            spec = {
                "method": method,
                "n": n_img,
                "dim": args.dim,
                "block": args.block_size,
                "ranks_out": str(WORK / f"{method}_{n_img}.pt"),
            }
            print(f"running {method} {label} ...", file=sys.stderr, flush=True)
            res = run_case(spec, args.timeout)
            if "error" in res:
                ok = False
                rows.append(f"| {label} | {method} | - | - | - | - | - | - | - | - | - "
                            f"| {res['error']} |")
                continue
            results[method] = res
            m = res["metrics"]
            block = args.block_size if method == "blocked" else "-"
            boot = (f"{res['bootstrap_s']:.2f} (+{res['bootstrap_extra_gib']:.2f} GiB) "
                    f"| {res['paired_s']:.2f}") if "bootstrap_s" in res else "- | -"
            rows.append(
                f"| {label} | {method} | {block} | {res['seconds']:.1f} "
                f"| {res['peak_rss_gib']:.2f} | {res['extra_gib']:.2f} "
                f"| {m['i2t_R@1']:.2f} | {m['t2i_R@1']:.2f} | {m['rsum']:.2f} | {boot} | |"
            )
        if len(results) == 2:
            a = torch.load(WORK / f"naive_{n_img}.pt", weights_only=True)
            b = torch.load(WORK / f"blocked_{n_img}.pt", weights_only=True)
            same_ranks = torch.equal(a["i2t"], b["i2t"]) and torch.equal(a["t2i"], b["t2i"])
            same_metrics = results["naive"]["metrics"] == results["blocked"]["metrics"]
            ok &= same_ranks and same_metrics
            speed = results["naive"]["seconds"] / results["blocked"]["seconds"]
            mem = results["naive"]["extra_gib"] / max(results["blocked"]["extra_gib"], 1e-9)
            notes.append(
                f"- {label}: per-query ranks identical: **{same_ranks}**, all metrics "
                f"identical: **{same_metrics}**; blocked is {speed:.1f}x faster and needs "
                f"{mem:.1f}x less extra memory."
            )

    table = "\n".join(
        [
            f"# Retrieval metrics benchmark (D={args.dim}, {CAPTIONS_PER_IMAGE} captions "
            f"per image, ks={KS})",
            "",
            f"Machine: {machine()}.",
            "",
            "`"
            + " ".join(
                ["python benchmarks/bench_retrieval.py", *(sys.argv[1:] if argv is None else argv)]
            )
            + "`; each run in its own subprocess. Peak RSS = VmHWM of the whole process "
            "(Python, torch and the embeddings included); extra = peak minus RSS before "
            "the call (the high-water mark is reset after generating the embeddings). "
            f"Naive = full N x M float32 matrix + stable full sort of rows and columns, run "
            f"only if ~{NAIVE_BYTES_PER_PAIR} B/pair fits --memory-budget-gb "
            f"{args.memory_budget_gb:g}. Bootstrap = what `evaluate` adds after scoring: "
            f"{DEFAULTS['bootstrap']['resamples']:,}-resample cluster-bootstrap intervals of "
            "every R@K and rsum from the per-query ranks (in brackets: peak RSS growth over "
            "the scoring peak); paired = one paired comparison with the baseline (the "
            "aggregate does one per variant).",
            "",
            "| images x captions | method | block | time (s) | peak RSS (GiB) "
            "| extra (GiB) | i2t R@1 | t2i R@1 | rsum | bootstrap (s) | paired (s) | notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            *notes,
            "",
        ]
    )
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
