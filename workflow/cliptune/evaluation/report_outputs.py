"""Names of the files evaluate writes for the report, of the figures drawn from them,
and the report settings evaluation reads. Torch-free: the Snakefile imports it.

evaluate (cliptune.evaluation.prompt_results) writes, beside metrics.json:

* ``queries.json``: every report query's top-K image ids and scores;
* ``zero_shot.json``: per task its classes, templates, label source and accuracy;
* ``prompts.safetensors``: the embeddings of the queries (``queries``) and of every
  task's classes (``<task>.classes``), the class probabilities of every evaluated image
  (``<task>.probs``, [N, C]) and, where the task has ground truth, its labels
  (``<task>.labels``, [N, C] 0/1).

The figures job (cliptune.reporting.variant_figures) draws FIGURES and one
ZERO_SHOT_FIGURE per task from those files alone.
"""

from __future__ import annotations

from collections.abc import Mapping

QUERIES_JSON = "queries.json"
ZERO_SHOT_JSON = "zero_shot.json"
PROMPTS_FILE = "prompts.safetensors"

FIGURES = ("text_to_image", "image_to_text", "similarity_heatmap")
# One zero-shot figure per task (report.zero_shot.tasks), under a variant's figures/.
ZERO_SHOT_FIGURE = "zero_shot/{task}.png"

# The report settings evaluation reads; the others (figure sizes, seed) are the figures'.
EVALUATED_REPORT_KEYS = ("queries", "top_k", "zero_shot")


def prompt_params(report: Mapping) -> dict:
    """The part of ``report`` that evaluation reads (the evaluate rule's parameter, so a
    figure-only setting such as ``report.n_images`` never reruns evaluation)."""
    return {key: report[key] for key in EVALUATED_REPORT_KEYS}
