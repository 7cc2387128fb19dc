# The one Snakemake script: of every rule; it runs the cliptune stage named like the
# rule (cliptune.stages.STAGES), so rules stay declarative and the logic testable.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - importable uninstalled
from cliptune import stages  # noqa: E402

stages.run(snakemake)  # noqa: F821
