"""Print pyproject's runtime (+ requested extras) requirements, one per line.

The Makefile installs these into a venv shared between checkouts instead of an
editable install, so each checkout imports its own ``workflow/cliptune``.
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
project = project["project"]
reqs = list(project["dependencies"])
for extra in sys.argv[1:]:
    reqs += project["optional-dependencies"][extra]
print("\n".join(reqs))
