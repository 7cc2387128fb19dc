"""Optuna search: two tiny trials, resumable journal storage, overlay + plots; rule wiring."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest
import yaml
from tiny_pairs import load_train_val, tiny_variant

from cliptune.config.load import DEFAULTS, ConfigError, load_config, resolve_variant


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return load_train_val(tmp_path_factory.mktemp("pairs"))


def test_two_trials_write_overlay_and_plots_then_resume(pairs, tmp_path):
    from cliptune.training.hpo import run_search

    variant = tiny_variant(epochs=1, tensorboard=False)
    variant["model"]["freeze_backbone"] = True  # only the head trains: fast trials
    space = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
             "train.batch_size": {"choices": [8, 16]},
             "model.head.hidden_dim": {"low": 16, "high": 32, "step": 16}}
    hpo = dict(DEFAULTS["hpo"], trials=2, space=space)
    out, storage = tmp_path / "hpo", tmp_path / "hpo" / "study.journal"
    override = {"model": {"freeze_backbone": True}}
    result = run_search(variant, override, hpo, *pairs, out, storage)
    assert result["trials"] == 2 and result["complete"] >= 1
    overlay = yaml.safe_load((out / "best_overlay.yaml").read_text())
    best = overlay["variants"]["tiny_hpo"]
    # Nested keys: the variant's own override plus exactly the searched keys.
    assert set(best) == {"model", "train"} and set(best["train"]) == {"lr", "batch_size"}
    assert best["model"]["freeze_backbone"] is True
    assert best["model"]["head"]["hidden_dim"] in (16, 32) and len(best["model"]) == 2
    assert 1e-4 <= best["train"]["lr"] <= 1e-2 and best["train"]["batch_size"] in (8, 16)
    summary = json.loads((out / "best_params.json").read_text())
    assert summary["params"] == {"train.lr": best["train"]["lr"],
                                 "train.batch_size": best["train"]["batch_size"],
                                 "model.head.hidden_dim": best["model"]["head"]["hidden_dim"]}
    assert summary["metric"] == "val_recall" and summary["direction"] == "maximize"
    assert summary["overlay_variant"] == "tiny_hpo" and summary["trials"] == 2
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and {"params_train.lr", "params_model.head.hidden_dim"} <= set(trials)
    for png in ("optimization_history.png", "param_importances.png"):
        assert (out / png).stat().st_size > 1000
    assert not (out / "trials").exists()  # per-trial scratch is removed
    # The overlay is a valid config overlay: a new variant next to the original ones.
    cfg = load_config({"dataset": {"name": "t", "source": "demo"}, "baseline": "tiny",
                       "variants": {"tiny": override, **overlay["variants"]}})
    assert cfg["variants"]["tiny_hpo"]["model"]["head"] == best["model"]["head"]
    # Resume: the journal already holds 2 trials; asking for 3 runs exactly one more.
    again = run_search(variant, override, dict(hpo, trials=3), *pairs, out, storage)
    assert again["trials"] == 3


def test_trials_the_config_rejects_are_pruned_with_the_reason(pairs, tmp_path):
    import optuna

    from cliptune.training.hpo import run_search, trial_variant

    dual = load_config({"dataset": {"name": "t", "source": "demo"},
                        "model": {"kind": "dual_encoder"}, "variants": {"baseline": {}}})
    variant = resolve_variant(dual, "baseline")
    assert variant["model"]["dual_encoder"]["vision"]["width"] == 256
    hpo = dict(DEFAULTS["hpo"], epochs=1)
    with pytest.raises(optuna.TrialPruned, match=r"vision.heads = 3 does not divide"):
        trial_variant(variant, {"model.dual_encoder.vision.heads": 3}, hpo, 0, 100)
    ok = trial_variant(variant, {"model.dual_encoder.vision.heads": 8, "train.lr": 1e-4}, hpo,
                       4, 100)
    assert ok["model"]["dual_encoder"]["vision"]["heads"] == 8 and ok["train"]["lr"] == 1e-4
    assert ok["train"]["epochs"] == 1 and ok["name"] == "baseline-trial4"
    # Every trial pruned (batches larger than the data): one error listing why.
    hpo = dict(hpo, trials=2, space={"train.batch_size": {"choices": [64]}})
    with pytest.raises(RuntimeError, match=r"no trial completed .*batch_size 64 > "):
        run_search(tiny_variant(), {}, hpo, *pairs, tmp_path, tmp_path / "s.journal")
    assert not (tmp_path / "best_overlay.yaml").exists()  # no "best" of nothing


def test_a_model_key_of_another_model_kind_is_an_error(pairs, tmp_path):
    from cliptune.training.hpo import run_search

    hpo = dict(DEFAULTS["hpo"], space={"model.dual_encoder.text.depth": {"choices": [2, 4]}})
    with pytest.raises(ConfigError, match=r"applies to model.kind dual_encoder.*is resnet"):
        run_search(tiny_variant(), {}, hpo, *pairs, tmp_path, tmp_path / "s.journal")


def test_suggest_samples_each_kind_by_its_dotted_name():
    import optuna

    from cliptune.config.hpo_space import check_space, nest, suggest

    space = {"train.lr": {"low": 1e-5, "high": 1e-3, "log": True},
             "model.dual_encoder.vision.depth": {"low": 2, "high": 6, "step": 2},
             "train.optimizer": {"choices": ["adamw", "sgd"]},
             "model.dual_encoder.{vision,text}.dropout": {"choices": [0.0, 0.1]}}
    check_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        params = suggest(study.ask(), space)
        assert 1e-5 <= params["train.lr"] <= 1e-3
        assert params["model.dual_encoder.vision.depth"] in (2, 4, 6)
        assert isinstance(params["model.dual_encoder.vision.depth"], int)
        assert params["train.optimizer"] in ("adamw", "sgd")
        # A tied key is one parameter setting both towers.
        dual = nest(params)["model"]["dual_encoder"]
        assert dual["vision"]["dropout"] == dual["text"]["dropout"] in (0.0, 0.1)
    assert nest({"train.lr": 0.1, "model.dual_encoder.vision.depth": 4, "train.seed": 1}) == {
        "train": {"lr": 0.1, "seed": 1}, "model": {"dual_encoder": {"vision": {"depth": 4}}}}


BASE = {"dataset": {"name": "t", "source": "demo"}, "variants": {"baseline": {}}}


@pytest.mark.parametrize("key, spec, message", [
    ("train.lrr", {"low": 1e-5, "high": 1e-3}, r"train.lrr is not a searchable .*'train.lr'"),
    ("batch_size", {"choices": [32]}, r"did you mean 'train.batch_size'"),
    ("train.batch_size", [32, 64], r"give a range \{low, high"),
    ("train.optimizer", {"low": 0, "high": 1}, r"train.optimizer is not numeric"),
    ("train.lr", {"low": 1e-3, "high": 1e-5}, r"low = 0.001 must be below high"),
    ("train.weight_decay", {"low": 0.0, "high": 0.1, "log": True}, r"log: true needs low > 0"),
    ("train.batch_size", {"choices": [1, 32]}, r"choice 1 is not a valid value of train.batch"),
    ("train.lr", {"low": -1.0, "high": 1e-3}, r"low -1.0 is not a valid value of train.lr"),
    ("model.dual_encoder.vision.depth", {"low": 1.5, "high": 4}, r"must be an integer"),
    ("train.lr", {"low": 1e-5, "hi": 1e-3}, r"missing \['high'\], unknown \['hi'\]"),
    ("train.lr", {"choices": [1e-4], "low": 1e-5}, r"mixes choices with \['low'\]"),
    ("model.kind", {"choices": ["resnet", "clip"]}, r"model.kind cannot be searched"),
    ("train.resume_from", {"choices": [3]}, r"resume_from cannot be searched: every trial"),
    ("train.subset", {"choices": [{"images": 10}]}, r"train.subset cannot be searched: it picks"),
    ("train.keep_epoch_checkpoints_every", {"choices": [5]}, r"every cannot be searched"),
    ("image_size", {"choices": [224]}, r"image_size is not a searchable config key"),
    ("text_encoder.max_length", {"choices": [32]}, r"not a searchable config key"),
    ("model.dual_encoder.{vision,txt}.depth", {"choices": [2]},
     r"model.dual_encoder.txt.depth is not a .*'model.dual_encoder.text.depth'"),
    ("model.dual_encoder.vision.{depth,dropout}", {"choices": [2]},
     r"ties integer and non-integer keys"),
    ("model.dual_encoder.{vision,text}.heads", {"choices": [0]}, r"choice 0 is not a valid"),
])
def test_a_space_the_search_cannot_sample_fails_at_config_time(key, spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config({**BASE, "hpo": {"space": {key: spec}}})


def test_a_given_space_replaces_the_default_one():
    from cliptune.config.hpo_space import check_space

    check_space(DEFAULTS["hpo"]["space"])  # the schema's default is itself a valid space
    assert load_config(BASE)["hpo"]["space"] == DEFAULTS["hpo"]["space"]
    space = {"model.head.dropout": {"choices": [0.0, 0.1]}}
    assert load_config({**BASE, "hpo": {"space": space}})["hpo"]["space"] == space
    with pytest.raises(ConfigError, match="hpo.space is empty"):
        load_config({**BASE, "hpo": {"space": {}}})


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
    from conftest import TINY, planned_jobs, snakemake, write_config

    cfg = json.loads(json.dumps(TINY))
    # A tied key's braces must reach the job as text, not as a Snakemake wildcard.
    cfg["hpo"] = {"trials": 2, "epochs": 1,
                  "space": {"train.{lr,head_lr}": {"low": 1e-4, "high": 1e-3, "log": True}}}
    write_config(tmp_path, cfg)
    all_jobs = planned_jobs(snakemake(tmp_path, repo, "-n"))
    assert "hpo" not in all_jobs
    jobs = planned_jobs(snakemake(tmp_path, repo, "-n", "results/tiny/hpo/baseline/best_overlay.yaml"))
    assert jobs.get("hpo") == 1 and "train" not in jobs
    # A key the searched variant's model never reads fails the dry run, before any queueing.
    cfg["hpo"]["space"] = {"model.dual_encoder.text.depth": {"choices": [2, 4]}}
    write_config(tmp_path, cfg)
    proc = snakemake(tmp_path, repo, "-n", "results/tiny/hpo/baseline/best_overlay.yaml",
                     check=False)
    assert proc.returncode != 0
    assert "hpo.space.model.dual_encoder.text.depth applies to model.kind dual_encoder" in (
        proc.stdout + proc.stderr)


class _JobKilled(BaseException):
    """Stands for the job dying mid-trial: not an Exception, so the trial stays RUNNING."""


def _cheap_search(storage, trials, kill_at=None):
    from cliptune.training.hpo import open_study, run_trials

    space = {"train.lr": {"low": 1e-5, "high": 1e-2, "log": True},
             "train.batch_size": {"choices": [32, 64, 128]}}
    study = open_study(storage, "cheap", "maximize", 0, space)
    calls = []

    def objective(trial, params):
        if len(calls) == kill_at:
            raise _JobKilled
        calls.append(params)
        return -abs(params["train.lr"] - 1e-3)

    with contextlib.suppress(_JobKilled):
        run_trials(study, space, trials, objective)
    return calls


def test_a_resumed_search_continues_the_sequence_and_never_repeats(tmp_path):
    import optuna

    whole = _cheap_search(tmp_path / "whole.journal", 6)
    first = _cheap_search(tmp_path / "cut.journal", 6, kill_at=3)  # dies in trial 3
    assert first == whole[:3]
    second = _cheap_search(tmp_path / "cut.journal", 6)  # the rerun
    assert len(second) == 2  # trial 3 failed the job: counted, not run again
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "cut.journal")))
    trials = optuna.load_study(study_name="cheap", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["FAIL"] + ["COMPLETE"] * 2
    assert "killed" in trials[3].user_attrs["failed"]
    configs = [t.params for t in trials]
    # The sequence one uninterrupted run draws (the first 10 TPE trials are random), and
    # 6 distinct configurations: the restarted random state would repeat trials 0 and 1.
    assert configs == whole
    assert len({tuple(sorted(c.items())) for c in configs}) == 6
    # A third run has nothing left to do.
    assert _cheap_search(tmp_path / "cut.journal", 6) == []


def test_a_proposal_repeating_a_tried_configuration_is_not_run_or_counted(tmp_path):
    import optuna

    from cliptune.training.hpo import MAX_REPEATS, open_study, run_trials

    space = {"train.batch_size": {"choices": [32, 64, 128]}}
    study = open_study(tmp_path / "s.journal", "grid", "maximize", 0, space)
    seen = []
    counted = run_trials(study, space, 3, lambda t, p: seen.append(p) or 1.0)
    assert counted == 3 and sorted(p["train.batch_size"] for p in seen) == [32, 64, 128]
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert all(t.state == optuna.trial.TrialState.FAIL for t in repeats)
    # A budget beyond the space's 3 points stops after MAX_REPEATS repeats in a row.
    assert run_trials(study, space, 5, lambda t, p: seen.append(p) or 1.0) == 3
    assert len(seen) == 3
    assert len(study.trials) == 3 + len(repeats) + MAX_REPEATS
