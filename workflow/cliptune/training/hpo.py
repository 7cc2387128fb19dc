"""Optuna search for one variant over ``hpo.space`` (any of its model/train keys by
dotted path, cliptune.config.hpo_space). The study lives in a journal file next to the
outputs (not an output itself), so an interrupted search resumes where it stopped; a
changed search config or variant starts a new study in the same file (the name
carries a hash). A resumed search continues the sampler's sequence (open_study), counts
the trial a killed job left running as failed, and never runs a configuration twice
(run_trials): ``hpo.trials`` distinct configurations are tried in all.

Each trial's variant is the variant deep-merged with the sampled keys and checked like
any configured variant: a combination the config would reject (heads that do not divide
the width) prunes that trial with the reason (trials.csv ``user_attrs_pruned``).
Trials train on ``train`` and are scored on the selection split (hpo.smk).

Outputs: ``best_overlay.yaml`` (a ready variant ``<name>_hpo`` with the nested keys:
pass it as a second ``--configfile``), ``best_params.json`` (best value, trial and
dotted parameters), ``trials.csv``, ``optimization_history.png`` and
``param_importances.png``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import yaml

from cliptune.config.hpo_space import check_applies, check_space, nest, suggest
from cliptune.config.load import ConfigError, canonical_json, check_variant, deep_merge, short_hash
from cliptune.data.loading.pairs import PairData
from cliptune.files.atomic import atomic_path, save_figure, write_json, write_text
from cliptune.runtime import progress

log = logging.getLogger(__name__)


def trial_variant(variant: Mapping, params: Mapping, hpo: Mapping, number: int,
                  n_images: int) -> dict:
    """The variant one trial trains; raises optuna.TrialPruned (with the reason, kept in
    the trial's ``pruned`` attribute) when the config checks or the data reject it."""
    import optuna

    override = nest(params)
    if hpo["epochs"] is not None:
        override = deep_merge(override, {"train": {"epochs": hpo["epochs"]}})
    merged = deep_merge(variant, override)
    merged["name"] = f"{variant['name']}-trial{number}"
    # A trial trains from scratch in a folder of its own that is deleted afterwards:
    # neither the variant's kept epochs nor new ones apply.
    merged["train"].update(resume_from=None, keep_epoch_checkpoints=0,
                           keep_epoch_checkpoints_every=0)
    try:
        check_variant(merged, set(override.get("train", {})))
    except ConfigError as exc:
        raise optuna.TrialPruned(str(exc)) from exc
    if merged["train"]["batch_size"] > n_images:
        raise optuna.TrialPruned(f"train.batch_size {merged['train']['batch_size']} > "
                                 f"{n_images} training images")
    return merged


def saved_epoch_value(result: Mapping, metric: str) -> float:
    """``metric`` of the epoch train_variant saved (chosen by train.monitor).

    Not the best value over all epochs: that epoch's weights may not be the
    ones a trial's settings would ship, and the maximum over epochs of a noisy
    metric flatters every trial.
    """
    import optuna

    saved = [row for row in result["history"] if row["epoch"] == result["best_epoch"]]
    if not saved or not math.isfinite(saved[0][metric]):
        raise optuna.TrialPruned(f"no finite {metric} at the saved epoch "
                                 f"{result['best_epoch']}")
    return float(saved[0][metric])


# A proposal that repeats a tried configuration is recorded as failed (user attribute
# ``repeat_of``) and not counted; this many in a row means the space has no untried point
# the sampler finds, and the search stops short of its budget with a warning.
MAX_REPEATS = 100
# Why a trial ended without a value (user attribute): the trainer raised, or the job
# stopped during the trial (killed, out of memory) and a rerun found it still running.
FAILED = "failed"
JOB_STOPPED = "the job stopped during this trial (killed or out of memory); not retried"


def _state(name: str):
    import optuna

    return getattr(optuna.trial.TrialState, name)


def open_study(storage_path: Path, name: str, direction: str, seed: int, space: Mapping):
    """The study in ``storage_path`` whose sampler continues where the last run stopped.

    ``TPESampler(seed)`` starts its random state afresh in every process, so a resumed
    study would propose its first configurations again. The sampler is instead replayed
    through the recorded trials (:func:`continued_sampler`): the resumed search draws what
    one uninterrupted run would have drawn after the same trials.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage_path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(storage_path)))
    study = optuna.create_study(study_name=name, storage=storage, direction=direction,
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                load_if_exists=True)
    # A trial left RUNNING was running when the job died: it failed the job, so it is
    # marked failed (and counted, and never proposed again) rather than run again.
    for t in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        study._storage.set_trial_user_attr(t._trial_id, FAILED, JOB_STOPPED)
        study.tell(t.number, state=_state("FAIL"))
        log.warning("trial %d %s: %s", t.number, JOB_STOPPED, t.params)
    study.sampler = continued_sampler(study.trials, direction, seed, space)
    return study


def continued_sampler(trials, direction: str, seed: int, space: Mapping):
    """``TPESampler(seed)`` after proposing ``trials`` (in order) and hearing their outcomes.

    Each recorded trial is asked again of a scratch in-memory study, sampled with the same
    space and told the recorded outcome; the sampler's random state then stands where the
    interrupted run left it. If a replayed proposal differs from the recorded one (another
    Optuna version, a space edited outside the study's identity) the sequence cannot be
    continued: the sampler is seeded with ``seed + len(trials)`` instead, a fresh stream
    (the repeat guard of :func:`run_trials` still rules out tried configurations).
    """
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed)
    replay = optuna.create_study(direction=direction, sampler=sampler)
    for t in sorted(trials, key=lambda t: t.number):
        trial = replay.ask()
        if suggest(trial, space) != t.params:
            log.warning("HPO resume: trial %d's recorded parameters differ from the "
                        "replayed sampler's; continuing with sampler seed %d + %d trials",
                        t.number, seed, len(trials))
            return optuna.samplers.TPESampler(seed=seed + len(trials))
        if t.state == _state("COMPLETE"):
            replay.tell(trial, t.value)
        else:
            replay.tell(trial, state=t.state)
    return sampler


def _config_key(params: Mapping) -> str:
    return canonical_json(dict(params))


def run_trials(study, space: Mapping, budget: int, objective, on_trial=None) -> int:
    """Run trials until ``budget`` distinct configurations have an outcome.

    ``objective(trial, params) -> value`` may raise optuna.TrialPruned (the trial is
    pruned) or any other exception (the trial is marked failed and the exception
    propagates). Completed, pruned and failed trials all count toward the budget and are
    never proposed again: a proposal equal to one of them is recorded as a failed trial
    with ``repeat_of`` and not counted. Returns the number of counted trials.
    """
    import optuna

    tried: dict[str, int] = {}
    for t in study.trials:
        if t.state.is_finished() and "repeat_of" not in t.user_attrs:
            tried.setdefault(_config_key(t.params), t.number)
    counted, repeats = len(tried), 0
    while counted < budget:
        trial = study.ask()
        params = suggest(trial, space)
        key = _config_key(params)
        if key in tried:
            trial.set_user_attr("repeat_of", tried[key])
            study.tell(trial, state=_state("FAIL"))
            repeats += 1
            if repeats >= MAX_REPEATS:
                log.warning("HPO stops at %d of %d trials: the last %d proposals all "
                            "repeated tried configurations (the space has few points "
                            "left); enlarge hpo.space or lower hpo.trials", counted, budget,
                            MAX_REPEATS)
                break
            continue
        repeats = 0
        tried[key] = trial.number
        try:
            value = objective(trial, params)
        except optuna.TrialPruned as exc:
            log.warning("trial %d pruned: %s", trial.number, exc)
            trial.set_user_attr("pruned", str(exc))
            study.tell(trial, state=_state("PRUNED"))
        except Exception as exc:
            trial.set_user_attr(FAILED, f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=_state("FAIL"))
            raise
        else:
            study.tell(trial, value)
        counted += 1
        if on_trial is not None:
            on_trial()
    return counted


def run_search(variant: dict, variant_override: Mapping | None, hpo: Mapping,
               train_data: PairData, val_data: PairData, out_dir: Path, storage_path: Path,
               ) -> dict:
    import optuna

    from cliptune.training.trainer import DivergenceError, train_variant

    out_dir = Path(out_dir)
    check_space(hpo["space"])
    check_applies(hpo["space"], variant)
    metric = hpo["metric"]
    direction = "maximize" if metric == "val_recall" else "minimize"
    # The budget (trials) is not part of the identity: raising it extends the same study.
    search = {k: v for k, v in hpo.items() if k != "trials"}
    name = f"{variant['name']}-{short_hash({'variant': variant, 'hpo': search})}"
    study = open_study(Path(storage_path), name, direction, hpo["seed"], hpo["space"])
    work = out_dir / "trials"

    def objective(trial, params) -> float:
        chosen = trial_variant(variant, params, hpo, trial.number, train_data.n_images)
        trial_dir = work / str(trial.number)
        try:
            result = train_variant(chosen, train_data, val_data, trial_dir,
                                   trial_dir / "state.pt", show_progress=False,
                                   write_outputs=False)
        except DivergenceError as exc:
            raise optuna.TrialPruned(f"diverged: {exc}") from exc
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)
        return saved_epoch_value(result, metric)

    done = counted_trials(study)
    log.info("study %s in %s: %d finished trials, running up to %d more", name,
             storage_path, done, max(0, hpo["trials"] - done))
    if done < hpo["trials"]:
        # One bar over the whole search (a resumed study starts at its finished trials).
        bar = progress(total=hpo["trials"], initial=done, desc=f"hpo {name}", unit="trial")
        try:
            run_trials(study, hpo["space"], hpo["trials"], objective,
                       on_trial=lambda: bar.update(1))
        finally:
            bar.close()
    shutil.rmtree(work, ignore_errors=True)
    return write_results(study, variant["name"], variant_override, metric, out_dir)


def counted_trials(study) -> int:
    """Finished trials that count toward ``hpo.trials`` (all but recorded repeats)."""
    return sum(1 for t in study.trials
               if t.state.is_finished() and "repeat_of" not in t.user_attrs)


def write_results(study, name: str, variant_override: Mapping | None, metric: str,
                  out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        reasons = sorted({t.user_attrs.get("pruned", t.user_attrs.get(FAILED, t.state.name))
                          for t in study.trials})
        raise RuntimeError(f"HPO for {name}: no trial completed (all pruned or failed: "
                           f"{reasons}); narrow hpo.space to settings the variant accepts")
    best = study.best_trial
    overlay = {"variants": {f"{name}_hpo": deep_merge(variant_override or {},
                                                      nest(best.params))}}
    header = (f"# Best of {len(complete)} trials for variant {name}: {metric} = "
              f"{best.value:.4f} (trial {best.number}).\n"
              "# Use: snakemake --configfile <your config> <this file>\n")
    write_text(out_dir / "best_overlay.yaml", header + yaml.safe_dump(overlay, sort_keys=True))
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "user_attrs"))
    counted = counted_trials(study)
    write_json(out_dir / "best_params.json", {
        "variant": name, "overlay_variant": f"{name}_hpo", "metric": metric,
        "direction": study.direction.name.lower(), "best_value": best.value,
        "best_trial": best.number, "params": dict(best.params), "trials": counted,
        "complete": len(complete), "repeats_skipped": len(frame) - counted})
    with atomic_path(out_dir / "trials.csv") as tmp:
        frame.to_csv(tmp, index=False)

    ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    ax.set_title(f"{name}: optimisation history ({metric})")
    save_figure(ax.figure, out_dir / "optimization_history.png")
    try:
        ax = optuna.visualization.matplotlib.plot_param_importances(study)
        ax.set_title(f"{name}: parameter importance")
        fig = ax.figure
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        # Importance needs several completed trials with varied parameters.
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.axis("off")
        ax.text(0.5, 0.5, f"parameter importance unavailable:\n{exc}", ha="center",
                va="center", wrap=True)
    save_figure(fig, out_dir / "param_importances.png")
    log.info("best %s = %.4f with %s", metric, best.value, canonical_json(best.params))
    return {"best_value": best.value, "best_params": dict(best.params),
            "trials": counted, "complete": len(complete)}
