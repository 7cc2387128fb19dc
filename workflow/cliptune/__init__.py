"""cliptune: fine-tune CLIP-style image-text models and measure bidirectional retrieval.

All workflow logic lives here so it is importable and unit-tested; the Snakemake
rules in ``workflow/rules`` only wire files to these functions.
"""

__version__ = "0.1.0"
