"""Aggregate per-variant metrics into the ablation table, the paired comparison and the chart.

``results/ablation.csv`` always starts with the standard columns (R@1/5/10 both ways and
rsum over those six, the usual "rsum" of the retrieval literature and the one
metrics.json, the intervals and the summary report), whatever extra
cut-offs ``eval.ks`` asks for; after them come, per metric, the bootstrap interval of the
primary run (``_lo``/``_hi``), the mean and standard deviation over the ``train.seeds``
runs (``_seed_mean``/``_seed_std``) and the paired rsum difference to the baseline.
``results/paired_vs_baseline.csv`` holds the paired difference of every metric. The
chart shows the configured cut-offs with both kinds of error bar.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cliptune.evaluation.bootstrap import (
    bootstrap_samples,
    load_ranks,
    paired_differences,
    percentile_interval,
)
from cliptune.evaluation.retrieval_metrics import DEFAULT_KS, RSUM_KS
from cliptune.files.atomic import atomic_path
from cliptune.reporting.ablation_chart import plot_ablation

log = logging.getLogger(__name__)

DIRECTIONS = ("i2t", "t2i")
METRICS = [f"{d}_R@{k}" for d in DIRECTIONS for k in RSUM_KS] + ["rsum"]
COLUMNS = ["variant", *METRICS]
PAIRED_COLUMNS = ["variant", "baseline", "metric", "diff", "lo", "hi", "excludes_zero",
                  "confidence", "resamples"]


def ablation_table(metric_files: dict[str, Path]) -> pd.DataFrame:
    rows = []
    for variant, path in metric_files.items():
        m = json.loads(Path(path).read_text())
        row = {"variant": variant}
        for c in COLUMNS[1:-1]:
            if c not in m:
                log.warning("%s has no %s (eval.ks lacks it); the table shows NaN", path, c)
            row[c] = float(m.get(c, math.nan))
        row["rsum"] = float(m["rsum"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _metric_names(ks: Sequence[int]) -> list[str]:
    """R@K of both directions for the table's and the chart's cut-offs, then rsum (RSUM_KS)."""
    ks = sorted(set(RSUM_KS) | set(ks))
    return [f"{d}_R@{k}" for d in DIRECTIONS for k in ks] + ["rsum"]


def interval_frame(ranks_files: Mapping[str, Path], settings: Mapping, ks=DEFAULT_KS) -> pd.DataFrame:
    """Bootstrap interval of every R@K (table and chart cut-offs) and of rsum over RSUM_KS:
    one row per variant, columns ``{metric}_lo`` / ``{metric}_hi``."""
    all_ks = sorted(set(RSUM_KS) | set(ks))
    by_size: dict[int, dict] = {}
    for variant, path in ranks_files.items():
        ranks = load_ranks(path)
        # Resamples depend only on (N, B, seed): draw them once per image count.
        by_size.setdefault(ranks.n_images, {})[variant] = ranks
    rows = {}
    for group in by_size.values():
        for variant, stats in zip(group, bootstrap_samples(list(group.values()), all_ks,
                                                           settings), strict=True):
            row = {"variant": variant}
            for name, samples in stats.items():
                row[f"{name}_lo"], row[f"{name}_hi"] = percentile_interval(
                    samples, settings["confidence"])
            rows[variant] = row
    return pd.DataFrame([rows[v] for v in ranks_files]).set_index("variant")


def seed_frame(run_files: Mapping[str, Sequence[Path]], ks=DEFAULT_KS) -> pd.DataFrame:
    """Per variant: ``n_seeds`` and the mean / sample std over its runs of every metric
    (std is NaN for a single run: one seed says nothing about training randomness)."""
    names = _metric_names(ks)
    rows = []
    for variant, paths in run_files.items():
        values = []
        for path in paths:
            m = json.loads(Path(path).read_text())
            v = {n: float(m.get(n, math.nan)) for n in names[:-1]}
            v["rsum"] = float(m["rsum"])
            values.append(v)
        frame = pd.DataFrame(values, columns=names)
        row = {"variant": variant, "n_seeds": len(values)}
        for n in names:
            row[f"{n}_seed_mean"] = float(frame[n].mean())
            row[f"{n}_seed_std"] = float(frame[n].std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def paired_frame(ranks_files: Mapping[str, Path], baseline: str, settings: Mapping,
                 ks=DEFAULT_KS) -> pd.DataFrame:
    """Paired bootstrap difference (variant − baseline, same resamples) of every metric,
    one row per (variant, metric) for each variant other than the baseline."""
    if baseline not in ranks_files:
        raise ValueError(f"baseline {baseline!r} has no ranks; variants: {sorted(ranks_files)}")
    all_ks = sorted(set(RSUM_KS) | set(ks))
    base = load_ranks(ranks_files[baseline])
    rows = []
    for variant, path in ranks_files.items():
        if variant == baseline:
            continue
        diffs = paired_differences(load_ranks(path), base, all_ks, settings,
                                   names=(variant, baseline))
        for metric, d in diffs["differences"].items():
            rows.append({"variant": variant, "baseline": baseline, "metric": metric, **d,
                         "confidence": diffs["confidence"], "resamples": diffs["resamples"]})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _values(metric_files: Mapping[str, Path], ks) -> pd.DataFrame:
    """Recall of each variant's primary run at the table's and the chart's cut-offs."""
    names = _metric_names(ks)[:-1]
    rows = []
    for variant, path in metric_files.items():
        m = json.loads(Path(path).read_text())
        rows.append({"variant": variant, **{n: float(m.get(n, math.nan)) for n in names}})
    return pd.DataFrame(rows).set_index("variant")


