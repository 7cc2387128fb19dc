"""The current study's aggregates at the top of ``results/``.

Every study writes into its own folder, ``results/{study}/``; the few files a reader
opens first are also copied to ``results/`` for whichever config ran last, so
``results/summary.md`` is always the summary of the config you just ran. Torch-free:
the Snakefile reads :data:`CURRENT_FILES` while it parses.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from cliptune.files.atomic import atomic_path

# File names under results/{study}/ that are also kept at results/ for the current study.
CURRENT_FILES = (
    "ablation.csv",
    "ablation_bar.png",
    "paired_vs_baseline.csv",
    "summary.md",
    "loss_overlay.png",
    "queries_across_variants.png",
)
# A Markdown link or image target: ](target) or ](target "title").
_LINK = re.compile(r"\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")


def _is_relative(target: str) -> bool:
    return not (target.startswith(("/", "#")) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target))


def relink_markdown(text: str, src_dir: Path, dst_dir: Path) -> str:
    """Rewrite relative Markdown links written for ``src_dir`` so they work from ``dst_dir``."""

    def fix(match: re.Match) -> str:
        target, title = match.group(1), match.group(2)
        if not _is_relative(target):
            return match.group(0)
        moved = os.path.relpath(os.path.join(src_dir, target), dst_dir)
        return f"]({Path(moved).as_posix()}{title})"

    return _LINK.sub(fix, text)


def copy_current(src: Path, dst: Path) -> None:
    """Copy one study output to the top of results/ (atomically: a reader never sees half
    a file); a Markdown file's relative links are rewritten to point into the study."""
    src, dst = Path(src), Path(dst)
    with atomic_path(dst) as tmp:
        if src.suffix == ".md":
            text = src.read_text(encoding="utf-8")
            tmp.write_text(relink_markdown(text, src.parent, dst.parent), encoding="utf-8")
        else:
            shutil.copyfile(src, tmp)
