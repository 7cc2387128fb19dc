"""Planning the DAG never imports torch: every .smk file imports only torch-free modules,
so a dry run (and the start of every real run) does not pay torch's import time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "config").glob("*.yaml"))
# Runs snakemake's own command line in this process, then reports what it imported.
DRY_RUN = """
import json, sys
from snakemake.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"rc": code, "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_a_dry_run_of_every_shipped_config_imports_no_torch(config, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", DRY_RUN, "-n", "-q", "rules", "-s", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(config), "--cores", "1"],
        capture_output=True, text=True, cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, proc.stdout + proc.stderr
    assert result["torch"] is False, f"{config.name}: parsing the Snakefile imported torch"


def test_the_check_sees_torch_when_a_rule_file_imports_it(tmp_path):
    """The same check fails when something on the parse path imports torch."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("import torch\n\nrule all:\n    output: 'x'\n    shell: 'touch x'\n")
    proc = subprocess.run(
        [sys.executable, "-c", DRY_RUN, "-n", "-q", "rules", "-s", str(snakefile),
         "--directory", str(tmp_path), "--cores", "1"],
        capture_output=True, text=True, cwd=tmp_path)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "torch": True}