def _rsum_columns(paired: pd.DataFrame, variants: Sequence[str]) -> pd.DataFrame:
    """The paired rsum difference per variant (NaN for the baseline itself)."""
    rsum = paired[paired["metric"] == "rsum"].set_index("variant")
    out = pd.DataFrame(index=pd.Index(variants, name="variant"))
    for col in ("diff", "lo", "hi", "excludes_zero"):
        out[f"rsum_{col}" if col == "diff" else f"rsum_diff_{col}"] = rsum[col]
    return out


def extended_table(table: pd.DataFrame, ci: pd.DataFrame, seeds: pd.DataFrame,
                   paired: pd.DataFrame) -> pd.DataFrame:
    """The first eight columns unchanged, then intervals, seed statistics, paired rsum."""
    variants = list(table["variant"])
    ci_cols = [f"{m}_{b}" for m in METRICS for b in ("lo", "hi")]
    seed_cols = ["n_seeds"] + [f"{m}_seed_{s}" for m in METRICS for s in ("mean", "std")]
    extra = pd.concat([ci[ci_cols], seeds[seed_cols], _rsum_columns(paired, variants)],
                      axis=1).reindex(variants)
    return pd.concat([table.set_index("variant"), extra], axis=1).reset_index()


def write_ablation(metric_files: Mapping[str, Path], ranks_files: Mapping[str, Path],
                   run_files: Mapping[str, Sequence[Path]], baseline: str,
                   settings: Mapping, csv_out: Path, png_out: Path, paired_out: Path,
                   ks=DEFAULT_KS) -> pd.DataFrame:
    """ablation.csv, paired_vs_baseline.csv and the chart, from metrics and ranks files.

    ``run_files``: variant -> metrics.json of every run (primary first); ``settings``:
    the config's ``bootstrap`` section.
    """
    ci = interval_frame(ranks_files, settings, ks)
    seeds = seed_frame(run_files, ks)
    paired = paired_frame(ranks_files, baseline, settings, ks)
    table = extended_table(ablation_table(dict(metric_files)), ci, seeds, paired)
    with atomic_path(csv_out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(paired_out) as tmp:
        paired.to_csv(tmp, index=False, float_format="%.4f")
    plot_ablation(_values(metric_files, ks), ci, seeds, paired, baseline, png_out, ks,
                  settings["confidence"])
    return table
