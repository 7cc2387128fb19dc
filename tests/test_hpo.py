"""Optuna search: two tiny trials, resumable journal storage, overlay + plots; rule wiring."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from tiny_pairs import load_train_val, tiny_variant

from cliptune.config import DEFAULTS, deep_merge, load_config


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return load_train_val(tmp_path_factory.mktemp("pairs"))


def test_two_trials_write_overlay_and_plots_then_resume(pairs, tmp_path):
    from cliptune.training.hpo import run_search

    variant = tiny_variant(epochs=1, tensorboard=False)
    variant["model"]["freeze_backbone"] = True  # only the head trains: fast trials
    hpo = deep_merge(DEFAULTS["hpo"], {"trials": 2, "space": {"batch_size": [8, 16]}})
    out, storage = tmp_path / "hpo", tmp_path / "hpo" / "study.journal"
    override = {"model": {"freeze_backbone": True}}
    result = run_search(variant, override, hpo, *pairs, out, storage)
    assert result["trials"] == 2 and result["complete"] >= 1
    overlay = yaml.safe_load((out / "best_overlay.yaml").read_text())
    best = overlay["variants"]["tiny_hpo"]
    assert best["model"] == {"freeze_backbone": True}
    assert set(best["train"]) == {"lr", "temperature", "weight_decay", "batch_size"}
    assert 1e-5 <= best["train"]["lr"] <= 1e-2 and best["train"]["batch_size"] in (8, 16)
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and "params_lr" in trials
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).stat().st_size > 1000
    assert not (out / "trials").exists()  # per-trial scratch is removed
    # The overlay is a valid config overlay: a new variant next to the original ones.
    cfg = load_config({"dataset": {"name": "t", "source": "demo"}, "baseline": "tiny",
                       "variants": {"tiny": override, **overlay["variants"]}})
    assert "tiny_hpo" in cfg["variants"]
    # Resume: the journal already holds 2 trials; asking for 3 runs exactly one more.
    again = run_search(variant, override, dict(hpo, trials=3), *pairs, out, storage)
    assert again["trials"] == 3


def test_trial_value_is_the_saved_epochs_not_the_best_of_all_epochs():
    import optuna

    from cliptune.training.hpo import saved_epoch_value

    history = [{"epoch": 1, "val_loss": 2.0, "val_recall": 10.0},
               {"epoch": 2, "val_loss": 1.5, "val_recall": 30.0},
               {"epoch": 3, "val_loss": 1.0, "val_recall": 20.0}]
    # train.monitor = val_loss saved epoch 3; its recall is 20, not the 30 of epoch 2.
    assert saved_epoch_value({"history": history, "best_epoch": 3}, "val_recall") == 20.0
    assert saved_epoch_value({"history": history, "best_epoch": 2}, "val_loss") == 1.5
    history[1]["val_recall"] = float("nan")
    with pytest.raises(optuna.TrialPruned, match="saved epoch 2"):
        saved_epoch_value({"history": history, "best_epoch": 2}, "val_recall")
    with pytest.raises(optuna.TrialPruned):  # nothing saved (no epoch improved)
        saved_epoch_value({"history": history, "best_epoch": 0}, "val_loss")


def test_hpo_rule_is_its_own_target(tmp_path, repo):
    from test_workflow import TINY, planned_jobs, snakemake, write_config

    cfg = json.loads(json.dumps(TINY))
    cfg["hpo"] = {"trials": 2, "epochs": 1}
    write_config(tmp_path, cfg)
    all_jobs = planned_jobs(snakemake(tmp_path, repo, "-n"))
    assert "hpo" not in all_jobs
    jobs = planned_jobs(snakemake(tmp_path, repo, "-n", "results/tiny/hpo/baseline/best_overlay.yaml"))
    assert jobs.get("hpo") == 1 and "train" not in jobs
