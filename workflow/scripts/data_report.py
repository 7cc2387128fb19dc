# Thin entry point for a Snakemake script: directive; logic lives in cliptune.stages.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - importable uninstalled
from cliptune.stages import run  # noqa: E402

run(snakemake, "data_report")  # noqa: F821
