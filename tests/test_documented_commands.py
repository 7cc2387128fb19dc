"""Every `snakemake ...` command in the README and docs works as written (dry run).

Catches, for example, a target placed after `--configfile`, which takes several
values and would read the target as a config file.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import snakemake_batch
from PIL import Image

SLURM_PLUGIN = "snakemake_executor_plugin_slurm"

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "CONTRIBUTING.md", "config/README.md", *sorted(p.relative_to(REPO).as_posix()
                                                 for p in (REPO / "docs").glob("*.md"))]
# Modes that need a finished run or change state rather than plan jobs.
SKIP = ("--report", "--lint", "--generate-unit-tests", "--unlock")


def _fenced_commands(text: str) -> list[str]:
    commands = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if lang not in ("bash", "sh", "console", ""):
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("snakemake ") or line == "snakemake":
                commands.append(line)
    return commands


def documented_commands() -> list[tuple[str, str]]:
    """(first doc, command) for each distinct runnable command; templates such as
    results/{name}/... and modes in SKIP are left out."""
    found = {}
    for doc in DOCS:
        text = (REPO / doc).read_text()
        inline = re.findall(r"`(snakemake (?:-|results/|resources/|search )[^`\n]*)`", text)
        for cmd in _fenced_commands(text) + inline:
            if re.search(r"\{\w+\}|\.\.\.|<", cmd) or any(s in cmd for s in SKIP):
                continue
            found.setdefault(cmd, doc)
    return [(doc, cmd) for cmd, doc in found.items()]


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory):
    """A run folder that looks like the repository (documented relative paths work)."""
    run = tmp_path_factory.mktemp("docs_run")
    for name in ("Snakefile", "workflow", "config", "profiles", "environment.yml"):
        (run / name).symlink_to(REPO / name)
    return run


def prepare(command: str, project_dir: Path) -> dict:
    """The dry-run request for ``command``: files and folders the reader makes first are
    made here."""
    args = shlex.split(command)[1:]
    # Config files the reader writes first (my.yaml, an overlay, an HPO result) stand in
    # as the demo config when named first, as an empty overlay after another file.
    for i, arg in enumerate(args):
        if arg.endswith(".yaml") and i and not (project_dir / arg).exists() and (
                args[i - 1] == "--configfile" or args[i - 1].endswith(".yaml")):
            (project_dir / arg).parent.mkdir(parents=True, exist_ok=True)
            first = args[i - 1] == "--configfile"
            (project_dir / arg).write_text((REPO / "config/demo.yaml").read_text()
                                           if first else "{}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A folder the reader points search.images at stands in as a folder with one photo;
    # `~` becomes the run folder's home/, so the dry run never lists the real home.
    for folder in re.findall(r"images: ([^,}\s]+)", command):
        env["HOME"] = str(project_dir / "home")
        path = Path(os.path.expanduser(folder).replace(os.path.expanduser("~"), env["HOME"], 1)
                    if folder.startswith("~") else project_dir / folder)
        path.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 30, 30)).save(path / "photo.png")
    return {"args": ["-n", *args], "cwd": project_dir, "env": env}


@pytest.fixture(scope="module")
def dry_runs(project_dir) -> dict[str, subprocess.CompletedProcess]:
    """Every documented command dry-run once (conftest.snakemake_batch)."""
    commands = [c for _, c in documented_commands()
                if "profiles/slurm" not in c or importlib.util.find_spec(SLURM_PLUGIN)]
    requests = [prepare(c, project_dir) for c in commands]
    procs = snakemake_batch(requests)
    return dict(zip(commands, procs, strict=True))


def test_the_docs_have_commands():
    commands = [c for _, c in documented_commands()]
    assert len(commands) >= 10
    assert any("profiles/slurm" in c for c in commands)


@pytest.mark.parametrize(("doc", "command"), documented_commands())
def test_documented_command_dry_runs(doc, command, dry_runs):
    if "profiles/slurm" in command:
        pytest.importorskip(SLURM_PLUGIN)
    proc = dry_runs[command]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{doc}: `{command}` failed:\n{out[-3000:]}"
    for arg in shlex.split(command)[1:]:
        if arg.startswith(("results/", "resources/")) and not arg.endswith(".yaml"):
            assert arg in out or "Nothing to be done" in out, f"{doc}: target {arg} not planned"
