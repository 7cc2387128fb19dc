# Thin entry point for a Snakemake script: directive; logic lives in cliptune.stages.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - importable uninstalled
from cliptune import stages  # noqa: E402

stages.run(snakemake, stages.export)  # noqa: F821
