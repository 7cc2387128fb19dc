"""The summary's uncertainty parts: paired comparison table, verdicts, seed spread.

Read from what ``aggregate`` wrote (results/ablation.csv and
results/paired_vs_baseline.csv), so the summary states exactly the intervals the table
holds. A variant is called better or worse than the baseline only when the paired
bootstrap interval of its rsum difference excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

UNSURE = "not distinguishable from the baseline at this size"


@dataclass(frozen=True)
class Comparison:
    """Per-variant rows of ablation.csv and the long paired table, indexed by variant."""

    table: pd.DataFrame  # ablation.csv, index variant
    paired: pd.DataFrame  # paired_vs_baseline.csv
    baseline: str

    @classmethod
    def load(cls, ablation_csv: Path, paired_csv: Path, baseline: str) -> Comparison:
        return cls(pd.read_csv(ablation_csv).set_index("variant"), pd.read_csv(paired_csv),
                   baseline)

    @property
    def confidence(self) -> float:
        conf = self.paired["confidence"]
        return float(conf.iloc[0]) if len(conf) else math.nan

    def difference(self, variant: str, metric: str = "rsum") -> dict | None:
        rows = self.paired[(self.paired["variant"] == variant) & (self.paired["metric"] == metric)]
        return None if rows.empty else rows.iloc[0].to_dict()


def verdict(diff: dict) -> str:
    """'better'/'worse than the baseline' only when the paired interval excludes zero."""
    if not bool(diff["excludes_zero"]):
        return UNSURE
    return "better than the baseline" if diff["diff"] > 0 else "worse than the baseline"


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def _difference_cell(diff: dict | None) -> str:
    if diff is None:
        return "–"
    return f"{diff['diff']:+.1f} {_interval(diff['lo'], diff['hi'], signed=True)}"


def _seed_cell(row: pd.Series) -> str:
    n = int(row["n_seeds"])
    if n < 2:
        return "1 seed"
    return f"{row['rsum_seed_mean']:.1f} ± {row['rsum_seed_std']:.1f} ({n} seeds)"


def comparison_section(comp: Comparison) -> list[str]:
    """Markdown lines: one compact row per variant with rsum, its interval, the seed spread
    and the paired differences to the baseline with their verdict."""
    level = f"{comp.confidence:.0%}" if math.isfinite(comp.confidence) else "–"
    lines = ["## Compared with the baseline", "",
             f"rsum with its {level} bootstrap interval over evaluation images (each image "
             "resampled with all its captions); mean ± standard deviation over training seeds "
             f"where `train.seeds` replicates a variant; and the paired difference to "
             f"`{comp.baseline}` on the same resamples (variant − baseline, points, "
             f"{level} interval). A variant is called better or worse only when that "
             "interval excludes zero. Every metric's interval: `paired_vs_baseline.csv`, "
             "`ablation.csv`.", ""]
    header = ["variant", "rsum [interval]", "over seeds", "Δ rsum [interval]", "Δ i2t R@1",
              "Δ t2i R@1", "verdict"]
    rows = []
    for variant, row in comp.table.iterrows():
        d = comp.difference(variant)
        rows.append([
            f"{variant} (baseline)" if variant == comp.baseline else variant,
            f"{row['rsum']:.1f} {_interval(row['rsum_lo'], row['rsum_hi'])}",
            _seed_cell(row), _difference_cell(d),
            _difference_cell(comp.difference(variant, "i2t_R@1")),
            _difference_cell(comp.difference(variant, "t2i_R@1")),
            "–" if d is None else verdict(d)])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return [*lines, ""]


def margin_note(comp: Comparison, variant: str) -> str:
    """', paired interval [lo, hi]: better than the baseline' for the observations."""
    d = comp.difference(variant)
    if d is None:
        return ""
    return (f" (paired {comp.confidence:.0%} interval "
            f"{_interval(d['lo'], d['hi'], signed=True)}: {verdict(d)})")


def comparison_observations(comp: Comparison, skip: tuple[str, ...] = ()) -> list[str]:
    """Which variants the paired bootstrap finds better, worse or indistinguishable, and
    the seed spread of replicated variants."""
    groups: dict[str, list[str]] = {}
    for variant in comp.table.index:
        d = comp.difference(variant)
        if d is None or variant in skip:
            continue
        cell = f"`{variant}` ({_difference_cell(d)})"
        groups.setdefault(verdict(d), []).append(cell)
    obs = []
    for key, label in (("better than the baseline", "Better than the baseline"),
                       ("worse than the baseline", "Worse than the baseline")):
        if groups.get(key):
            obs.append(f"{label} (paired rsum interval excludes zero): "
                       + ", ".join(groups[key]) + ".")
    if groups.get(UNSURE):
        obs.append("Not distinguishable from the baseline at this size (the paired rsum "
                   "interval contains zero, so the difference may be evaluation noise): "
                   + ", ".join(groups[UNSURE]) + ".")
    replicated = comp.table[comp.table["n_seeds"] > 1]
    if not replicated.empty:
        obs.append("Training randomness (rsum over seeds, mean ± std): " + ", ".join(
            f"`{v}` {_seed_cell(r)}" for v, r in replicated.iterrows())
            + "; the bootstrap intervals above cover evaluation images only.")
    return obs


def training_gain_note(comp: Comparison, untrained: str) -> str:
    """The paired interval of baseline − untrained (the stored difference, negated)."""
    d = comp.difference(untrained)
    if d is None:
        return ""
    lo, hi = -d["hi"], -d["lo"]
    what = ("a real gain" if lo > 0 else "a real loss" if hi < 0
            else "not distinguishable from no training at this size")
    return f" (paired {comp.confidence:.0%} interval {_interval(lo, hi, signed=True)}: {what})"
