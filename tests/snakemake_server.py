"""Run `snakemake` command lines for the tests, paying the imports once.

A plain `snakemake -n` spends most of its CPU importing torch, torchvision and the
cliptune modules the rules import. This server imports them once, then forks a child per
command line: each child is a fresh snakemake process (its own cwd, environment, logging
and exit status) that starts with those modules already loaded. Jobs still run as
Snakemake runs them (script jobs in their own processes).

    python tests/snakemake_server.py

reads one JSON request per stdin line, {"args": [...], "cwd": str, "env": {...},
"stdout": path, "stderr": path}, and answers each with its exit status on one stdout
line. Started by conftest.py (``snakemake``, ``snakemake_batch``).
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
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
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
    preload()
    for line in sys.stdin:
        print(json.dumps(run_one(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
