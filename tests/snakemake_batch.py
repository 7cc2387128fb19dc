"""Run many `snakemake` command lines, paying the imports once.

A plain `snakemake -n` spends most of its CPU importing torch, torchvision and the
cliptune modules the rules import. This script imports them once, then forks a child per
command line: each child is a fresh snakemake process (its own cwd, environment, logging
and exit status) that starts with those modules already loaded.

    python tests/snakemake_batch.py requests.json results.json

requests.json: a list of {"args": [...], "cwd": str, "env": {...}, "log": str}; each
child's stdout and stderr go to its "log" file. results.json: the list of exit statuses.
Called by conftest.py ``snakemake_batch``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def preload() -> None:
    """Import what parsing the Snakefile imports: every cliptune module a rule file names."""
    import snakemake.api  # noqa: F401
    import snakemake.cli  # noqa: F401

    sys.path.insert(0, str(REPO / "workflow"))
    for smk in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for module in re.findall(r"^\s*from (cliptune[\w.]*) import", smk.read_text(), re.M):
            importlib.import_module(module)
    sys.path.remove(str(REPO / "workflow"))


def run_one(request: dict) -> int:
    """Fork, run ``snakemake <args>`` in the child, return its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    code = 1
    try:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:0] = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.argv = ["snakemake", *request["args"]]
        from snakemake.cli import main

        main(request["args"])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    requests = json.loads(Path(sys.argv[1]).read_text())
    preload()
    Path(sys.argv[2]).write_text(json.dumps([run_one(r) for r in requests]))


if __name__ == "__main__":
    main()
