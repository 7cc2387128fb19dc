"""environment.yml must install exactly the dependency set pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib

import yaml


def _norm(req: str) -> str:
    req = req.strip()
    name, spec = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", req).groups()
    return re.sub(r"[-_.]+", "-", name.lower()) + spec.replace(" ", "")


def test_environment_matches_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((repo / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_reqs = {_norm(r) for r in pip_section if not r.startswith("-e")}
    assert env_reqs == {_norm(r) for r in project["dependencies"]}
    # No `-e .` or other path entries: under --sdm conda the file is copied into
    # .snakemake/conda/, where `.` is not the project; jobs import from workflow/.
    assert not [r for r in pip_section if r.startswith(("-e", ".", "/"))]
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert project["requires-python"].lstrip(">=") <= py.split("=")[-1]


def test_torch_pin_admits_the_local_wheels(repo):
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch>") or d.startswith("torch="))
    assert "<=2.14.1" in torch_req


def test_license_file_matches_the_declared_license(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (repo / "LICENSE").read_text().startswith("MIT License")


def test_optuna_bound_admits_the_journal_backend(repo):
    # training/hpo.py imports optuna.storages.journal.JournalFileBackend (optuna 4.0+).
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "optuna>=4.0" in deps


def test_every_rule_script_runs_a_stage_of_its_name(repo):
    """Every rule's script: is run_stage.py, which dispatches on the rule name: each such
    rule has a stage of that name, and every stage a rule."""
    from cliptune.stages import STAGES

    rules = set()
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        for name, body in re.findall(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)",
                                     smk.read_text(), flags=re.M | re.S):
            scripts = re.findall(r"script:\s*\n\s*\"([^\"]+)\"", body)
            assert scripts in ([], ["../scripts/run_stage.py"]), (name, scripts)
            if scripts:
                rules.add(name)
    assert rules == set(STAGES)
    assert sorted(p.name for p in (repo / "workflow" / "scripts").iterdir()
                  if p.suffix == ".py") == ["run_stage.py"]
