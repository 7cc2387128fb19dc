"""What the figures job produces and what it asks for, decided from the config alone.

The Snakefile reads these names while it parses; the drawing itself lives in
cliptune.reporting.variant_figures, which loads torch. Importing this module loads none.
"""

from __future__ import annotations

from collections.abc import Mapping

from cliptune.models.towers import reads_text_cache

FIGURES = ("text_to_image", "image_to_text", "similarity_heatmap")
# One zero-shot figure per task (report.zero_shot.tasks), under a variant's figures/.
ZERO_SHOT_FIGURE = "zero_shot/{task}.png"


def figures_gpus(variant: Mapping) -> int:
    """GPUs the figures job asks for: one when it runs the variant's own text tower on
    the variant's (non-CPU) device, as evaluate does; none for the frozen encoder."""
    return int(not reads_text_cache(variant) and variant["train"]["device"] != "cpu")
